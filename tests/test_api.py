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


def test_the_crds_replica_split_is_the_split_registry() -> None:
    """``spec.workload.replicaSplit`` accepts exactly the splits the planner knows, the default first, and
    every format either carries weights or is refused for them (``vibe.engines.check_replica_split``)."""
    from vibe.engines import EngineError, check_replica_split
    from vibe.placement import REPLICA_SPLITS

    spec = _schema(_crd(api.MOEDEPLOYMENT_PLURAL))["properties"]["spec"]["properties"]
    split = spec["workload"]["properties"]["replicaSplit"]
    assert split["enum"] == list(REPLICA_SPLITS) and split["default"] == REPLICA_SPLITS[0]
    for engine in ENGINES.values():
        assert engine.dispatch_source, f"{engine.name}: where its replica dispatch is, upstream"
        if engine.replica_weights:
            check_replica_split("weighted", [engine.name])
        else:
            try:
                check_replica_split("weighted", [engine.name])
            except EngineError as e:
                assert engine.name in e.message
            else:
                raise AssertionError(f"{engine.name} cannot take weights but was not refused")


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


def _with_crd_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """``obj`` with the schema's defaults filled in, as the API server defaults an object it stores
    (a defaulted object gets its own properties' defaults too)."""
    if isinstance(obj, dict):
        out = dict(obj)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
            if key in out:
                out[key] = _with_crd_defaults(out[key], sub)
        return out
    if isinstance(obj, list) and "items" in schema:
        return [_with_crd_defaults(x, schema["items"]) for x in obj]
    return obj


def test_the_spec_parser_defaults_are_the_crds() -> None:
    """``vibe.spec.parse_spec`` of a spec with only the required fields (what a unit test or an object
    stored before a default existed holds) equals its parse after the CRD's own defaults are filled in:
    a default in the parser that differs from the CRD's, or a CRD default the parser ignores, fails."""
    from vibe.spec import parse_spec

    schema = _schema(_crd(api.MOEDEPLOYMENT_PLURAL))["properties"]["spec"]
    minimal = {
        "model": {"layers": 4, "experts": 8, "topK": 2, "hiddenSize": 64, "expertIntermediateSize": 32},
        "gpus": {"count": 2, "slotsPerGPU": 5, "nodeSelector": {"pool": "a"}},
        "workload": {"configMapRef": {"name": "loads"}, "stepMix": [{"tokens": 64}, {"tokens": 2048}]},
    }
    defaulted = _with_crd_defaults(minimal, schema)
    filled = {
        "dtype",
        "key",
        "weight",
        "dispatch",
        "routingSamples",
        "replicaSplit",
        "policy",
        "drift",
        "output",
    }
    assert filled <= set(_flat_keys(defaulted)), "the CRD lost a default this test relies on"
    assert parse_spec(minimal) == parse_spec(defaulted)
    assert parse_spec(minimal).placement_key == parse_spec(defaulted).placement_key


def _flat_keys(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [k for k, v in obj.items() for k in (k, *_flat_keys(v))]
    if isinstance(obj, list):
        return [k for x in obj for k in _flat_keys(x)]
    return []
