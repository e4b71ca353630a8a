"""Credentials: without a pod's service account or a kubeconfig, every command says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vibe.kubeclient import CredentialsError, api_client


def test_a_missing_kubeconfig_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(CredentialsError) as e:
        api_client(str(missing))
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: [}\n")
    with pytest.raises(CredentialsError):
        api_client(str(broken))


@pytest.mark.parametrize(
    "argv",
    [
        ["operator", "--standalone", "--metrics-port", "0"],
        ["agent", "run", "--simulate", "vibe/demo/fleet.yaml", "--metrics-port", "0"],
        ["serving", "export-loads", "--dump", "x.json", "--configmap", "loads", "--namespace", "ns"],
    ],
    ids=["operator", "agent", "serving"],
)
def test_commands_without_credentials_exit_non_zero_without_a_traceback(
    argv: list[str], tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "x.json").write_text('{"logical_count": [[1, 2], [3, 4]]}')
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "none")
    argv = [str(root / a) if a.startswith("vibe/") else a for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "vibe", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert "no Kubernetes credentials" in out and str(tmp_path / "none") in out, out
    # it suggests only options the command has (it once told `vibe operator` users to pass a
    # --kubeconfig the operator did not have)
    command = [a for a in argv if not a.startswith("-")][: 2 if argv[0] != "operator" else 1]
    help_text = subprocess.run(
        [sys.executable, "-m", "vibe", *command, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for flag in ("--kubeconfig", "--context"):
        if flag in out:
            assert flag in help_text, f"the message suggests {flag}, which `vibe {' '.join(command)}` lacks"
