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
