"""Following GPUs: the placement's slots move to whichever engine rank runs on that GPU."""

from __future__ import annotations

import json

import pytest
from serving_helpers import G, S, phy2log, placement_data, settings

from vibe.engines import ENGINES
from vibe.serving import emit, rankmap
from vibe.serving.errors import ServingError

# The placement's rank order: nodes sorted by name, GPUs by index (2 nodes x 2 GPUs).
PLACED = [("n0", 0), ("n0", 1), ("n1", 0), ("n1", 1)]


def data_with_gpus() -> dict[str, str]:
    data = placement_data(meta=False)
    doc = json.loads(data[ENGINES["vibe"].key])
    doc["gpus"] = [{"node": n, "index": i, "uuid": f"GPU-{n}-{i}"} for n, i in PLACED]
    data[ENGINES["vibe"].key] = json.dumps(doc)
    return data


def test_identity_when_the_engine_ranks_match() -> None:
    assert rankmap.slot_permutation(PLACED, PLACED, S) == list(range(G * S))


def test_swapped_nodes_move_whole_gpus() -> None:
    engine_order = [("n1", 0), ("n1", 1), ("n0", 0), ("n0", 1)]  # worker 0 landed on n1
    perm = rankmap.slot_permutation(PLACED, engine_order, S)
    assert perm[:S] == [
        2 * S,
        2 * S + 1,
        2 * S + 2,
    ]  # engine rank 0 (n1 GPU 0) takes placement rank 2's slots
    out = emit.prepare(data_with_gpus(), settings(), ["sglang", "eplb", "trtllm"], engine_gpus=engine_order)
    rows = out["sglang"]["physical_to_logical_map"][1:]  # row 0 is the dense layer's pad
    by_layer = out["trtllm"]["initial_global_assignments"]  # keyed from the first MoE layer (1)
    assert list(by_layer) == [1, 2, 3]
    for layer, row in enumerate(rows):
        original = phy2log()[layer]
        assert row[0:S] == original[2 * S : 3 * S] and row[2 * S : 3 * S] == original[0:S]
        assert by_layer[layer + 1] == row
    # The permuted EPLB tensors are still self-consistent (log2phy renumbered, logcnt unchanged).
    eplb = ENGINES["eplb"].fit
    assert eplb is not None and eplb(out["eplb"], settings()) == out["eplb"]


def test_gpu_not_in_the_placement_is_refused() -> None:
    with pytest.raises(ServingError, match="GPU 0 of node n9"):
        rankmap.slot_permutation(PLACED, [("n9", 0), *PLACED[1:]], S)
    with pytest.raises(ServingError, match="4 GPUs but the engine group has 3"):
        rankmap.slot_permutation(PLACED, PLACED[:3], S)


def test_placement_gpus_need_node_and_index() -> None:
    assert rankmap.placement_gpus(json.loads(data_with_gpus()[ENGINES["vibe"].key])) == PLACED
    with pytest.raises(ServingError, match=r"gpus\[0\] needs node and index"):
        rankmap.placement_gpus({"gpus": [{"node": "n0"}]})
    with pytest.raises(ServingError, match="twice"):
        rankmap.placement_gpus({"gpus": [{"node": "n0", "index": 0}] * 2})
    with pytest.raises(ServingError, match="no gpus"):
        rankmap.placement_gpus({})
