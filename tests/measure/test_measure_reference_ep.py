"""The reference expert-parallel layer on the CPU: 4 gloo ranks execute placements read like a pod reads them.

A placement must never change the layer's function: for random placements with replicas, token-balanced
and vibe placements, every rank's output equals a single-process dense reference of the same weights (fp32).
A placement the serving reader refuses (a missing expert, a bad hash, an older generation) never reaches
the layer: ``load_placement`` fails and writes no engine file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

from random_policy import solve_random  # noqa: E402

from vibe import contract  # noqa: E402
from vibe.engines import ENGINES  # noqa: E402
from vibe.measure import reference_ep as ep  # noqa: E402
from vibe.operator import output  # noqa: E402
from vibe.placement.engine import solve  # noqa: E402
from vibe.placement.inputs import read_fleet  # noqa: E402
from vibe.placement.synthetic import skewed_loads  # noqa: E402
from vibe.serving.errors import ServingError  # noqa: E402

G, S, E, L = 4, 3, 8, 2  # 12 slots for 8 experts: 4 replicas
SHAPE = ep.LayerShape(hidden=32, intermediate=16, top_k=2, dtype="fp32", seed=7)
TOL = 1e-5


@pytest.fixture(scope="module")
def inputs():
    loads = skewed_loads(L, E, mean_tokens=12, skew=(3.0, 4.0), seed=3)
    fleet = read_fleet(
        {
            "reference": {"hiddenSize": 32, "intermediateSize": 16, "dtype": "bf16"},
            "gpus": [
                {"id": f"g{r}", "node": "n", **({"timeScale": 1.5} if r == 1 else {})} for r in range(G)
            ],
        }
    )
    return loads, fleet


def write_volume(path: Path, result, fleet, generation: int = 1) -> Path:
    """The ConfigMap data exactly as the operator renders it, as a plain mounted directory."""
    core = output.render(result, fleet, ("vibe", "eplb", "sglang"))
    data, _ = output.finish(
        core, generation=generation, keys=output.InputKeys("", "", "", ""), placed_at="", summary={}
    )
    path.mkdir(parents=True)
    for key, text in data.items():
        (path / key).write_text(text)
    return path


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, inputs):
    loads, fleet = inputs
    root = tmp_path_factory.mktemp("volumes")
    results = {
        "random-0": solve_random(loads, fleet, S, seed=0),
        "random-1": solve_random(loads, fleet, S, seed=1),
        "token-balanced": solve(loads, fleet, S, "token-balanced"),
        "vibe": solve(loads, fleet, S, "vibe"),
    }
    return {name: write_volume(root / name, r, fleet) for name, r in results.items()}


def _load(mount: Path, work: Path, **kw) -> ep.ServingPlacement:
    return ep.load_placement(mount, ep_size=G, num_experts=E, slots_per_rank=S, work_dir=work, **kw)


def _checked_run(
    placements: tuple[tuple[str, ep.ServingPlacement], ...],
    loads: np.ndarray,
    out: Path,
    *,
    tokens: int,
    steps: int,
    grouped: bool,
) -> tuple[ep.RunConfig, list[dict[str, Any]]]:
    """The placements run on G gloo ranks, every output checked against the dense reference."""
    cfg = ep.RunConfig(
        placements=placements,
        loads=loads,
        shape=SHAPE,
        tokens=tokens,
        backend="gloo",
        init_method=f"tcp://127.0.0.1:{ep.free_port()}",
        out_dir=str(out),
        steps=steps,
        check=True,
        grouped=grouped,
    )
    return cfg, ep.launch(cfg)


def test_placements_under_test_have_cross_rank_replicas(volumes, tmp_path):
    maps = {n: _load(m, tmp_path / n) for n, m in volumes.items()}
    assert len({m.phy2log.tobytes() for m in maps.values()}) == len(maps)  # four different placements
    for m in maps.values():
        # some expert has replicas on two different ranks in some layer (dispatch must split its tokens)
        ranks = [{p // S for p in np.flatnonzero(row == e)} for row in m.phy2log for e in range(E)]
        assert max(len(r) for r in ranks) >= 2
        assert m.generation == 1 and m.document == "eplb"


@pytest.mark.parametrize("grouped", [False, True], ids=["loop", "grouped_mm"])
def test_ep_layer_equals_dense_reference(volumes, inputs, tmp_path, grouped):
    loads, _ = inputs
    if grouped:
        try:
            torch._grouped_mm(
                torch.ones(2, 16), torch.ones(1, 16, 16), offs=torch.tensor([2], dtype=torch.int32)
            )
        except (AttributeError, RuntimeError, NotImplementedError):
            pytest.skip("torch._grouped_mm does not run on this CPU build")
    placements = tuple((n, _load(m, tmp_path / "init" / n)) for n, m in volumes.items())
    cfg, ranks = _checked_run(
        placements,
        loads,
        tmp_path,
        tokens=ep.tokens_per_rank(loads, SHAPE.top_k, G),
        steps=2,
        grouped=grouped,
    )
    assert [r["rank"] for r in ranks] == list(range(G))
    for r in ranks:
        assert set(r["placements"]) == set(volumes)
        for name, p in r["placements"].items():
            assert p["grouped"] is grouped
            assert p["refMaxAbs"] > 0.1, "the reference output is not trivially zero"
            assert p["maxAbsError"] < TOL, (r["rank"], name, p["maxAbsError"])
    # dispatch as engines do: an expert's tokens split evenly over its replicas (each rank's round-robin
    # over replicas can leave one extra token per rank and step)
    for name, placement in placements:
        got = np.concatenate([np.array(r["placements"][name]["slotTokens"]) for r in ranks], axis=1)  # [L, P]
        assert got.sum() == L * G * cfg.tokens * SHAPE.top_k * cfg.steps
        for layer, row in enumerate(placement.phy2log):
            for e in range(E):
                shares = got[layer, row == e]
                assert shares.max() - shares.min() <= G * cfg.steps, (name, layer, e, shares)


def _corrupt(src: Path, dst: Path, restamp: bool) -> Path:
    dst.mkdir()
    data = {p.name: p.read_text() for p in src.iterdir()}
    eplb = json.loads(data[ENGINES["eplb"].key])
    row = eplb["phy2log"][1]
    gone = row[0]
    eplb["phy2log"][1] = [row[1] if x == gone else x for x in row]  # expert `gone` loses every slot
    data[ENGINES["eplb"].key] = json.dumps(eplb)
    if restamp:
        core = {k: v for k, v in data.items() if k != contract.KEY_META}
        data[contract.KEY_META] = json.dumps(
            {"contentHash": contract.content_hash(core), "placementGeneration": 2}
        )
    for k, v in data.items():
        (dst / k).write_text(v)
    return dst


def test_missing_expert_refused_before_any_step(volumes, tmp_path):
    bad = _corrupt(volumes["vibe"], tmp_path / "bad", restamp=True)
    work = tmp_path / "work"
    with pytest.raises(ServingError) as err:
        _load(bad, work)
    assert err.value.reason == "PlacementMismatch"
    assert "without a slot" in err.value.message and "layer 1" in err.value.message
    assert not (work / "eplb.json").exists()  # the engine never got a file to start with


def test_hash_and_generation_are_checked(volumes, tmp_path):
    torn = _corrupt(volumes["vibe"], tmp_path / "torn", restamp=False)
    with pytest.raises(ServingError) as err:
        _load(torn, tmp_path / "w1")
    assert err.value.reason == "HashMismatch"
    with pytest.raises(ServingError) as err:  # a pod rolled out for generation 2 never runs generation 1
        _load(volumes["vibe"], tmp_path / "w2", expect_generation=2, wait_seconds=0)
    assert err.value.reason == "StaleVolume" and "generation 1" in err.value.message
    with pytest.raises(ServingError) as err:  # the engine launched for another EP size
        ep.load_placement(
            volumes["vibe"], ep_size=3, num_experts=E, slots_per_rank=4, work_dir=tmp_path / "w3"
        )
    assert err.value.reason == "PlacementMismatch"
    sglang = ep.load_placement(
        volumes["vibe"],
        ep_size=G,
        num_experts=E,
        slots_per_rank=S,
        work_dir=tmp_path / "w4",
        document="sglang",
    )
    assert np.array_equal(sglang.phy2log, _load(volumes["vibe"], tmp_path / "w5").phy2log)


# ---- the weighted replica split: vibe's own dispatch takes the planner's shares


def test_weighted_dispatch_equals_dense_reference_and_follows_the_weights(inputs, tmp_path):
    """A placement planned with the weighted split (a prefill-sized load, a 1.5x slower rank) is read
    with its weights from the vibe key; the layer still computes the dense reference, and each replica
    of an expert with unequal shares receives its share of the expert's tokens (within one per rank and
    step)."""
    loads, fleet = inputs
    result = solve(loads * 250.0, fleet, S, "token-balanced", replica_split="weighted")
    mount = write_volume(tmp_path / "weighted", result, fleet)
    placement = _load(mount, tmp_path / "init", replica_split="weighted")
    assert placement.replica_weights is not None
    np.testing.assert_allclose(placement.replica_weights, result.placement.weights, atol=1e-8)
    unequal = placement.cumulative_shares()[1]
    assert unequal.any(), "the planner chose unequal shares somewhere"
    cfg, ranks = _checked_run(
        (("weighted", placement),),
        loads,
        tmp_path,
        tokens=ep.tokens_per_rank(loads, SHAPE.top_k, G) * 4,
        steps=3,
        grouped=False,
    )
    for r in ranks:
        p = r["placements"]["weighted"]
        assert p["refMaxAbs"] > 0.1 and p["maxAbsError"] < TOL, (r["rank"], p["maxAbsError"])
    got = np.concatenate([np.array(r["placements"]["weighted"]["slotTokens"]) for r in ranks], axis=1)
    w = placement.replica_weights
    checked = 0
    for layer, row in enumerate(placement.phy2log):
        for e in range(E):
            slots = np.flatnonzero(row == e)
            total = got[layer, slots].sum()
            if not unequal[layer, e] or total == 0:
                continue
            want = total * w[layer, slots]
            assert (np.abs(got[layer, slots] - want) <= G * cfg.steps).all(), (
                layer,
                e,
                got[layer, slots],
                want,
            )
            checked += 1
    assert checked > 0
    # what the operator writes for the weighted split (the vibe key alone) is read the same
    only_vibe = tmp_path / "only-vibe"
    only_vibe.mkdir()
    core = {k: v for k, v in ((p.name, p.read_text()) for p in mount.iterdir()) if k == ENGINES["vibe"].key}
    meta = {"contentHash": contract.content_hash(core), "placementGeneration": 3}
    for k, v in {**core, contract.KEY_META: json.dumps(meta)}.items():
        (only_vibe / k).write_text(v)
    alone = _load(only_vibe, tmp_path / "init3", document="vibe")
    assert alone.document == "vibe" and alone.generation == 3
    np.testing.assert_array_equal(alone.phy2log, placement.phy2log)
    np.testing.assert_allclose(alone.replica_weights, placement.replica_weights, atol=1e-12)
    with pytest.raises(ServingError) as err:  # the layer launched for another EP size
        ep.load_placement(
            only_vibe, ep_size=2, num_experts=E, slots_per_rank=6, work_dir=tmp_path / "i4", document="vibe"
        )
    assert err.value.reason == "PlacementMismatch"
    # an even placement read as weighted is refused with a reason, never run evenly by accident
    even_mount = write_volume(tmp_path / "even", solve(loads, fleet, S, "token-balanced"), fleet)
    with pytest.raises(ServingError) as err:
        _load(even_mount, tmp_path / "init2", replica_split="weighted")
    assert err.value.reason == "MissingPlacement" and "no replica weights" in err.value.message
