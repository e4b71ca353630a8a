"""`vibe agent ...` as a user runs it: simulated fleets to files, errors as exit codes, no driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vibe.agent.cli import app
from vibe.agent.telemetry import NvmlTelemetry

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "examples" / "agent" / "fleet.yaml"


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_run_simulated_fleet_to_files(tmp_path: Path) -> None:
    r = invoke("run", "--simulate", str(FLEET), "--out-dir", str(tmp_path), "--once", "--metrics-port", "0")
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "vibe-system").iterdir())
    assert files == [f"gpu-node-{k}.json" for k in range(8)]
    body = json.loads((tmp_path / "vibe-system" / "gpu-node-2.json").read_text())
    assert body["spec"]["source"] == "simulated" and len(body["spec"]["gpus"]) == 8
    speeds = [g["relativeSpeed"] for g in body["spec"]["gpus"]]
    # The outlier of the example fleet (speed 0.62 above its memory floor, its floor as the reference's)
    # is the slowest; its relative speed, the median over token counts, many of them floor-bound, reads
    # well above 0.62 (0.94).
    assert speeds.index(min(speeds)) == 2 and 0.62 < min(speeds) < 0.96
    lease = json.loads((tmp_path / "leases" / "vibe-system" / "gpu-node-2.json").read_text())
    assert lease["kind"] == "Lease" and lease["spec"]["leaseDurationSeconds"] == 30


def test_run_one_node_of_a_fleet(tmp_path: Path) -> None:
    """A DaemonSet pod simulates its own node: the file's node of that name, else the first node's GPUs."""
    args = ["run", "--simulate", str(FLEET), "--out-dir", str(tmp_path), "--once", "--metrics-port", "0"]
    assert invoke(*args, "--node", "gpu-node-5").exit_code == 0
    assert invoke(*args, "--node", "kind-worker", "-n", "other").exit_code == 0
    assert [p.name for p in (tmp_path / "vibe-system").iterdir()] == ["gpu-node-5.json"]
    other = json.loads((tmp_path / "other" / "kind-worker.json").read_text())
    assert other["metadata"]["namespace"] == "other" and len(other["spec"]["gpus"]) == 8


def test_run_for_a_while_with_metrics(tmp_path: Path) -> None:
    fleet = tmp_path / "f.yaml"
    fleet.write_text("nodes: [{name: a, gpus: [1.0, 0.9]}]\ndrift: [{at: 1s, gpu: 1, timeScale: 1.5}]\n")
    r = invoke(
        "run", "--simulate", str(fleet), "--out-dir", str(tmp_path / "out"), "--duration", "6",
        "--poll-seconds", "0.5", "--metrics-port", "0", "--heartbeat-seconds", "2",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    body = json.loads((tmp_path / "out" / "vibe-system" / "a.json").read_text())
    assert body["spec"]["gpus"][1]["drift"]["state"] == "Drifted"
    lease = json.loads((tmp_path / "out" / "leases" / "vibe-system" / "a.json").read_text())
    assert lease["spec"]["leaseDurationSeconds"] == 2 and lease["spec"]["renewTime"].endswith("Z")


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--simulate", "missing.yaml", "--out-dir", "x"], "missing.yaml"),
        (["run", "--shape", "7168by2048", "--out-dir", "x"], "bad shape"),
        (["bench", "--shape", "0x5"], "sizes must be positive"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    r = invoke(*args)
    assert r.exit_code == 2 and message in r.output


def test_telemetry_without_a_driver_exits_1() -> None:
    if NvmlTelemetry.open().available:
        pytest.skip("this machine has an NVIDIA driver")
    r = invoke("telemetry")
    assert r.exit_code == 1 and "no GPU telemetry" in r.output


def test_help_lists_the_commands() -> None:
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("run", "bench", "telemetry"):
        assert cmd in r.output
