"""The init container and the sidecar: what gets applied, and the never-older rule."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from serving_helpers import KubeletVolume, placement_data, settings

from vibe.engines import ENGINES
from vibe.serving import emit, sidecar, stamp, state
from vibe.serving.errors import ServingError
from vibe.serving.update_policies import Update

H = "h"


@pytest.mark.parametrize(
    ("applied", "gen", "data_hash", "verdict"),
    [
        (state.Applied(3, "a"), 4, "b", state.Verdict.APPLY),
        (state.Applied(3, "a"), 3, "a", state.Verdict.SAME),
        (state.Applied(3, "a"), 3, "b", state.Verdict.CONFLICT),
        (state.Applied(3, "a"), 2, "b", state.Verdict.OLDER),
        (state.Applied(3, "a"), None, "b", state.Verdict.UNORDERED),
        (state.Applied(None, "a"), 1, "b", state.Verdict.APPLY),
        (None, 1, "b", state.Verdict.APPLY),
    ],
)
def test_decide(applied, gen, data_hash, verdict) -> None:
    assert state.decide(applied, stamp.Stamp(gen, None, False), data_hash) is verdict


def test_state_round_trip(tmp_path: Path) -> None:
    assert state.load(tmp_path) is None
    state.save(tmp_path / "s", state.Applied(5, "abc", "..v1"))
    assert state.load(tmp_path / "s") == state.Applied(5, "abc", "..v1")
    (tmp_path / "s" / state.STATE_FILE).write_text("{")
    with pytest.raises(ServingError, match="unreadable"):
        state.load(tmp_path / "s")


class FakePolicy:
    name = "fake"

    def __init__(self) -> None:
        self.applied: list[Update] = []
        self.fail_next = False

    def apply(self, update: Update) -> str:
        if self.fail_next:
            self.fail_next = False
            raise ServingError("ApplyFailed", "engine said no")
        self.applied.append(update)
        return "ok"


def make_watcher(volume: KubeletVolume, state_dir: Path, policy: FakePolicy, reports: list):
    return sidecar.Watcher(
        sidecar.observe_volume(str(volume.root)),
        settings(),
        ("sglang", "eplb"),
        lambda: policy,
        lambda t, r, m: reports.append((t, r, m)),
        str(state_dir),
    )


def test_init_writes_the_engine_files_and_records_the_generation(
    volume: KubeletVolume, tmp_path: Path
) -> None:
    volume.write(placement_data(generation=2))
    out, eplb = tmp_path / "out" / "expert-location.json", tmp_path / "out" / "eplb.json"
    trt = tmp_path / "out" / "moe_load_balancer.yaml"
    outputs = {"sglang": out, "eplb": eplb, "trtllm": trt}
    applied = emit.run_init(str(volume.root), settings(), outputs, str(tmp_path / "state"))
    assert applied.generation == 2
    doc = json.loads(out.read_text())
    assert list(doc) == ["physical_to_logical_map"] and len(doc["physical_to_logical_map"]) == 4
    assert set(json.loads(eplb.read_text())) == {"phy2log", "log2phy", "logcnt"}
    lb = yaml.safe_load(trt.read_text())  # as TensorRT-LLM reads it
    assert sorted(lb["initial_global_assignments"]) == [1, 2, 3]  # after the 1 dense layer
    snippet = yaml.safe_load((tmp_path / "out" / "moe_load_balancer-extra-engine-args.yaml").read_text())
    assert snippet == {"moe_config": {"backend": "WIDEEP", "load_balancer": str(trt)}}
    assert state.load(tmp_path / "state") == applied


def test_init_refuses_a_tampered_volume(volume: KubeletVolume, tmp_path: Path) -> None:
    data = placement_data(generation=2)
    data[ENGINES["sglang"].key] = json.dumps({"physical_to_logical_map": [[0]]})
    volume.write(data)
    out = tmp_path / "x.json"
    with pytest.raises(ServingError) as e:
        emit.run_init(str(volume.root), settings(), {"sglang": out})
    assert e.value.reason == "HashMismatch" and not out.exists()


def test_init_waits_for_the_expected_generation(volume: KubeletVolume, tmp_path: Path) -> None:
    volume.write(placement_data(generation=1))
    later = threading.Timer(0.3, lambda: volume.write(placement_data(generation=2, shift=1)))
    later.start()
    applied = emit.run_init(
        str(volume.root), settings(), {"sglang": tmp_path / "o.json"}, expect_generation=2, poll=0.05
    )
    later.join()
    assert applied.generation == 2


def test_init_times_out_behind_and_rolls_forward_when_ahead(volume: KubeletVolume, tmp_path: Path) -> None:
    volume.write(placement_data(generation=1))
    with pytest.raises(ServingError, match="still generation 1 after 0s") as e:
        emit.run_init(
            str(volume.root), settings(), {"sglang": tmp_path / "o.json"}, expect_generation=2, wait_seconds=0
        )
    assert e.value.reason == "StaleVolume"  # readable, only behind: the reason says so
    volume.write(placement_data(generation=5))
    bumped = []
    with pytest.raises(ServingError, match="already holds 5"):
        emit.run_init(
            str(volume.root),
            settings(),
            {"sglang": tmp_path / "o.json"},
            expect_generation=4,
            on_newer=lambda gen, uid: bumped.append((gen, uid)),
        )
    assert bumped == [(5, None)]


def test_sidecar_applies_newer_and_never_older(volume: KubeletVolume, tmp_path: Path) -> None:
    st = tmp_path / "state"
    volume.write(placement_data(generation=2))
    emit.run_init(str(volume.root), settings(), {"sglang": tmp_path / "o.json"}, state_dir=str(st))
    policy, reports = FakePolicy(), []
    w = make_watcher(volume, st, policy, reports)
    assert w.step() == "same" and policy.applied == []

    volume.write(placement_data(generation=3, shift=1))
    assert w.step() == "apply"
    assert [u.generation for u in policy.applied] == [3]
    assert len(policy.applied[0].documents["sglang"]["physical_to_logical_map"]) == 4  # fitted, padded
    assert state.load(st).generation == 3

    volume.write(placement_data(generation=2))  # an older placement reappears (rollback by hand, stale cache)
    assert w.step() == "older" and w.step() == "older"
    assert [u.generation for u in policy.applied] == [3]
    assert [r for _, r, _ in reports].count("PlacementNotApplied") == 1  # reported once, not per tick

    volume.write(placement_data(generation=3, shift=2))  # same generation, other bytes
    assert w.step() == "conflict"
    volume.write(placement_data(generation=4, shift=2))
    assert w.step() == "apply" and [u.generation for u in policy.applied] == [3, 4]

    # A restarted sidecar keeps the rule: state comes from the file.
    w2 = make_watcher(volume, st, policy, reports)
    volume.write(placement_data(generation=1))
    assert w2.step() == "older"


def test_sidecar_refuses_half_written_and_unfitting_placements(volume: KubeletVolume, tmp_path: Path) -> None:
    st = tmp_path / "state"
    state.save(st, state.Applied(1, "x"))
    policy, reports = FakePolicy(), []
    w = make_watcher(volume, st, policy, reports)

    data = placement_data(generation=2)
    data[ENGINES["sglang"].key] = json.dumps({"physical_to_logical_map": [[1]]})  # hash no longer matches
    volume.write(data)
    assert w.step() == "HashMismatch"
    assert reports[-1][:2] == ("Warning", "PlacementHashMismatch")

    volume.write(placement_data(generation=2, gpus=5))  # placement for another EP size
    assert w.step() == "PlacementMismatch"
    assert policy.applied == [] and state.load(st).generation == 1

    volume.write(placement_data(generation=3, meta=False))  # no generation anywhere
    assert w.step() == "unordered" and policy.applied == []


def test_sidecar_retries_a_failed_apply(volume: KubeletVolume, tmp_path: Path) -> None:
    st = tmp_path / "state"
    state.save(st, state.Applied(1, "x"))
    policy, reports = FakePolicy(), []
    w = make_watcher(volume, st, policy, reports)
    volume.write(placement_data(generation=2))
    policy.fail_next = True
    assert w.step() == "ApplyFailed" and state.load(st).generation == 1
    assert w.step() == "apply" and state.load(st).generation == 2
    assert reports[-1][1] == "PlacementApplied"


def test_sidecar_without_state_takes_a_baseline(volume: KubeletVolume, tmp_path: Path) -> None:
    volume.write(placement_data(generation=6))
    policy, reports = FakePolicy(), []
    w = make_watcher(volume, tmp_path / "state", policy, reports)
    assert w.step() == "baseline" and w.step() == "same"
    assert policy.applied == [] and state.load(tmp_path / "state").generation == 6


def test_sidecar_run_loop_stops(volume: KubeletVolume, tmp_path: Path) -> None:
    volume.write(placement_data(generation=1))
    w = make_watcher(volume, tmp_path / "state", FakePolicy(), [])
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(0.01, stop))
    t.start()
    time.sleep(0.1)
    stop.set()
    t.join(2)
    assert not t.is_alive()


A, B = "uid-a", "uid-b"


@pytest.mark.parametrize(
    ("applied", "stamp", "verdict"),
    [
        (state.Applied(4, "a", uid=A), stamp.Stamp(1, None, False, B), state.Verdict.APPLY),
        (state.Applied(1, "a", uid=B, retired=(A,)), stamp.Stamp(4, None, False, A), state.Verdict.OLDER),
        (state.Applied(4, "a", uid=A), stamp.Stamp(3, None, False, A), state.Verdict.OLDER),
        (state.Applied(4, "a"), stamp.Stamp(4, None, False, A), state.Verdict.SAME),  # re-stamped
        (state.Applied(4, "a", uid=A), stamp.Stamp(5, None, False, None), state.Verdict.APPLY),
    ],
)
def test_decide_orders_by_uid_then_generation(applied, stamp, verdict) -> None:
    assert state.decide(applied, stamp, "b") is verdict


def test_a_recreated_moedeployments_first_placement_is_applied(volume: KubeletVolume, tmp_path: Path) -> None:
    """Issue 20, defect 6: after delete + re-create the generation restarts at 1; a sidecar that had
    applied 4 refused every new placement ("older than the applied 4"). Generations now count per UID."""
    st = tmp_path / "state"
    volume.write(placement_data(generation=4, uid=A))
    emit.run_init(str(volume.root), settings(), {"sglang": tmp_path / "o.json"}, state_dir=str(st))
    policy, reports = FakePolicy(), []
    w = make_watcher(volume, st, policy, reports)
    volume.write(placement_data(generation=1, shift=1, uid=B))
    assert w.step() == "apply" and policy.applied[-1].generation == 1 and policy.applied[-1].uid == B
    assert state.load(st) == state.Applied(1, w.applied.data_hash, w.applied.version, B, (A,))
    # A volume that still shows the old object (kubelet lag) is older, not new.
    volume.write(placement_data(generation=4, uid=A))
    assert w.step() == "older" and "deleted incarnation" in reports[-1][2]
    volume.write(placement_data(generation=2, shift=2, uid=B))
    assert w.step() == "apply" and len(policy.applied) == 2


def test_a_rerun_init_container_never_goes_back(volume: KubeletVolume, tmp_path: Path) -> None:
    """Issue 20, defect 6: an init container that re-ran in the same pod applied an older placement than
    the sidecar had applied (it never looked at the state directory): ranks on different placements."""
    st, out = tmp_path / "state", tmp_path / "o.json"
    state.save(st, state.Applied(4, "applied-by-the-sidecar", uid=A))
    volume.write(placement_data(generation=3, uid=A))
    with pytest.raises(ServingError, match="already applied placement generation 4") as e:
        emit.run_init(str(volume.root), settings(), {"sglang": out}, state_dir=str(st), wait_seconds=0)
    assert e.value.reason == "StaleVolume" and not out.exists()
    # The same pod after its MoEDeployment was re-created: the new object's generation 1 is applied.
    volume.write(placement_data(generation=1, uid=B))
    applied = emit.run_init(str(volume.root), settings(), {"sglang": out}, state_dir=str(st), wait_seconds=0)
    assert (applied.generation, applied.uid, applied.retired) == (1, B, (A,))
    # ... and the old object's placement, shown by a lagging volume, is never applied again.
    volume.write(placement_data(generation=4, uid=A))
    with pytest.raises(ServingError, match="deleted incarnation"):
        emit.run_init(str(volume.root), settings(), {"sglang": out}, state_dir=str(st), wait_seconds=0)


def test_init_rolls_forward_onto_a_recreated_moedeployment(volume: KubeletVolume, tmp_path: Path) -> None:
    """A pod rolled out for generation 4 of the old object meets generation 1 of the new one: it rolls
    the workload forward to "1/<new uid>" instead of waiting for a 4 that will never come."""
    volume.write(placement_data(generation=1, uid=B))
    bumped = []
    with pytest.raises(ServingError, match="re-created MoEDeployment") as e:
        emit.run_init(
            str(volume.root),
            settings(),
            {"sglang": tmp_path / "o.json"},
            expect_generation=(4, A),
            on_newer=lambda gen, uid: bumped.append((gen, uid)),
            wait_seconds=0,
        )
    assert e.value.reason == "PlacementMismatch" and bumped == [(1, B)]
    applied = emit.run_init(
        str(volume.root),
        settings(),
        {"sglang": tmp_path / "o.json"},
        expect_generation=(1, B),
        wait_seconds=0,
    )
    assert applied.uid == B
