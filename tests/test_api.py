"""``vibe.api`` names what the CRDs define; the policy and engine registries are what the CRD accepts."""

from __future__ import annotations

from typing import Any, get_args

from vibe import api, crds
from vibe.engines import ENGINES
from vibe.placement.engine import POLICIES, PolicyName


def _crd(plural: str) -> dict[str, Any]:
    """The CRD as vibe ships it (vibe/crds/manifests; crds/ and the chart's are checked copies)."""
    for doc in crds.documents():
        if doc["spec"]["names"]["plural"] == plural and doc["spec"]["group"] == api.GROUP:
            return doc
    raise AssertionError(f"no CRD {plural}.{api.GROUP} among vibe's CRDs")


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api.VERSION]
    return version["schema"]["openAPIV3Schema"]


def test_the_api_names_are_the_crds_names() -> None:
    for plural, kind in (
        (api.MOEDEPLOYMENT_PLURAL, api.MOEDEPLOYMENT_KIND),
        (api.GPUPROFILE_PLURAL, api.GPUPROFILE_KIND),
    ):
        crd = _crd(plural)
        assert crd["metadata"]["name"] == f"{plural}.{api.GROUP}"
        assert crd["spec"]["names"]["kind"] == kind
        assert [v["name"] for v in crd["spec"]["versions"] if v.get("storage")] == [api.VERSION]
    assert f"{api.GROUP}/{api.VERSION}" == api.API_VERSION


def test_the_crds_policy_enum_is_the_policy_registry() -> None:
    policy = _schema(_crd(api.MOEDEPLOYMENT_PLURAL))["properties"]["spec"]["properties"]["policy"]
    assert policy["enum"] == list(POLICIES) == list(get_args(PolicyName))
    assert policy["default"] in POLICIES


def test_the_crds_output_formats_are_the_engine_registry() -> None:
    """Adding an engine record without its CRD enum value (or the reverse) fails here."""
    spec = _schema(_crd(api.MOEDEPLOYMENT_PLURAL))["properties"]["spec"]["properties"]
    formats = spec["output"]["properties"]["formats"]
    assert formats["items"]["enum"] == list(ENGINES)
    assert formats["maxItems"] == len(ENGINES)
    assert set(formats["default"]) <= set(ENGINES)
    for engine in ENGINES.values():  # the description names each format with its key
        assert f"{engine.name} ({engine.key}" in " ".join(formats["description"].split())


def test_every_condition_and_reason_is_documented() -> None:
    """A condition type or reason the operator can set is API: docs/operations.md names each one."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    named = set(api.CONDITION_TYPES) | set(api.PROBLEM_REASONS)
    named |= {api.REASON_PLACED, api.REASON_PENDING, api.REASON_INPUTS_HEALTHY, api.REASON_NO_DRIFT}
    named.add(api.REASON_REPLACED)
    missing = sorted(n for n in named if f"`{n}`" not in docs)
    assert not missing, f"not in docs/operations.md: {missing}"


def test_the_crds_generation_bound_is_the_one_both_sides_enforce() -> None:
    """Issue 20, defect 9: a status placementGeneration past int64 made every status patch fail (422)."""
    status = _schema(_crd(api.MOEDEPLOYMENT_PLURAL))["properties"]["status"]["properties"]
    generation = status["placementGeneration"]
    assert generation["maximum"] == api.MAX_PLACEMENT_GENERATION < 2**63 - 1
    assert generation["minimum"] == 0
