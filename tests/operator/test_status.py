"""Status shaping: conditions per situation, Events only on news, merge patches only for differences."""

from __future__ import annotations

import dataclasses
import datetime as dt

from vibe.operator.output import InputKeys, InService
from vibe.operator.planning import NOTHING, WRITE, Plan
from vibe.operator.problems import Problem
from vibe.operator.status import Observation, merge_patch, observe
from vibe.placement.cost import Placement

KEY = "spec-key"
SUMMARY = {
    "policy": "vibe",
    "stepTimeSeconds": 0.012,
    "lowerBoundSeconds": 0.0119,
    "gapToBound": 0.008,
    "gainVsBaseline": 0.05,
    "gainVsBaselinePercent": 5.0,
    "imbalance": 1.02,
    "baseline": {"policy": "token-balanced", "stepTimeSeconds": 0.0126, "imbalance": 1.1},
    "moves": 0,
    "reason": "Placed",
    "message": "first placement",
}


def in_service(generation: int = 1, key: str = KEY) -> InService:
    return InService(
        name="m-placement",
        resource_version="1",
        data={},
        annotations={},
        owner_uids=("u",),
        generation=generation,
        content_hash="abc",
        keys=InputKeys(key, "g", "c", "l"),
        placed_at=dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc),
        summary=dict(SUMMARY),
        placement=Placement([[0, 1]], 1, 2),
        intact=True,
    )


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_problem_without_placement_is_not_ready_and_warns():
    obs = Observation(
        1, KEY, "m-placement", None, problem=Problem("ConfigMapNotFound", "ConfigMap ns/l missing")
    )
    status, events = observe({}, obs, now="T")
    assert conds(status) == {
        "Ready": ("False", "ConfigMapNotFound"),
        "Degraded": ("True", "ConfigMapNotFound"),
    }
    assert [(e.type, e.reason) for e in events] == [("Warning", "ConfigMapNotFound")]
    again, events = observe(status, obs, now="T2")
    assert events == [] and merge_patch(status, again) == {}


def test_problem_with_placement_keeps_it_ready_and_degraded():
    cm = in_service(generation=3)
    obs = Observation(2, KEY, "m-placement", cm, problem=Problem("InvalidLoads", "not JSON"))
    status, _ = observe({}, obs, now="T")
    assert conds(status)["Ready"] == ("True", "Placed")
    assert conds(status)["Degraded"] == ("True", "InvalidLoads")
    assert "keeping placement generation 3" in status["conditions"][1]["message"]
    assert status["placementGeneration"] == 3 and status["predicted"]["gainVsBaselinePercent"] == 5.0


def test_spec_changed_and_unplaceable_is_not_ready_but_keeps_old_placement():
    obs = Observation(
        2, "new-key", "m-placement", in_service(), problem=Problem("InsufficientGPUs", "need 64")
    )
    status, _ = observe({}, obs, now="T")
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InsufficientGPUs")
    assert "previous spec (generation 1) stays in service" in ready["message"]


def test_placement_unreadable_under_a_new_slot_count_still_serves_the_previous_spec():
    cm = dataclasses.replace(in_service(generation=4), placement=None, unreadable="another slot count")
    obs = Observation(2, "new-key", "m-placement", cm, problem=Problem("InfeasibleSlots", "needs 90 GiB"))
    status, events = observe({}, obs, now="T")
    assert [(e.type, e.reason) for e in events] == [("Warning", "InfeasibleSlots")]
    ready, degraded = status["conditions"][:2]
    assert (ready["status"], ready["reason"]) == ("False", "InfeasibleSlots")
    assert "previous spec (generation 4) stays in service" in ready["message"]
    assert "keeping placement generation 4" in degraded["message"]
    assert status["placementGeneration"] == 4 and status["predicted"]["stepTimeSeconds"] == 0.012
    edited = dataclasses.replace(cm, intact=False)  # edited by hand: not a placement to vouch for
    status, _ = observe({}, Observation(2, "new-key", "m-placement", edited, problem=obs.problem), now="T")
    assert "stays in service" not in status["conditions"][0]["message"] and "predicted" not in status


def test_write_posts_one_event_and_drift_below_threshold_another():
    plan = Plan(WRITE, "Placed", "first placement", summary=SUMMARY)
    status, events = observe({}, Observation(1, KEY, "m-placement", in_service(), plan=plan), now="T")
    assert [e.reason for e in events] == ["Placed"]
    assert conds(status)["Drifted"] == ("False", "NoDrift")
    drift = {
        "kind": "PerformanceDrift",
        "decision": "DriftBelowThreshold",
        "inputHash": "h1",
        "message": "-1%",
    }
    plan = Plan(NOTHING, "DriftBelowThreshold", "x", drift=drift)
    status2, events = observe(status, Observation(1, KEY, "m-placement", in_service(), plan=plan), now="T2")
    assert conds(status2)["Drifted"] == ("True", "PerformanceDrift")
    assert [e.reason for e in events] == ["DriftBelowThreshold"]
    _, events = observe(status2, Observation(1, KEY, "m-placement", in_service(), plan=plan), now="T3")
    assert events == []  # same evaluation: no repeat


def test_merge_patch_deletes_fields_that_went_away():
    assert merge_patch({"a": 1, "drift": {"x": 1}}, {"a": 1}) == {"drift": None}
    assert merge_patch({"a": 1}, {"a": 2}) == {"a": 2}


def test_ready_message_counts_the_gpus_of_the_placement_when_resolution_failed():
    cm = in_service(generation=3)
    obs = Observation(2, KEY, "m-placement", cm, problem=Problem("InsufficientGPUs", "2 of 8 GPUs"))
    status, _ = observe({}, obs, now="T")
    ready = status["conditions"][0]
    assert ready["status"] == "True" and "?" not in ready["message"] and "on 2 GPUs" in ready["message"]


def test_drifted_true_always_has_a_message():
    """A drift evaluation read back from status without its message (as the CRD pruned it before it
    had the field) still explains itself."""
    cm = in_service()
    prior = {"kind": "WorkloadDrift", "decision": "DriftBelowThreshold", "loss": 0.02, "gain": 0.01,
             "inputHash": "h"}  # fmt: skip
    plan = Plan(NOTHING, "DriftBelowThreshold", "already evaluated", summary=cm.summary, drift=prior)
    status, _ = observe({}, Observation(1, KEY, "m-placement", cm, plan=plan), now="T")
    drifted = next(c for c in status["conditions"] if c["type"] == "Drifted")
    assert drifted["status"] == "True" and drifted["message"]
    assert "2.0%" in drifted["message"] and "DriftBelowThreshold" in drifted["message"]
