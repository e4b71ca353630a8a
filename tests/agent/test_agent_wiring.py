"""``vibe.agent.wiring``: the agent process put together without Typer (a simulated fleet, files out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vibe.agent import wiring
from vibe.agent.drift import DriftConfig
from vibe.agent.node import AgentConfig
from vibe.agent.runner import RunnerConfig
from vibe.agent.shapes import default_shapes
from vibe.agent.simulate import SimulationError
from vibe.kubeclient import CredentialsError

FLEET = Path(__file__).resolve().parents[2] / "examples" / "agent" / "fleet.yaml"


def test_one_step_of_a_simulated_node_writes_its_profile(tmp_path: Path) -> None:
    shapes = default_shapes()
    cfg = AgentConfig(namespace="ns", heartbeat_seconds=30, shapes=shapes, drift=DriftConfig())
    agents = wiring.simulated(FLEET, cfg, node="gpu-node-2")
    assert [a.node for a in agents] == ["gpu-node-2"] and len(agents[0].infos) == 8
    runner = wiring.run(agents, wiring.publisher(tmp_path), RunnerConfig(), shapes, once=True)
    assert runner.errors == 0
    body = json.loads((tmp_path / "ns" / "gpu-node-2.json").read_text())
    assert body["spec"]["source"] == "simulated" and len(body["spec"]["gpus"]) == 8


def test_bad_inputs_raise_what_the_command_reports(tmp_path: Path) -> None:
    cfg = AgentConfig(namespace="ns", heartbeat_seconds=30, shapes=default_shapes(), drift=DriftConfig())
    with pytest.raises((OSError, SimulationError)):
        wiring.simulated(tmp_path / "missing.yaml", cfg)
    with pytest.raises(CredentialsError):
        wiring.publisher(kubeconfig=tmp_path / "none.yaml")
