"""``vibe plan``: writes the chosen format, prints the table; bad input is one error line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vibe.placement.errors import REASONS as PLACEMENT_REASONS
from vibe.placement.synthetic import skewed_loads
from vibe.plan import plan

app = typer.Typer()
app.command()(plan)
runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    loads = skewed_loads(3, 16, mean_tokens=400, seed=1)
    (tmp_path / "loads.json").write_text(json.dumps({"loads": loads.tolist()}))
    fleet = {
        "reference": {"hiddenSize": 7168, "intermediateSize": 2048},
        "gpus": [{"id": f"a/{i}", "node": "a", **({"timeScale": 1.5} if i == 3 else {})} for i in range(4)],
    }
    (tmp_path / "fleet.json").write_text(json.dumps(fleet))
    return {"loads": tmp_path / "loads.json", "fleet": tmp_path / "fleet.json", "dir": tmp_path}


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_writes_placement_and_prints_the_table(files):
    out = files["dir"] / "placement.json"
    r = run("--loads", files["loads"], "--fleet", files["fleet"], "--slots-per-gpu", 5, "-o", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["kind"] == "ExpertPlacement" and doc["policy"] == "vibe"
    assert doc["baseline"]["policy"] == "token-balanced"
    for name in ("round-robin", "linear", "token-balanced", "vibe"):
        assert name in r.output
    assert "gap" in r.output and "bound" in r.output


@pytest.mark.parametrize("fmt", ["sglang", "eplb"])
def test_other_formats_to_stdout(files, fmt):
    r = run("-l", files["loads"], "-f", files["fleet"], "-s", 5, "--format", fmt, "--no-compare")
    assert r.exit_code == 0
    key = "physical_to_logical_map" if fmt == "sglang" else "phy2log"
    assert key in json.loads(r.stdout.splitlines()[0])


def test_incremental_mode_reports_moves(files):
    cur = files["dir"] / "current.json"
    assert (
        run("-l", files["loads"], "-f", files["fleet"], "-s", 5, "-p", "round-robin", "-o", cur).exit_code
        == 0
    )
    out = files["dir"] / "next.json"
    r = run(
        "-l", files["loads"], "-f", files["fleet"], "-s", 5, "--current", cur, "--max-moves", 6, "-o", out
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["policy"] == "incremental" and 0 < doc["predicted"]["moves"] <= 6
    assert "incremental" in r.output and "current" in r.output


#: Loads files that are wrong in one way each.
BAD_LOADS = {
    "nan loads": '{"loads": [[1, NaN, 2]]}',
    "negative loads": '{"loads": [[1, -3, 2]]}',
    "loads out of range": '{"loads": [[1e308, 1, 2]]}',
}


def _bad(files, tmp: Path, what: str) -> list[str]:
    base = ["-l", files["loads"], "-f", files["fleet"], "-s", 5]
    if what == "shape mismatch":
        cur = tmp / "cur.json"
        cur.write_text(json.dumps({"physical_to_logical_map": [[*range(16), 0, 1, 2, 3]]}))  # 1 layer, not 3
        return [*base, "--current", cur]
    if what in BAD_LOADS:
        p = tmp / "bad-loads.json"
        p.write_text(BAD_LOADS[what])
        return ["-l", p, "-f", files["fleet"], "-s", 5]
    if what in ("non-monotone curve", "empty curve"):
        p = tmp / "fleet-bad.json"
        curve = (
            {"tokens": [1, 2, 3], "seconds": [3, 2, 4]}
            if what == "non-monotone curve"
            else {"tokens": [], "seconds": []}
        )
        p.write_text(json.dumps({"gpus": [{"id": "a/0", "node": "a", **curve}]}))
        return ["-l", files["loads"], "-f", p, "-s", 16]
    if what == "unreadable fleet":
        p = tmp / "fleet.json"
        p.write_bytes(b"\xff\xfe{")
        return ["-l", files["loads"], "-f", p, "-s", 5]
    if what == "too few slots":
        return ["-l", files["loads"], "-f", files["fleet"], "-s", 3]
    if what == "unknown policy":
        return [*base, "-p", "magic"]
    if what == "unknown format":
        return [*base, "-F", "yaml"]
    if what == "missing file":
        return ["-l", tmp / "missing.json", "-f", files["fleet"], "-s", 5]
    if what == "not json":
        p = tmp / "garbage.json"
        p.write_text("{loads: ")
        return ["-l", p, "-f", files["fleet"], "-s", 5]
    raise AssertionError(what)


@pytest.mark.parametrize(
    ("what", "words"),
    [
        ("shape mismatch", "placement is for 1 layers"),
        ("nan loads", "NaN"),
        ("negative loads", "negative"),
        ("loads out of range", "out of range"),
        ("unreadable fleet", "fleet file"),
        ("non-monotone curve", "not monotone"),
        ("empty curve", "empty"),
        ("too few slots", "cannot hold 16 experts"),
        ("missing file", "cannot read loads file"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(files, tmp_path, what, words):
    r = run(*_bad(files, tmp_path, what))
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vibe plan: "), r.stderr
    reason = lines[0].split(": ")[1]
    assert reason in PLACEMENT_REASONS, lines[0]
    assert words in lines[0]
    assert "Traceback" not in r.output
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("what", "flag", "words"),
    [
        ("unknown policy", "--policy", "'magic' is not one of"),
        ("unknown format", "--format", "'yaml' is not one of"),
    ],
)
def test_a_choice_outside_the_list_is_a_usage_error(files, tmp_path, what, flag, words):
    r = run(*_bad(files, tmp_path, what))
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and words in r.stderr and "Traceback" not in r.output
    assert r.stdout == ""


def test_help_shows_the_policy_and_format_choices():
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        [sys.executable, "-m", "vibe.cli", "plan", "--help"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert "<round-robin|linear|token-balanced|vibe|exact>" in r.stdout
    assert "<vibe|sglang|eplb|trtllm|vllm|placement>" in r.stdout


@pytest.mark.parametrize("fmt", ["vibe", "placement", "sglang", "eplb", "trtllm", "vllm"])
def test_same_files_same_bytes(files, fmt):
    """Two runs on the same inputs write the same bytes, from a fresh solve and from --current."""
    d = files["dir"]
    common = ["-l", files["loads"], "-f", files["fleet"], "-s", 5, "-F", fmt]
    assert run(*common, "-p", "round-robin", "-o", d / "cur.json").exit_code == 0
    for name in ("a", "b"):
        assert run(*common, "-o", d / f"{name}.json").exit_code == 0
        r = run(*common, "--current", d / "cur.json", "-o", d / f"{name}-inc.json")
        assert r.exit_code == 0, r.output
    assert (d / "a.json").read_bytes() == (d / "b.json").read_bytes()
    assert (d / "a-inc.json").read_bytes() == (d / "b-inc.json").read_bytes()
    assert (d / "a.json").read_bytes() != (d / "a-inc.json").read_bytes()


def test_the_installed_command(files):
    """The real ``vibe plan`` entry point, as a user runs it."""
    env = {**os.environ, "COLUMNS": "120"}
    vibe = [sys.executable, "-m", "vibe.cli", "plan"]
    inputs = ["-l", str(files["loads"]), "-f", str(files["fleet"])]
    out = str(files["dir"] / "o.json")
    ok = subprocess.run([*vibe, *inputs, "-s", "5", "-o", out], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*vibe, *inputs, "-s", "1"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("vibe plan: InfeasibleSlots: ")
    assert len(bad.stderr.strip().splitlines()) == 1
    helptext = subprocess.run([*vibe, "--help"], capture_output=True, text=True, env=env)
    assert helptext.returncode == 0
    assert "--slots-per-gpu" in helptext.stdout and "--current" in helptext.stdout


def test_step_mix_optimises_the_expected_step_time(files):
    out = files["dir"] / "placement.json"
    args = ["-l", files["loads"], "-f", files["fleet"], "-s", 5, "--step-mix", "8:0.7,2048:0.3", "--top-k", 2]
    r = run(*args, "--samples", 4, "-o", out)
    assert r.exit_code == 0, r.output
    assert "EXPECTED step time" in r.output and "mean-load ms" in r.output
    assert "8 tokens x 0.7" in r.output and "round-robin dispatch" in r.output
    doc = json.loads(out.read_text())
    from vibe.placement import evaluate, read_fleet, read_loads, read_placement
    from vibe.placement.routing import StepMix, sample_routing

    loads = read_loads(json.loads(files["loads"].read_text()))
    fleet = read_fleet(json.loads(files["fleet"].read_text()))
    placement = read_placement(doc, slots_per_gpu=5, num_experts=16)
    rt = sample_routing(loads, StepMix.parse("8:0.7,2048:0.3"), 2, samples=4)
    want = evaluate(placement, loads, fleet, routing=rt).step_time_s
    assert doc["predicted"]["stepTimeSeconds"] == pytest.approx(want, rel=1e-6)
    assert doc["baseline"]["stepTimeSeconds"] >= doc["predicted"]["stepTimeSeconds"]
    again = files["dir"] / "again.json"
    assert run(*args, "--samples", 4, "-o", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_step_mix_with_incremental_mode(files):
    cur = files["dir"] / "current.json"
    assert run("-l", files["loads"], "-f", files["fleet"], "-s", 5, "-p", "linear", "-o", cur).exit_code == 0
    r = run(
        "-l",
        files["loads"],
        "-f",
        files["fleet"],
        "-s",
        5,
        "--current",
        cur,
        "--step-mix",
        "16",
        "--top-k",
        2,
        "-o",
        files["dir"] / "next.json",
    )
    assert r.exit_code == 0, r.output
    assert "incremental" in r.output and "EXPECTED" in r.output
    # the re-placement written is the one chosen on the sampled steps, with that objective's figures
    from vibe.placement import read_fleet, read_loads, read_placement, replace_incremental
    from vibe.placement.routing import StepMix, sample_routing

    loads = read_loads(json.loads(files["loads"].read_text()))
    fleet = read_fleet(json.loads(files["fleet"].read_text()))
    current = read_placement(json.loads(cur.read_text()), slots_per_gpu=5, num_experts=16)
    want = replace_incremental(current, loads, fleet, routing=sample_routing(loads, StepMix.one(16), 2))
    doc = json.loads((files["dir"] / "next.json").read_text())
    assert (
        read_placement(doc, slots_per_gpu=5, num_experts=16).phy2log.tolist()
        == want.placement.phy2log.tolist()
    )
    assert doc["predicted"]["stepTimeSeconds"] == pytest.approx(want.step_time_s, rel=1e-6)
    assert doc["predicted"]["lowerBoundSeconds"] == pytest.approx(want.lower_bound_s, rel=1e-6)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--step-mix", "64:0.5"], "--top-k"),
        (["--step-mix", "64:x", "--top-k", 2], "not TOKENS or TOKENS:WEIGHT"),
        (["--step-mix", "64", "--top-k", 2, "--tokens-per-step", 64], "not both"),
        (["--step-mix", "64", "--top-k", 2, "--samples", 0], "samples"),
    ],
)
def test_bad_step_mix_is_one_line_and_exit_1(files, extra, words):
    r = run("-l", files["loads"], "-f", files["fleet"], "-s", 5, *extra)
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vibe plan: InvalidLoads: "), r.stderr
    assert words in lines[0]


def test_unknown_dispatch_is_a_usage_error(files):
    r = run(
        "-l",
        files["loads"],
        "-f",
        files["fleet"],
        "-s",
        5,
        "--step-mix",
        "64",
        "--top-k",
        2,
        "--dispatch",
        "x",
    )
    assert r.exit_code == 2 and "--dispatch" in r.stderr


def test_the_old_format_name_still_works_and_says_so(files):
    """``--format placement`` is the old spelling of ``vibe`` (the CRD's name): same bytes, one note."""
    common = ["-l", files["loads"], "-f", files["fleet"], "-s", 5, "--no-compare"]
    old, new = run(*common, "--format", "placement"), run(*common, "--format", "vibe")
    assert old.exit_code == 0 and new.exit_code == 0
    assert old.stdout == new.stdout
    assert "--format placement is deprecated: it is called vibe now" in old.stderr
    assert "deprecated" not in new.stderr


def test_weighted_replica_split_writes_the_shares_and_refuses_formats_without_them(files):
    out = files["dir"] / "placement.json"
    base = ["-l", files["loads"], "-f", files["fleet"], "-s", 5]
    r = run(*base, "--replica-split", "weighted", "-o", out)
    assert r.exit_code == 0, r.output
    assert "WEIGHTED replica split" in r.output
    doc = json.loads(out.read_text())
    assert doc["replicaSplit"] == "weighted" and doc["formatVersion"] == "1.1"
    assert all(len(layer["replicaWeights"]) == 20 for layer in doc["layers"])
    from vibe.placement import evaluate, read_fleet, read_loads, read_placement

    placement = read_placement(doc)
    assert placement.weights is not None
    loads = read_loads(json.loads(files["loads"].read_text()))
    fleet = read_fleet(json.loads(files["fleet"].read_text()))
    assert doc["predicted"]["stepTimeSeconds"] == pytest.approx(evaluate(placement, loads, fleet).step_time_s)
    even = json.loads(run(*base, "--no-compare").stdout.splitlines()[0])
    assert "replicaSplit" not in even and "replicaWeights" not in even["layers"][0]
    for fmt in ("sglang", "vllm", "trtllm", "eplb"):
        r = run(*base, "--format", fmt, "--replica-split", "weighted")
        assert r.exit_code == 1, (fmt, r.output)
        assert "InvalidArgument" in r.output and "cannot" in r.output and "replica split" in r.output
    r = run(*base, "--replica-split", "proportional")
    assert r.exit_code == 2
    cur = files["dir"] / "current.json"
    assert run(*base, "-p", "linear", "-o", cur).exit_code == 0
    r = run(*base, "--current", cur, "--replica-split", "weighted", "-o", files["dir"] / "inc.json")
    assert r.exit_code == 0, r.output
    assert "replicaWeights" in json.loads((files["dir"] / "inc.json").read_text())["layers"][0]
