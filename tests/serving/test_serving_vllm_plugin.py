"""vibe's EPLB policy plugin inside the pinned vLLM's own EPLB code path (``vllm_eplb_probe.py``).

CI builds ``.venv-vllm`` from ``hack/vllm-requirements.txt`` and installs vibe into it without
dependencies (``make``), so vLLM's plugin loader sees vibe's ``vllm.general_plugins`` entry point. The
probe runs there, in a subprocess: two EP ranks on CPU (gloo), a real ``EplbState``, and
``EplbState.rearrange()`` -- vLLM all-reduces the load window, calls the policy on every rank, moves the
expert weights between the ranks and commits the maps. The placement ConfigMaps are what the operator
writes (``vibe.operator.output.render`` + ``finish``), projected as kubelet does (``..data`` swaps).
``VIBE_VLLM_PYTHON`` may name another interpreter that has the pinned vLLM and vibe installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vibe.engines import get
from vibe.operator.output import InputKeys, finish, render
from vibe.placement import engine as placement_engine
from vibe.placement.synthetic import h100_fleet, skewed_loads
from vibe.serving.vllm_eplb import VLLM_VERSIONS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROBE = HERE / "vllm_eplb_probe.py"

pytestmark = pytest.mark.slow

LAYERS, EXPERTS, RANKS, SLOTS, WINDOW = 3, 6, 2, 4, 4
PHYSICAL = RANKS * SLOTS


def vllm_python() -> str:
    path = os.environ.get("VIBE_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(path).exists():
        pytest.fail(
            f"no vLLM virtualenv at {path}: run `make` (it builds .venv-vllm), or set VIBE_VLLM_PYTHON"
        )
    return path


def probe(*args: str, env: dict[str, str] | None = None, timeout: float = 500) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("VIBE_VLLM_")}
    full.update(env or {})
    # its own session: on a timeout (ranks that split their answers hang in vLLM's weight transfer) the
    # ranks it spawned go with it
    proc = subprocess.Popen(
        [vllm_python(), str(PROBE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the vLLM probe {args[0]} did not finish in {timeout:.0f} s (ranks hung?)")
    assert proc.returncode == 0, stderr[-5000:]
    return json.loads(stdout.strip().splitlines()[-1])


def configmap(generation: int, seed: int, gpus: int = RANKS, layers: int = LAYERS) -> dict[str, str]:
    """The placement ConfigMap's data exactly as the operator renders it."""
    loads = skewed_loads(layers, EXPERTS, mean_tokens=256, seed=seed)
    fleet = h100_fleet(gpus, spread=0.1, outliers=1)
    result = placement_engine.solve(loads, fleet, PHYSICAL // gpus, "vibe", time_budget_s=0.05, seed=seed)
    keys = InputKeys("p", "g", "c", "l")
    data, _ = finish(
        render(result, fleet, ("vibe", "vllm")),
        generation=generation,
        keys=keys,
        placed_at="2026-12-07T00:00:00Z",
        summary={},
    )
    return data


def phy2log(data: dict[str, str]) -> list[list[int]]:
    """The map the ``vllm`` key holds (the plugin reads it first), checked against placement.json's."""
    rows = json.loads(data["vllm-eplb.json"])["physical_to_logical_map"]
    assert rows == [layer["physicalToLogical"] for layer in json.loads(data["placement.json"])["layers"]]
    return rows


def test_the_pinned_vllm_is_the_tested_one() -> None:
    pinned = (ROOT / "hack" / "vllm-requirements.txt").read_text().split("vllm==")[1].split()[0]
    assert pinned == VLLM_VERSIONS[0]
    out = probe("plugins")
    assert out["vllm"] == pinned


def test_the_plugin_loads_through_vllms_loader_and_takes_the_default_slot(tmp_path: Path) -> None:
    on = probe("plugins", env={"VIBE_VLLM_PLACEMENT_DIR": str(tmp_path)})
    assert on["policies"] == {"default": "VibeEplbPolicy", "vibe": "VibeEplbPolicy"}
    # vLLM 0.33.0 validates --eplb-config policy as Literal["default"]: "vibe" cannot be selected by name,
    # which is why the plugin takes over "default" (and only when VIBE_VLLM_PLACEMENT_DIR is set).
    assert on["config_accepts_policy_vibe"] is False
    off = probe("plugins")
    assert off["policies"] == {"default": "DefaultEplbPolicy"}


def test_an_untested_vllm_stops_at_start_with_one_error(tmp_path: Path) -> None:
    out = probe("version", "0.34.0", env={"VIBE_VLLM_PLACEMENT_DIR": str(tmp_path)})
    assert out["error"] and "tested with vLLM 0.33.0, not 0.34.0" in out["error"]


def window_counts(seed: int) -> list:
    """Per rank, per-physical-slot token counts [window, layers, physical] (what each rank's MoE recorded)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50, size=(RANKS, WINDOW, LAYERS, PHYSICAL)).tolist()


def test_vllms_eplb_moves_experts_to_vibes_placement_live(tmp_path: Path) -> None:
    misfit = configmap(1, seed=1, gpus=4)  # 4 GPUs x 2 slots: same slot count, wrong EP size
    gen2, gen3 = configmap(2, seed=2), configmap(3, seed=3)
    stale2 = configmap(2, seed=4)  # a hand rollback to an older generation
    gen4_wrong_layers = configmap(4, seed=5, layers=LAYERS + 1)
    assert phy2log(gen2) != phy2log(gen3)
    phases = [
        ("misfit", [misfit, misfit]),
        ("profile", [gen2, gen2]),  # vLLM's profile run asks the policy but commits nothing
        ("apply", [gen2, gen2]),
        ("disagree", [gen3, None]),  # rank 0's volume swapped to generation 3, rank 1's not yet
        ("agree", [None, gen3]),
        ("rollback", [stale2, stale2]),
        ("misfit-later", [gen4_wrong_layers, gen4_wrong_layers]),
    ]
    scenario = {
        "ranks": RANKS,
        "layers": LAYERS,
        "experts": EXPERTS,
        "redundant": PHYSICAL - EXPERTS,
        "window": WINDOW,
        "phases": [
            {"name": name, "data": data, "window_counts": window_counts(i), "profile": name == "profile"}
            for i, (name, data) in enumerate(phases)
        ],
    }
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    out = probe("rearrange", str(path), str(tmp_path / "out"))
    ranks = out["ranks"]
    by_phase = {p["name"]: [r[i] for r in ranks] for i, p in enumerate(ranks[0])}
    for name, results in by_phase.items():
        assert results[0]["policy"] == "VibeEplbPolicy", name
        assert results[0]["map"] == results[1]["map"], f"{name}: the ranks serve different maps"
        assert all(r["weights_follow_map"] for r in results), f"{name}: expert weights did not move"

    # nothing of vibe's fits yet: vLLM's default policy's answer, and one line saying why
    first = by_phase["misfit"][0]
    assert first["map"] == first["default_answer"]
    assert len(first["log"]) == 1 and "placement is for 4 GPUs but vLLM's EP size is 2" in first["log"][0]
    assert by_phase["profile"][0]["map"] == first["map"]  # the profile run moved nothing
    assert by_phase["apply"][0]["map"] == phy2log(gen2)  # though the profile run already saw it
    # rank 0 sees generation 3 first: both keep generation 2 until both see 3
    disagree = by_phase["disagree"][0]
    assert disagree["map"] == phy2log(gen2)
    assert "different placements" in disagree["log"][0]
    assert by_phase["agree"][0]["map"] == phy2log(gen3)
    assert by_phase["rollback"][0]["map"] == phy2log(gen3)
    later = by_phase["misfit-later"][0]
    assert later["map"] == phy2log(gen3)
    assert "placement has 4 MoE layers but vLLM's model has 3" in later["log"][0]
    assert all(not r["log"] for r in by_phase["misfit-later"][1:]), "only EP rank 0 logs"

    # the last window, all-reduced over the ranks and folded to logical experts; the vllm record's loads
    # reader (what `vibe serving export-loads --engine vllm` runs) makes it tokens per step
    last = np.asarray(scenario["phases"][-1]["window_counts"]).sum(axis=(0, 1))  # [layers, physical]
    in_service = np.asarray(by_phase["rollback"][0]["map"])  # the map the window was recorded under
    logical = np.zeros((LAYERS, EXPERTS))
    for layer in range(LAYERS):
        np.add.at(logical[layer], in_service[layer], last[layer])
    assert out["window"]["logical_count"] == logical.astype(int).tolist()
    assert out["window"]["windowSteps"] == WINDOW
    window = tmp_path / "window.json"
    window.write_text(json.dumps(out["window"]))
    np.testing.assert_allclose(get("vllm").loads(window).loads, logical / WINDOW)
