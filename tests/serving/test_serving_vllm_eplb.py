"""The vLLM EPLB policy's decisions without vLLM: fit, the rank-agreement rule, the load window.

vLLM's own code path runs in ``test_serving_vllm_plugin.py``; these pin each rule with a small input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import E, G, KubeletVolume, L, P, phy2log, placement_data, settings

from vibe.contract import KEY_META, content_hash, meta_text
from vibe.engines import EngineError, canonical, get, vllm
from vibe.serving import emit, state
from vibe.serving.errors import ServingError
from vibe.serving.vllm_eplb import Action, Request, View, choose, fit, read_view, window

REQUEST = Request(num_layers=L, num_logical=E, num_replicas=P, num_ranks=G)


def test_a_fitting_placement_is_read_from_one_snapshot(volume: KubeletVolume) -> None:
    volume.write(placement_data(generation=5, shift=1))
    view, arr = read_view(volume.root, REQUEST)
    assert view.reason == "" and view.generation == 5
    assert arr is not None and arr.tolist() == phy2log(1)
    # without the vllm key (spec.output.formats lacks vllm): placement.json's map
    data = {k: v for k, v in placement_data(shift=2, meta=False).items() if k != vllm.KEY}
    volume.write({**data, KEY_META: meta_text(content_hash(data), 6)})
    view, arr = read_view(volume.root, REQUEST)
    assert view.generation == 6 and arr is not None and arr.tolist() == phy2log(2)


def test_the_vllm_key_needs_placement_jsons_gpu_count(volume: KubeletVolume) -> None:
    """A map for 4 GPUs x 3 slots has the shape of one for 2 x 6: only placement.json's GPUs tell."""
    volume.write(placement_data(generation=2))
    view, arr = read_view(volume.root, Request(L, E, P, G // 2))
    assert arr is None and f"placement is for {G} GPUs but vLLM's EP size is {G // 2}" in view.reason


def test_init_and_the_sidecar_fit_the_vllm_document(volume: KubeletVolume, tmp_path: Path) -> None:
    volume.write(placement_data(generation=3))
    out = tmp_path / "vllm-eplb.json"
    applied = emit.run_init(str(volume.root), settings(), {"vllm": out}, str(tmp_path / "state"))
    assert applied.generation == 3
    assert json.loads(out.read_text()) == {"physical_to_logical_map": phy2log()}  # MoE layers only
    with pytest.raises(EngineError, match="num_redundant_experts"):
        get("vllm").fit({"physical_to_logical_map": phy2log()}, settings(redundant_experts=P - E + 1))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request(L + 1, E, P, G), f"placement has {L} MoE layers but vLLM's model has {L + 1}"),
        (Request(L, E, P + G, G), f"placement has {P} physical experts per layer but vLLM has {P + G}"),
        (Request(L, E, P, G // 2), f"placement is for {G} GPUs but vLLM's EP size is {G // 2}"),
        (Request(L, E - 1, P, G), f"names expert {E - 1}, outside 0..{E - 2}"),
    ],
)
def test_a_placement_that_does_not_fit_is_the_views_reason(
    volume: KubeletVolume, request_: Request, message: str
) -> None:
    volume.write(placement_data(generation=2))
    view, arr = read_view(volume.root, request_)
    assert arr is None and message in view.reason and view.generation == 2


def test_a_weighted_placement_json_is_never_run_evenly(volume: KubeletVolume) -> None:
    """Without the vllm key the plugin falls back to placement.json's map; one planned with the weighted
    replica split (shares vLLM's dispatch cannot take) is the view's reason, not a map run evenly."""
    data = {k: v for k, v in placement_data(shift=2, meta=False).items() if k != vllm.KEY}
    doc = json.loads(data[canonical.KEY])
    doc["replicaSplit"] = "weighted"
    data[canonical.KEY] = json.dumps(doc)
    volume.write({**data, KEY_META: meta_text(content_hash(data), 7)})
    view, arr = read_view(volume.root, REQUEST)
    assert arr is None and "weighted replica split" in view.reason and "vLLM" in view.reason


def test_every_expert_needs_a_slot() -> None:
    rows = phy2log()
    rows[1] = [0] * P
    with pytest.raises(ServingError, match="layer 1 leaves expert 1 without a slot"):
        fit(rows, REQUEST, "x")


def test_a_half_written_volume_or_no_generation_is_never_applied(volume: KubeletVolume) -> None:
    bad = dict(placement_data(generation=3), **{canonical.KEY: json.dumps({"layers": []})})
    volume.write(bad)
    view, arr = read_view(volume.root, REQUEST)
    assert arr is None and view.reason.startswith("HashMismatch")
    volume.write(placement_data(meta=False))
    view, arr = read_view(volume.root, REQUEST)
    assert arr is None and "declares no generation" in view.reason


def test_an_unmounted_volume_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    view, arr = read_view(tmp_path / "absent", REQUEST)
    assert arr is None and view.reason.startswith("UnreadableVolume")


def applied(generation: int, data_hash: str = "in-service", uid: str | None = None) -> state.Applied:
    return state.Applied(generation, data_hash, "", uid)


def test_ranks_apply_only_what_they_all_see() -> None:
    same = [View(4, "h4"), View(4, "h4")]
    assert choose(same, None).action is Action.APPLY
    decision = choose(same, applied(3))
    assert decision.action is Action.APPLY and decision.applied == state.Applied(4, "h4")
    split = [View(4, "h4"), View(3, "h3")]
    assert choose(split, applied(3)).action is Action.KEEP
    # nothing of vibe's in service yet: keep what vLLM runs (the same on every rank), not the default
    assert choose(split, None).action is Action.KEEP
    # same generation, other bytes (two writers), or another MoEDeployment object: not agreed either
    assert choose([View(4, "h4"), View(4, "other")], applied(3)).action is Action.KEEP
    assert choose([View(4, "h4", uid="a"), View(4, "h4", uid="b")], applied(3)).action is Action.KEEP


def test_never_older_and_a_misfit_keeps_vibes_last_map_else_vllms_default() -> None:
    older = choose([View(2, "h2"), View(2, "h2")], applied(3))
    assert older.action is Action.KEEP and "older than 3" in older.why
    assert choose([View(3, "in-service"), View(3, "in-service")], applied(3)).action is Action.KEEP
    conflict = choose([View(3, "h3"), View(3, "h3")], applied(3))
    assert conflict.action is Action.KEEP and "other bytes" in conflict.why
    misfit = [View(5, "h5", "PlacementMismatch: x"), View(5, "h5", "PlacementMismatch: x")]
    assert choose(misfit, applied(3)).action is Action.KEEP
    decision = choose(misfit, None)
    assert decision.action is Action.DEFAULT and decision.why.startswith("rank 0: PlacementMismatch: x")
    one_rank = [View(5, "h5"), View(None, "", "UnreadableVolume: gone")]
    assert choose(one_rank, None).why.startswith("rank 1: UnreadableVolume")


def test_generations_count_within_one_moedeployment_as_the_sidecars_do() -> None:
    """A re-created MoEDeployment starts its generations again (state.decide): its first placement goes
    live; the old object's placements, still on a lagging volume, never come back."""
    before = applied(7, uid="old")
    recreated = choose([View(1, "new1", uid="new"), View(1, "new1", uid="new")], before)
    assert recreated.action is Action.APPLY and recreated.applied is not None
    assert recreated.applied.uid == "new" and recreated.applied.retired == ("old",)
    lagging = choose([View(7, "old7", uid="old"), View(7, "old7", uid="old")], recreated.applied)
    assert lagging.action is Action.KEEP


def test_the_load_window_becomes_tokens_per_step(tmp_path: Path) -> None:
    path = tmp_path / "window.json"
    path.write_text(window(np.array([[40, 0, 8], [4, 4, 4]]), steps=4) or "")
    got = get("vllm").loads(path)  # what `vibe serving export-loads --engine vllm` reads
    assert got.loads.tolist() == [[10.0, 0.0, 2.0], [1.0, 1.0, 1.0]] and got.passes == 4
    assert get("vllm").loads(path, steps=8).loads.tolist()[0] == [5.0, 0.0, 1.0]
    assert window(np.zeros((2, 3)), steps=4) is None  # the profile run's empty window
    with pytest.raises(ServingError):
        window(np.array([[-1.0, 2.0]]), steps=1)
    path.write_text(json.dumps({"logical_count": [[1, 2]], "windowSteps": 0}))
    with pytest.raises(EngineError, match="windowSteps"):
        get("vllm").loads(path)


class _Default:
    """Stands in for vLLM's DefaultEplbPolicy (the real one runs in test_serving_vllm_plugin.py)."""

    calls = 0

    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks, old=None):
        cls.calls += 1
        return old


def test_every_rank_reaches_the_gather_whatever_goes_wrong_before_it(
    volume: KubeletVolume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank that raised before the gather would leave the others waiting in it forever."""
    torch = pytest.importorskip("torch")
    from vibe.serving import vllm_eplb, vllm_plugin

    gathered: list[View] = []

    def gather(view: View) -> list[View]:
        gathered.append(view)
        return [view] * G

    (tmp_path / "not-a-dir").write_text("")
    runtime = vllm_plugin.Runtime(
        str(volume.root), str(tmp_path / "not-a-dir" / "window.json"), gather, lambda: 0, _Default
    )
    weight, old = torch.ones((L, E), dtype=torch.int32), torch.tensor(phy2log(3))

    def boom(*args: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(vllm_eplb, "read_view", boom)
    got = runtime.rebalance(weight, P, 1, 1, G, old)  # and the window cannot be written either
    assert gathered[-1].reason.startswith("InternalError: KeyError") and _Default.calls == 1
    assert got.tolist() == phy2log(3)


def test_after_the_profile_run_vibes_map_is_returned_again_not_vllms(volume: KubeletVolume) -> None:
    """vLLM's profile run asks the policy and commits nothing: the next rebalance must return vibe's
    map again, though vLLM passes its own as ``old``."""
    torch = pytest.importorskip("torch")
    from vibe.serving import vllm_plugin

    volume.write(placement_data(generation=4, shift=1))
    runtime = vllm_plugin.Runtime(str(volume.root), None, lambda v: [v] * G, lambda: 0, _Default)
    weight, vllms = torch.ones((L, E), dtype=torch.int32), torch.tensor(phy2log(3))
    assert runtime.rebalance(weight, P, 1, 1, G, vllms).tolist() == phy2log(1)  # the profile run
    assert runtime.rebalance(weight, P, 1, 1, G, vllms).tolist() == phy2log(1)  # the first real one
    assert runtime.applied is not None and runtime.applied.generation == 4


def operator_style(generation: int) -> dict[str, str]:
    """placement_data with placement.json's GPUs as the operator writes them: rank, "node/index" id, node."""
    data = placement_data(meta=False)
    doc = json.loads(data[canonical.KEY])
    doc["gpus"] = [{"rank": r, "id": f"n{r // 2}/{r % 2}", "node": f"n{r // 2}"} for r in range(G)]
    data[canonical.KEY] = json.dumps(doc)
    return {**data, KEY_META: meta_text(content_hash(data), generation)}


def test_the_policy_follows_gpus_to_vllms_ranks(volume: KubeletVolume, tmp_path: Path) -> None:
    """vLLM's EP rank r runs where the pods landed; `vibe serving init --follow-gpus --engine-gpus-out`
    records that, and each placement GPU's slots go to the rank on that GPU."""
    from vibe.serving import rankmap, vllm_eplb

    volume.write(operator_style(generation=2))
    swapped = [("n1", 0), ("n1", 1), ("n0", 0), ("n0", 1)]  # worker 0 landed on n1
    mine, other = tmp_path / "rank0" / "engine-gpus.json", tmp_path / "rank1" / "engine-gpus.json"
    vllm_eplb.write_engine_gpus(mine, swapped)
    view, arr = read_view(volume.root, REQUEST, mine)
    assert view.reason == "" and arr is not None
    perm = rankmap.slot_permutation([("n0", 0), ("n0", 1), ("n1", 0), ("n1", 1)], swapped, P // G)
    assert arr.tolist() == [[row[p] for p in perm] for row in phy2log()]
    assert arr.tolist() != phy2log()
    # another pod that recorded another order (it was scheduled anew alone): the ranks do not agree
    vllm_eplb.write_engine_gpus(other, [("n0", 0), ("n0", 1), ("n1", 0), ("n1", 1)])
    theirs, _ = read_view(volume.root, REQUEST, other)
    assert choose([view, theirs], None).action is Action.KEEP
    gone, arr = read_view(volume.root, REQUEST, tmp_path / "absent.json")
    assert arr is None and gone.reason.startswith("UnreadableVolume")
