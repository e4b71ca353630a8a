"""Every alert of the chart's PrometheusRule, unit-tested with the real ``promtool test rules``.

promtool is built from Prometheus' Go module (``hack/tools/prometheus``) by ``hack/build-cluster.sh``,
like the rest of the local control plane. The rules are the ones ``helm template`` renders; each alert
gets series that make it fire (after its ``for``), series that must not (before its ``for``, or a
neighbour that is fine), and its annotations as Prometheus renders them, so a template that names a
missing label (``<no value>``) or formats a value badly fails here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import MONITORING_APIS, NAMESPACE, Helm, one

H100 = "NVIDIA H100 80GB HBM3"
OP_JOB = "vibe-operator-metrics"
AGENT_JOB = "vibe-agent-metrics"
OP = {"job": OP_JOB, "instance": "10.0.0.5:8080", "pod": "vibe-operator-7d9f-abcde"}


def _series(name: str, labels: Mapping[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _gpu(i: int, node: str = "gpu-node-1", model: str = H100) -> dict[str, str]:
    return {
        "UUID": f"GPU-{node}-{i}",
        "gpu": str(i),
        "modelName": model,
        "node": node,
        "source": "measured",
        "job": AGENT_JOB,
        "instance": "10.0.1.7:9500",
    }


def _target(job: str, pod: str, instance: str, namespace: str = NAMESPACE) -> dict[str, str]:
    """The labels of a scraped target's ``up`` series."""
    return {"job": job, "namespace": namespace, "pod": pod, "instance": instance}


MOED = {"namespace": "serving", "name": "dsv3", **OP}

# alert[/variant] -> (input series, [(eval time, [(alert labels without severity, how $value renders)])]).
# An empty list at an eval time: the alert must not fire then.
CASES: dict[str, tuple[list[dict[str, str]], list[tuple[str, list[tuple[dict[str, str], str]]]]]] = {
    "VibeGPUSlowerThanPeers": (
        [
            _series("vibe_gpu_relative_speed", _gpu(0), "1+0x20"),
            _series("vibe_gpu_relative_speed", _gpu(1), "1+0x20"),
            _series("vibe_gpu_relative_speed", _gpu(2), "0.98+0x20"),
            _series("vibe_gpu_relative_speed", _gpu(3), "0.7+0x20"),  # 29 % below the median 0.99
            # Alone in its product: its own median, never slower than its peers.
            _series("vibe_gpu_relative_speed", _gpu(0, "gpu-node-9", "NVIDIA H200"), "0.7+0x20"),
        ],
        [("5m", []), ("12m", [(_gpu(3), "70%")])],
    ),
    "VibeGPUProfileStale": (
        [
            _series("vibe_deployment_degraded", {**MOED, "reason": "StaleGPUProfile"}, "1+0x10"),
            _series(
                "vibe_deployment_degraded", {**MOED, "name": "other", "reason": "InsufficientGPUs"}, "1+0x10"
            ),
        ],
        [("3m", []), ("6m", [({**MOED, "reason": "StaleGPUProfile"}, "1")])],
    ),
    "VibeAgentDown": (
        [
            _series("up", _target(AGENT_JOB, "vibe-agent-x1", "10.0.1.7:9500"), "0+0x10"),
            _series("up", _target(AGENT_JOB, "vibe-agent-x2", "10.0.1.8:9500"), "1+0x10"),
            _series("up", _target(AGENT_JOB, "vibe-agent-x3", "10.0.1.9:9500", "elsewhere"), "0+0x10"),
        ],
        [
            ("3m", []),
            (
                "6m",
                [(_target(AGENT_JOB, "vibe-agent-x1", "10.0.1.7:9500"), "0")],
            ),
        ],
    ),
    "VibePlacementImbalanceHigh": (
        [
            _series("vibe_placement_imbalance_ratio", MOED, "1.4+0x20"),
            _series("vibe_placement_imbalance_ratio", {**MOED, "name": "fine"}, "1.1+0x20"),
        ],
        [("10m", []), ("16m", [(MOED, "1.40")])],
    ),
    "VibePlacementNotReady": (
        [
            _series("vibe_deployment_ready", MOED, "0+0x15"),
            _series("vibe_deployment_ready", {**MOED, "name": "fine"}, "1+0x15"),
        ],
        [("5m", []), ("11m", [(MOED, "0")])],
    ),
    "VibeReconcileErrors": (
        [
            # 6 errors a minute = 0.1/s, above the default 0.01/s; a rare reason stays below it.
            _series(
                "vibe_reconcile_errors_total",
                {**OP, "namespace": NAMESPACE, "reason": "ApiException"},
                "0+6x30",
            ),
            _series(
                "vibe_reconcile_errors_total", {**OP, "namespace": NAMESPACE, "reason": "Rare"}, "0+0.1x30"
            ),
        ],
        [("10m", []), ("17m", [({"namespace": NAMESPACE, "job": OP_JOB, "reason": "ApiException"}, "0.1")])],
    ),
    "VibeOperatorDown": (
        [_series("up", _target(OP_JOB, "vibe-operator-7d9f-abcde", "10.0.0.5:8080"), "1+0x5 0+0x15")],
        [("8m", []), ("17m", [({"job": OP_JOB, "namespace": NAMESPACE}, "0")])],
    ),
    # No operator target at all (uninstalled, or its ServiceMonitor lost): the same alert, same labels.
    "VibeOperatorDown/absent": (
        [_series("up", _target(AGENT_JOB, "vibe-agent-x1", "10.0.1.7:9500"), "1+0x15")],
        [("5m", []), ("11m", [({"job": OP_JOB, "namespace": NAMESPACE}, "1")])],
    ),
}

_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def _expand(text: str, labels: Mapping[str, str], value: str) -> str:
    """The annotation as Prometheus should render it: ``$labels.X`` from the alert's labels, any use of
    ``$value`` as the case says it renders. Anything else in a template fails the test."""

    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("$labels."):
            return labels[expr.removeprefix("$labels.")]  # a missing label is a broken template
        if expr.startswith("$value"):
            return value
        raise AssertionError(f"unexpected template {m.group(0)!r} in {text!r}")

    return _TEMPLATE.sub(one, text)


@pytest.fixture(scope="module")
def promtool() -> Path:
    from vibe.cluster import binaries

    return binaries.ensure(build_missing=True, components=("prometheus",))["promtool"]


@pytest.fixture(scope="module")
def rules(helm: Helm) -> list[dict[str, Any]]:
    return one(helm.template(api_versions=MONITORING_APIS), "PrometheusRule")["spec"]["groups"]


def _unit_tests(groups: list[dict[str, Any]]) -> dict[str, Any]:
    by_alert = {r["alert"]: r for g in groups for r in g["rules"]}
    tests = []
    for case, (series, evals) in CASES.items():
        alert = case.split("/")[0]
        rule = by_alert[alert]
        checks = []
        for at, fired in evals:
            exp = []
            for labels, value in fired:
                full = {**labels, **rule["labels"]}
                exp.append(
                    {
                        "exp_labels": full,
                        "exp_annotations": {
                            k: _expand(v, full, value) for k, v in rule["annotations"].items()
                        },
                    }
                )
            checks.append({"eval_time": at, "alertname": alert, "exp_alerts": exp})
        tests.append({"name": case, "interval": "1m", "input_series": series, "alert_rule_test": checks})
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_firing_and_a_quiet_case(rules: list[dict[str, Any]]) -> None:
    assert {c.split("/")[0] for c in CASES} == {r["alert"] for g in rules for r in g["rules"]}
    for case, (_, evals) in CASES.items():
        assert any(fired for _, fired in evals) and any(not fired for _, fired in evals), case


def test_promtool_checks_and_unit_tests_every_rule(
    promtool: Path, rules: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}, sort_keys=False))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(_unit_tests(rules), sort_keys=False))
    check = subprocess.run(
        [str(promtool), "check", "rules", "--lint-fatal", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [str(promtool), "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr
