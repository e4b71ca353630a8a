"""Spec parsing and the condition list: defaults, fingerprints, lastTransitionTime semantics."""

from __future__ import annotations

import copy

from operator_builders import deployment_body

from vibe.operator import conditions as cond
from vibe.operator.conditions import Condition
from vibe.spec import parse_spec


def test_defaults_match_the_crd():
    spec = parse_spec(deployment_body("x")["spec"])
    assert spec.policy == "vibe"
    assert spec.formats == ("vibe", "sglang")
    assert spec.drift.min_gain == 0.03 and spec.drift.cooldown_seconds == 300 and spec.drift.max_moves is None
    assert spec.workload.config_map is None and spec.workload.key == "loads.json"
    assert spec.model.shape == (7168, 2048, "fp8")


def test_placement_key_ignores_drift_settings_but_not_slots():
    body = deployment_body("x")
    key = parse_spec(body["spec"]).placement_key
    drift = copy.deepcopy(body)
    drift["spec"]["drift"] = {"minGain": 0.2, "cooldownSeconds": 5}
    assert parse_spec(drift["spec"]).placement_key == key
    slots = copy.deepcopy(body)
    slots["spec"]["gpus"]["slotsPerGPU"] = 4
    assert parse_spec(slots["spec"]).placement_key != key
    fmts = copy.deepcopy(body)
    fmts["spec"]["output"] = {"formats": ["sglang", "vibe"]}  # same set, other order
    assert parse_spec(fmts["spec"]).placement_key == key


def test_transition_time_moves_only_when_status_flips():
    first = cond.merge([], [Condition("Ready", False, "Pending", "wait")], generation=1, now="T1")
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "observedGeneration": 1,
            "reason": "Pending",
            "message": "wait",
            "lastTransitionTime": "T1",
        }
    ]
    same = cond.merge(first, [Condition("Ready", False, "InsufficientGPUs", "x")], generation=2, now="T2")
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["reason"] == "InsufficientGPUs"
    assert same[0]["observedGeneration"] == 2
    flip = cond.merge(same, [Condition("Ready", True, "Placed", "ok")], generation=2, now="T3")
    assert flip[0]["lastTransitionTime"] == "T3"


def test_conditions_keep_their_order_and_unknown_types():
    old = [{"type": "Custom", "status": "True"}]
    out = cond.merge(
        old,
        [
            Condition("Drifted", False, "NoDrift"),
            Condition("Ready", True, "Placed"),
            Condition("Degraded", False, "Ok"),
        ],
        generation=1,
        now="T",
    )
    assert [c["type"] for c in out] == ["Ready", "Degraded", "Drifted", "Custom"]


def test_transitions_report_status_or_reason_changes_only():
    before = cond.merge([], [Condition("Ready", False, "A", "m1")], generation=1, now="T")
    after = cond.merge(before, [Condition("Ready", False, "A", "m2")], generation=1, now="T")
    assert cond.transitions(before, after) == []
    after = cond.merge(before, [Condition("Ready", False, "B", "m2")], generation=1, now="T")
    assert [c["reason"] for c in cond.transitions(before, after)] == ["B"]


def test_messages_are_one_line():
    out = cond.merge([], [Condition("Ready", False, "A", "two\nlines   here")], generation=1, now="T")
    assert out[0]["message"] == "two lines here"


def test_worker_processes_follow_the_containers_cpu_limit(tmp_path):
    from vibe.operator.settings import available_cpus

    unlimited = available_cpus(tmp_path)  # no cpu.max: the affinity
    assert unlimited >= 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == unlimited
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # limits.cpu: 1.5
    assert available_cpus(tmp_path) == min(unlimited, 2)
    (tmp_path / "cpu.max").write_text("10000 100000\n")  # 100m
    assert available_cpus(tmp_path) == 1
