"""The engine registry: every record writes, reads back, fits and prices the same placement.

These tests loop over ``vibe.engines.ENGINES``: a record added with a writer its reader cannot read, a fit
that loses a slot, or files ``vibe serving init`` cannot write fails here without a new test. The CRD's
enum is checked against the registry in ``tests/test_api.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vibe.engines import ALIASES, ENGINES, EngineError, EngineSettings, get
from vibe.placement import evaluate, solve
from vibe.placement.synthetic import h100_fleet, skewed_loads

LAYERS, EXPERTS, GPUS, SLOTS = 3, 12, 4, 4


@pytest.fixture(scope="module")
def result():
    loads = skewed_loads(LAYERS, EXPERTS, mean_tokens=200, seed=3)
    fleet = h100_fleet(GPUS, spread=0.1, outliers=1, seed=2)
    return solve(loads, fleet, SLOTS, "vibe", time_budget_s=0.2), fleet, loads


def settings(**kw) -> EngineSettings:
    base = {"ep_size": GPUS, "redundant_experts": GPUS * SLOTS - EXPERTS, "num_experts": EXPERTS}
    return EngineSettings(**{**base, **kw})


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_format_reads_back_what_it_wrote(result, name: str) -> None:
    r, fleet, _ = result
    engine = ENGINES[name]
    blob = engine.write(r, fleet, None)
    assert blob == engine.write(r, fleet, None) and blob.endswith(b"\n")  # deterministic bytes
    back = engine.read(engine.parse(blob.decode()), slots_per_gpu=SLOTS, num_experts=EXPERTS)
    np.testing.assert_array_equal(back.phy2log, r.placement.phy2log)
    assert engine.key and engine.key not in {e.key for e in ENGINES.values() if e is not engine}


@pytest.mark.parametrize("name", [n for n, e in ENGINES.items() if e.fit is not None])
def test_every_engine_fits_and_files_what_it_wrote(result, name: str, tmp_path: Path) -> None:
    r, fleet, _ = result
    engine = ENGINES[name]
    assert engine.fit and engine.width and engine.permute and engine.files
    doc = engine.fit(engine.parse(engine.write(r, fleet, None).decode()), settings())
    assert engine.width(doc) == GPUS * SLOTS
    assert engine.permute(doc, list(range(GPUS * SLOTS))) == doc
    files = engine.files(doc, tmp_path / f"{name}.out", settings())
    assert tmp_path / f"{name}.out" in files and all(isinstance(b, bytes) and b for b in files.values())
    with pytest.raises(EngineError) as e:  # launched for another EP size: refused, naming both numbers
        engine.fit(engine.parse(engine.write(r, fleet, None).decode()), settings(ep_size=3))
    assert e.value.reason == "PlacementMismatch" and "3" in e.value.message


def test_one_name_per_format_and_the_old_cli_spelling_still_works() -> None:
    assert ALIASES == {"placement": "vibe"}
    assert get("placement") is ENGINES["vibe"]
    with pytest.raises(EngineError, match="one of vibe, sglang, eplb, trtllm"):
        get("yaml")


@pytest.mark.parametrize("name", list(ENGINES))
def test_each_engine_is_priced_with_its_own_split(result, name: str) -> None:
    """``Engine.dispatch`` is what ``evaluate`` prices the engine's replicas with: TensorRT-LLM's
    round-robin and EPLB's arrays split evenly (the cost model's default), SGLang's static dispatch not."""
    r, fleet, loads = result
    engine = ENGINES[name]
    priced = evaluate(r.placement, loads, fleet, dispatch=engine.dispatch)
    even = evaluate(r.placement, loads, fleet)
    if engine.dispatch == "even":
        assert priced.step_time_s == even.step_time_s
    else:
        assert engine.name == "sglang" and engine.dispatch == "sglang-static"
        assert priced.step_time_s > 0
    assert ENGINES["trtllm"].dispatch == "even"


def test_what_an_update_can_do_is_recorded() -> None:
    for engine in ENGINES.values():
        assert engine.updates and set(engine.updates) <= {"restart", "live"}
    assert ENGINES["trtllm"].updates == ("restart",)  # layer_updates_per_iter: 0 -- static
    assert ENGINES["vllm"].updates == ("live",)  # vLLM's EPLB moves the experts (vibe's policy plugin)
    assert {n for n, e in ENGINES.items() if e.loads is not None} == {"sglang", "trtllm", "vllm"}
