"""Inputs a tenant or a node controls, read without escaping the condition path (issue 20, defect 4
and the loads/curve weak spots).

A loads ConfigMap of deeply nested JSON raised RecursionError and one with a 5000-digit integer raised
ValueError, both outside the ``Problem`` path: a new MoEDeployment got no status for 30+ minutes and the
log a traceback a minute. ``vibe plan`` on the same file said ``InternalError``. Booleans in loads
(``[[true, 1]]``) and a curve point at 2^62 tokens were accepted as numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from operator_builders import deployment_body
from typer.testing import CliRunner

from vibe.operator.problems import Problem
from vibe.operator.spec import parse_spec
from vibe.operator.workload import from_config_map
from vibe.placement.curves import GPUCurve
from vibe.placement.errors import PlacementError
from vibe.placement.inputs import MAX_JSON_DEPTH, load_json, parse_json, read_loads
from vibe.plan import plan as plan_command

DEEP = "[" * 100_000 + "]" * 100_000  # 200 kB, as in the report
HUGE_INT = '{"loads": [' + ",".join(["[" + "9" * 5000 + "," + ",".join(["1"] * 15) + "]"] * 4) + "]}"


def spec():
    return parse_spec(deployment_body("m", workload={"configMapRef": {"name": "l"}})["spec"])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (DEEP, "nested deeper than"),
        (json.dumps({"loads": json.loads("[" * 40 + "1" + "]" * 40)}), "nested deeper than"),
        (HUGE_INT, "4300 digits"),
        ("x" * (4 << 20), "bytes; at most"),
    ],
    ids=["200kB-deep", "40-deep", "5000-digit-int", "4MiB"],
)
def test_an_unreadable_loads_config_map_is_invalid_loads(text, words):
    with pytest.raises(Problem) as e:
        from_config_map(spec(), "ns", {"loads.json": text})
    assert e.value.reason == "InvalidLoads"
    assert words in e.value.message and "ConfigMap ns/l key 'loads.json'" in e.value.message


def test_booleans_are_not_loads():
    with pytest.raises(PlacementError, match="array of numbers"):
        read_loads({"loads": [[True, 1.0, 2.0]] * 2})
    with pytest.raises(Problem) as e:
        from_config_map(spec(), "ns", {"loads.json": json.dumps({"loads": [[True] + [1] * 15] * 4})})
    assert e.value.reason == "InvalidLoads"


def test_a_curve_point_beyond_any_step_is_refused():
    with pytest.raises(PlacementError, match="beyond any step"):
        GPUCurve("a/0", "a", [1, 2**62], [1e-5, 2e-5])
    GPUCurve("a/0", "a", [1, 8192], [1e-5, 2e-4])  # what the agent measures


def test_depth_bound_admits_every_real_input():
    nested = {"logical_count": [[[1.0] * 4] * 3] * 2}
    assert parse_json(json.dumps(nested), "x") == nested
    with pytest.raises(PlacementError):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "x")


def test_load_json_refuses_what_is_not_a_regular_file(tmp_path: Path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PlacementError, match="not a regular file"):
        load_json(fifo, "loads")  # would block forever on open
    big = tmp_path / "big.json"
    big.write_text("[" + "1," * 600 + "1]")
    with pytest.raises(PlacementError, match="larger than 1000 bytes"):
        load_json(big, "loads", max_bytes=1000)


@pytest.mark.parametrize("content", [DEEP, HUGE_INT], ids=["deep", "5000-digit-int"])
def test_vibe_plan_says_it_is_the_loads(tmp_path: Path, content: str):
    import typer

    app = typer.Typer()
    app.command()(plan_command)
    loads = tmp_path / "loads.json"
    loads.write_text(content)
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"reference": {"hiddenSize": 7168, "intermediateSize": 2048},
                                 "gpus": [{"id": f"a/{i}", "node": "a"} for i in range(4)]}))  # fmt: skip
    r = CliRunner().invoke(app, ["--loads", str(loads), "--fleet", str(fleet), "-s", "5"])
    assert r.exit_code == 1, r.output
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("vibe plan: UnreadableFile: loads file"), r.stderr
    assert "Traceback" not in r.output and "InternalError" not in r.output
