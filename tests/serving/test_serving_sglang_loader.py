"""vibe's SGLang file through the pinned SGLang's own loader, and vibe's allow-list against its source.

CI installs the SGLang wheel pinned in ``vibe.engines.sglang.SGLANG_VERSION`` without its GPU
dependencies (``make``: ``pip install --no-deps sglang==...`` plus the ``sglang`` extra, the few pure
packages its config and model modules import). That is enough for SGLang to do on CPU what a server
does at start with ``--init-expert-location``: resolve the model class through its ``ModelRegistry``,
call the class's ``get_model_config_for_expert_location`` and build ``ExpertLocationMetadata`` with
``init_by_mapping`` for an EP rank (``sglang_loader_probe.py``, in a subprocess). So a change of
SGLang's file format, of its layer count or of its slot layout fails here.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sglang_source import expert_location_architectures

from vibe.engines import EngineSettings, sglang
from vibe.engines.settings import model_layout
from vibe.engines.sglang import EXPERT_LOCATION_ARCHITECTURES, SGLANG_VERSION
from vibe.placement import engine as placement_engine
from vibe.placement.dispatch import static_dispatch_choices
from vibe.placement.synthetic import h100_fleet, skewed_loads

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"

pytestmark = pytest.mark.slow


def test_the_pinned_sglang_is_installed() -> None:
    try:
        version = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"sglang=={SGLANG_VERSION} is not installed: run `make` (it installs it without GPU deps)"
        )
    assert version == SGLANG_VERSION


def test_allow_list_matches_the_pinned_sglang_source() -> None:
    with_hook, without = expert_location_architectures()
    assert with_hook == EXPERT_LOCATION_ARCHITECTURES
    assert {"MixtralForCausalLM", "QuantMixtralForCausalLM"} <= without
    assert {"DeepseekV3ForCausalLM", "Qwen3MoeForCausalLM"} <= with_hook


@pytest.mark.parametrize(
    ("model", "moe_layers", "experts", "gpus", "slots", "nnodes"),
    [("deepseek-v3", 58, 256, 32, 9, 4), ("qwen3-235b", 94, 128, 16, 9, 2)],
)
def test_sglang_loads_vibes_file(
    tmp_path: Path, model: str, moe_layers: int, experts: int, gpus: int, slots: int, nnodes: int
) -> None:
    layout = model_layout(MODELS / model / "config.json")
    loads = skewed_loads(moe_layers, experts, mean_tokens=256, seed=1)
    fleet = h100_fleet(gpus, spread=0.08, outliers=1)
    result = placement_engine.solve(loads, fleet, slots, "vibe", time_budget_s=0.1)
    settings = EngineSettings(ep_size=gpus, redundant_experts=gpus * slots - experts, **layout)
    doc = sglang.fit(json.loads(sglang.write(result, fleet, None)), settings)
    path = tmp_path / "expert-location.json"
    path.write_text(json.dumps(doc))
    ranks = [0, gpus // nnodes + 1]
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "sglang_loader_probe.py"),
            str(MODELS / model),
            str(path),
            str(gpus),
            str(settings.redundant_experts),
            str(nnodes),
            ",".join(map(str, ranks)),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = out["metadata"]
    assert meta is not None, f"SGLang ignored the file for {layout['architecture']}"
    assert meta["ep_size"] == gpus and meta["num_layers"] == layout["num_layers"]
    assert meta["num_logical_experts"] == experts and meta["num_physical_experts"] == gpus * slots
    assert meta["physical_to_logical_map"] == doc["physical_to_logical_map"]
    # The engine's static dispatch, rank by rank, is what vibe.placement.dispatch models: the replica on
    # the rank's own GPU, else the first on its node when that narrows the choice, else a fair pick.
    phy2log = np.array(doc["physical_to_logical_map"])[layout["first_moe_layer"] :]
    for rank in ranks:
        got = np.array(out["ranks"][str(rank)])[layout["first_moe_layer"] :]
        want = static_dispatch_choices(phy2log, experts, slots, rank, gpus_per_node=gpus // nnodes)
        fixed = want >= 0
        assert fixed.any() and (~fixed).any()
        np.testing.assert_array_equal(got[fixed], want[fixed])
        chosen = np.take_along_axis(phy2log, got, axis=1)  # the slot SGLang picked holds that expert
        np.testing.assert_array_equal(chosen, np.broadcast_to(np.arange(experts), chosen.shape))
