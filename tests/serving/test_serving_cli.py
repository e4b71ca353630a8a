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


def test_init_writes_tensorrt_llm_files_from_the_registry(volume: KubeletVolume, tmp_path: Path) -> None:
    """``--engine-file NAME=PATH`` takes any format of vibe.engines: TensorRT-LLM's load balancer, keyed past
    the dense layer (the model config's first_k_dense_replace), and the engine-args snippet beside it."""
    import yaml

    volume.write(placement_data(generation=3))
    lb = tmp_path / "run" / "moe_load_balancer.yaml"
    args = ["init", *ENGINE, "--placement-dir", str(volume.root), "--state-dir", str(tmp_path / "s")]
    result = runner.invoke(app, [*args, "--engine-file", f"trtllm={lb}"])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(lb.read_text())
    assert doc["num_slots"] == 12 and doc["layer_updates_per_iter"] == 0
    assert sorted(doc["initial_global_assignments"]) == [1, 2, 3]
    snippet = yaml.safe_load((tmp_path / "run" / "moe_load_balancer-extra-engine-args.yaml").read_text())
    assert snippet["moe_config"] == {"backend": "WIDEEP", "load_balancer": str(lb)}
    bad = runner.invoke(app, [*args, "--engine-file", f"yaml={lb}"])
    assert bad.exit_code == 1 and "InvalidArgument: unknown format 'yaml'" in bad.output
    wrong_ep = ["init", "--ep-size", "5", "--placement-dir", str(volume.root), "--state-dir", str(tmp_path)]
    refused = runner.invoke(app, [*wrong_ep, "--engine-file", f"trtllm={tmp_path / 'x.yaml'}"])
    assert refused.exit_code == 1 and "PlacementMismatch" in refused.output


def test_export_loads_reads_tensorrt_llm_statistics(tmp_path: Path) -> None:
    """``--stats-dir`` (TensorRT-LLM's EXPERT_STATISTIC_PATH) with ``--assignment`` (the load balancer in
    service): per-slot counts fold back to experts; the file layout is upstream's (tests/engines)."""
    from safetensors.numpy import save_file

    from vibe.engines import trtllm

    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / "meta_info.json").write_text(json.dumps({"num_experts": 4, "num_experts_per_token": 1}))
    counts = {f"{it}_3": np.array([1, 2, 3, 4], dtype=np.int64) for it in (10, 11)}
    save_file(counts, str(stats / "rank0.safetensors"))
    lb = tmp_path / "lb.yaml"
    lb.write_bytes(trtllm.to_yaml(4, {3: [0, 1, 1, 0]}))
    out = tmp_path / "loads.json"
    args = ["export-loads", "--stats-dir", str(stats), "--assignment", str(lb), "--output", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"loads": [[5.0, 5.0]]}
    plain = runner.invoke(app, ["export-loads", "--stats-dir", str(stats), "--output", str(out)])
    assert plain.exit_code == 0 and json.loads(out.read_text()) == {"loads": [[1.0, 2.0, 3.0, 4.0]]}
