"""SGLang's static dispatch priced by the evaluator (``vibe.placement.dispatch``), checked by hand and
against the per-rank rule (which ``tests/serving/test_serving_sglang_loader.py`` checks against SGLang)."""

from __future__ import annotations

import numpy as np
import pytest

from vibe.placement.cost import Placement, evaluate
from vibe.placement.dispatch import slot_tokens, static_dispatch_choices
from vibe.placement.engine import solve
from vibe.placement.errors import PlacementError
from vibe.placement.synthetic import h100_fleet, skewed_loads


def test_a_lone_replica_on_a_node_serves_that_whole_node() -> None:
    # 4 GPUs on 2 nodes, 2 slots each. Expert 0 on GPUs 0, 1 (node 0) and 2 (node 1); experts 1..4 once.
    phy2log = np.array([[0, 1, 0, 2, 0, 3, 4, 1]])
    loads = np.array([[400.0, 100, 100, 100, 100]])
    even = slot_tokens(phy2log, loads, 2, "even")
    static = slot_tokens(phy2log, loads, 2, "sglang-static", gpus_per_node=2)
    assert even[0, [0, 2, 4]].tolist() == [400 / 3] * 3
    # ranks 0, 1, 2 hold a copy; rank 3 (node 1) uses the node-1 copy on GPU 2: 1/4, 1/4, 2/4 of the load
    assert static[0, [0, 2, 4]].tolist() == [100.0, 100.0, 200.0]
    # expert 1 has copies on GPUs 0 and 3 (one per node): every rank of a node uses its node's copy
    assert static[0, [1, 7]].tolist() == [50.0, 50.0]
    assert static[0, [3, 5, 6]].tolist() == [100.0, 100.0, 100.0]


def test_fair_pick_when_every_node_or_no_node_holds_a_copy() -> None:
    # 4 GPUs, 1 node: expert 0 on GPUs 0 and 1; ranks 2, 3 see both copies on their node (not narrowing)
    phy2log = np.array([[0, 1, 0, 2, 3, 4, 5, 6]])
    static = slot_tokens(phy2log, np.full((1, 7), 80.0), 2, "sglang-static", gpus_per_node=4)
    assert static[0, [0, 2]].tolist() == [40.0, 40.0]


def _per_rank(phy2log: np.ndarray, loads: np.ndarray, s: int, gpn: int) -> np.ndarray:
    """Tokens per slot from the per-rank choices, fair picks at their expectation (the slow way)."""
    num_layers, p = phy2log.shape
    g, e = p // s, loads.shape[1]
    out = np.zeros((num_layers, p))
    for rank in range(g):
        choice = static_dispatch_choices(phy2log, e, s, rank, gpus_per_node=gpn)
        for layer in range(num_layers):
            for x in range(e):
                if choice[layer, x] >= 0:
                    out[layer, choice[layer, x]] += loads[layer, x] / g
                else:
                    slots = np.flatnonzero(phy2log[layer] == x)
                    out[layer, slots] += loads[layer, x] / g / slots.size
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_tokens_match_the_per_rank_rule_and_conserve_load(seed: int) -> None:
    loads = skewed_loads(3, 16, mean_tokens=300, seed=seed)
    fleet = h100_fleet(8, gpus_per_node=4, spread=0.05, seed=seed)
    phy2log = solve(loads, fleet, 3, "vibe", time_budget_s=0.05).placement.phy2log
    static = slot_tokens(phy2log, loads, 3, "sglang-static", gpus_per_node=4)
    np.testing.assert_allclose(static, _per_rank(phy2log, loads, 3, 4))
    for layer in range(3):
        np.testing.assert_allclose(np.bincount(phy2log[layer], static[layer], minlength=16), loads[layer])


def test_evaluate_with_dispatch() -> None:
    loads = skewed_loads(4, 32, mean_tokens=512, seed=3)
    fleet = h100_fleet(8, gpus_per_node=4, spread=0.08, outliers=1)
    result = solve(loads, fleet, 6, "vibe", time_budget_s=0.05)
    placement = Placement(result.placement.phy2log, 6, 32)
    even = evaluate(placement, loads, fleet)
    assert evaluate(placement, loads, fleet, dispatch="even").step_time_s == even.step_time_s
    assert abs(even.step_time_s - result.step_time_s) < 1e-12
    static = evaluate(placement, loads, fleet, dispatch="sglang-static")  # nodes read from the fleet
    assert static.step_time_s != even.step_time_s
    explicit = evaluate(placement, loads, fleet, dispatch="sglang-static", gpus_per_node=4)
    assert explicit.step_time_s == static.step_time_s
    with pytest.raises(PlacementError, match="unknown dispatch"):
        evaluate(placement, loads, fleet, dispatch="nope")
    with pytest.raises(PlacementError, match="GPUs per node"):
        evaluate(placement, loads, fleet, dispatch="sglang-static", gpus_per_node=3)
