"""`vibe serving` commands end to end on files: exit codes and the one-line failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from serving_helpers import KubeletVolume, placement_data
from typer.testing import CliRunner

from vibe.serving.cli import app

runner = CliRunner()
ENGINE = [
    "--ep-size",
    "4",
    "--redundant-experts",
    "4",
    "--num-experts",
    "8",
    "--num-layers",
    "4",
    "--first-moe-layer",
    "1",
]


def test_init_writes_the_file(volume: KubeletVolume, tmp_path: Path) -> None:
    volume.write(placement_data(generation=3))
    out = tmp_path / "loc.json"
    args = ["init", *ENGINE, "--placement-dir", str(volume.root), "--sglang-out", str(out)]
    result = runner.invoke(app, [*args, "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["placementGeneration"] == 3
    assert len(json.loads(out.read_text())["physical_to_logical_map"]) == 4


def test_init_fails_in_one_line(volume: KubeletVolume, tmp_path: Path) -> None:
    volume.write(placement_data(generation=3))
    bad = ["init", "--ep-size", "8", "--redundant-experts", "4", "--placement-dir", str(volume.root)]
    result = runner.invoke(
        app, [*bad, "--sglang-out", str(tmp_path / "x.json"), "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "vibe serving: PlacementMismatch: placement.json: placement is for 4 GPUs" in result.output
    ok = ["init", *ENGINE, "--placement-dir", str(volume.root), "--sglang-out", str(tmp_path / "y.json")]
    empty_env = runner.invoke(app, [*ok, "--state-dir", str(tmp_path)], env={"VIBE_EXPECT_GENERATION": ""})
    assert empty_env.exit_code == 0, empty_env.output  # an absent template annotation means "any generation"


def test_watch_once_reports_from_the_log(volume: KubeletVolume, tmp_path: Path, monkeypatch) -> None:
    from vibe.serving import kube

    def no_cluster(*a, **kw):
        raise RuntimeError("no cluster here")

    monkeypatch.setattr(kube, "client", no_cluster)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    volume.write(placement_data(generation=3))
    args = [
        "watch",
        *ENGINE,
        "--placement-dir",
        str(volume.root),
        "--state-dir",
        str(tmp_path / "s"),
        "--once",
    ]
    assert runner.invoke(app, args).stdout.strip() == "baseline"
    volume.write(placement_data(generation=4, shift=1))
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and result.stdout.strip() == "apply"
    restart = runner.invoke(app, [*args, "--policy", "restart"])
    assert restart.exit_code == 1 and "no Kubernetes API access" in restart.output


def test_export_loads_to_a_file(tmp_path: Path) -> None:
    count = np.zeros((4, 3, 5))
    count[:2, 1:] = 8
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"logical_count": count.tolist()}))
    out = tmp_path / "loads.json"
    result = runner.invoke(app, ["export-loads", "--dump", str(dump), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"loads": [[8.0] * 5, [8.0] * 5]}
    both = runner.invoke(
        app, ["export-loads", "--dump", str(dump), "--engine-url", "http://x", "--output", str(out)]
    )
    assert both.exit_code == 1 and "exactly one of --dump, --stats-dir and --engine-url" in both.output


def test_init_refuses_an_architecture_sglang_ignores(volume: KubeletVolume, tmp_path: Path) -> None:
    """Mixtral's SGLang model class has no expert-location hook: SGLang would ignore the file, so init
    refuses it (from the model's config.json, or --architecture), and takes DeepSeek-V3's."""
    volume.write(placement_data(generation=3))
    config = tmp_path / "config.json"
    base = [
        "init",
        "--ep-size",
        "4",
        "--redundant-experts",
        "4",
        "--placement-dir",
        str(volume.root),
        "--state-dir",
        str(tmp_path / "s"),
        "--sglang-out",
        str(tmp_path / "loc.json"),
    ]
    config.write_text(
        json.dumps({"architectures": ["MixtralForCausalLM"], "num_hidden_layers": 3, "num_local_experts": 8})
    )
    refused = runner.invoke(app, [*base, "--model-config", str(config)])
    assert refused.exit_code == 1
    line = refused.output.strip().splitlines()[-1]
    assert line.startswith(
        "vibe serving: UnsupportedArchitecture: SGLang 0.5.23 ignores --init-expert-location"
    )
    assert "MixtralForCausalLM" in line and "get_model_config_for_expert_location" in line
    assert not (tmp_path / "loc.json").exists()
    flag = runner.invoke(app, [*base, "--num-experts", "8", "--architecture", "MixtralForCausalLM"])
    assert flag.exit_code == 1 and "UnsupportedArchitecture" in flag.output
    config.write_text(
        json.dumps(
            {
                "architectures": ["DeepseekV3ForCausalLM"],
                "num_hidden_layers": 4,
                "n_routed_experts": 8,
                "first_k_dense_replace": 1,
            }
        )
    )
    taken = runner.invoke(app, [*base, "--model-config", str(config)])
    assert taken.exit_code == 0, taken.output
    assert len(json.loads((tmp_path / "loc.json").read_text())["physical_to_logical_map"]) == 4
