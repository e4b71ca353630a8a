"""Content hash and generation: from the data (volumes) and from the object (API)."""

from __future__ import annotations

import json

import pytest
from serving_helpers import placement_data

from vibe import contract
from vibe.engines import ENGINES
from vibe.serving import stamp
from vibe.serving.errors import ServingError


def test_content_hash_is_canonical() -> None:
    a = {"b": "2", "a": "1"}
    assert contract.content_hash(a) == contract.content_hash(dict(reversed(a.items())))
    assert contract.content_hash(a) != contract.content_hash({"a": "1", "b": "3"})
    assert len(contract.content_hash(a)) == 64
    assert contract.same_hash("sha256:" + contract.content_hash(a).upper(), contract.content_hash(a))


def test_stamp_from_meta_key_is_verified() -> None:
    found = stamp.stamp_from_data(placement_data(generation=7))
    assert found.generation == 7 and found.verified


def test_tampered_key_is_refused() -> None:
    data = placement_data(generation=7)
    data[ENGINES["sglang"].key] = data[ENGINES["sglang"].key].replace("0", "1", 1)
    with pytest.raises(ServingError) as e:
        stamp.stamp_from_data(data)
    assert e.value.reason == "HashMismatch" and "generation 7" in str(e.value)


def test_generation_from_placement_json_without_meta() -> None:
    data = placement_data(meta=False)
    doc = json.loads(data[ENGINES["vibe"].key])
    doc["placementGeneration"] = 4
    data[ENGINES["vibe"].key] = json.dumps(doc)
    assert stamp.stamp_from_data(data) == stamp.Stamp(4, None, False)
    assert stamp.stamp_from_data(placement_data(meta=False)).generation is None


def test_bad_generation_and_bad_meta() -> None:
    with pytest.raises(ServingError, match="not an integer"):
        stamp.stamp_from_data({contract.KEY_META: json.dumps({"placementGeneration": "x"})})
    with pytest.raises(ServingError, match="not JSON"):
        stamp.stamp_from_data({contract.KEY_META: "{"})


def test_stamp_from_object_annotations() -> None:
    data = placement_data(meta=False)
    h = contract.content_hash(data)
    ann = {contract.ANNOTATION_CONTENT_HASH: h, contract.ANNOTATION_PLACEMENT_GENERATION: "9"}
    assert stamp.stamp_from_object(data, ann) == stamp.Stamp(9, h, True)
    with pytest.raises(ServingError, match="does not match"):
        stamp.stamp_from_object({**data, "x": "y"}, ann)


def test_annotation_hash_may_include_or_exclude_the_meta_key() -> None:
    data = placement_data(generation=3)
    without = {k: v for k, v in data.items() if k != contract.KEY_META}
    for h in (contract.content_hash(data), contract.content_hash(without)):
        ann = {contract.ANNOTATION_CONTENT_HASH: h, contract.ANNOTATION_PLACEMENT_GENERATION: "3"}
        assert stamp.stamp_from_object(data, ann).verified


def test_annotation_and_data_disagree_on_generation() -> None:
    data = placement_data(generation=3)
    with pytest.raises(ServingError, match="mixed placement"):
        stamp.stamp_from_object(data, {contract.ANNOTATION_PLACEMENT_GENERATION: "4"})


def test_what_the_operator_writes_the_serving_side_reads_through_one_contract() -> None:
    """The writer (``vibe.operator.output.finish``) and the readers (``stamp``) share ``vibe.contract``:
    the meta key's generation and hash, and the annotations, verify on both paths."""
    from vibe.operator import output

    core = {k: v for k, v in placement_data(meta=False).items()}
    keys = output.InputKeys("p", "g", "c", "l")
    data, annotations = output.finish(core, generation=5, keys=keys, placed_at="t", summary={})
    assert data[contract.KEY_META] == contract.meta_text(contract.content_hash(core), 5)
    assert stamp.stamp_from_data(data) == stamp.Stamp(5, contract.content_hash(core), True)
    assert stamp.stamp_from_object(data, annotations).verified
    assert annotations[contract.ANNOTATION_PLACEMENT_GENERATION] == "5"


@pytest.mark.parametrize(
    "value",
    ["7", 7.0, 1e23, True, -1, 2**63, contract.MAX_GENERATION + 1, [7], {"g": 7}],
)
def test_a_generation_is_a_bounded_json_integer(value) -> None:
    """Issue 20, defect 9 and the init reader's weak spot: ``"7"``, ``1e23`` and 2^63 were accepted (2^63
    then overflowed the operator's int64 status field)."""
    meta = {"placementGeneration": value}
    with pytest.raises(ServingError, match="placement generation") as e:
        stamp.stamp_from_data({contract.KEY_META: json.dumps(meta)})
    assert e.value.reason == "UnreadableVolume"


def test_annotation_generations_are_digits_within_the_bound() -> None:
    data = placement_data(meta=False)
    gen = contract.ANNOTATION_PLACEMENT_GENERATION
    assert stamp.stamp_from_object(data, {gen: "9"}).generation == 9
    for bad in ("1e3", " 9", "-1", "9" * 17, str(contract.MAX_GENERATION + 1)):
        with pytest.raises(ServingError, match="placement generation"):
            stamp.stamp_from_object(data, {gen: bad})


def test_the_template_annotation_carries_generation_and_uid() -> None:
    assert contract.template_value(4, None) == "4"
    assert contract.parse_template_value("4/0b6c-11aa", "x") == (4, "0b6c-11aa")
    assert contract.parse_template_value("4", "x") == (4, None)
    assert contract.parse_template_value("", "x") is None
    for bad in ("x/abc", "4/a b", "1e3", "4/" + "a" * 65):
        with pytest.raises(ValueError):
            contract.parse_template_value(bad, "x")


def test_the_uid_travels_in_the_meta_key() -> None:
    found = stamp.stamp_from_data(placement_data(generation=2, uid="0b6c-11aa"))
    assert (found.generation, found.uid, found.verified) == (2, "0b6c-11aa", True)
    with pytest.raises(ServingError, match="is not a UID"):
        stamp.stamp_from_data(placement_data(generation=2, uid="a b"))
