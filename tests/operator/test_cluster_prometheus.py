"""The chart's alerts in a real Prometheus: it scrapes the operator and the simulated agent, a GPU drifts,
and ``VibeGPUSlowerThanPeers`` fires, read from Prometheus' HTTP API (``/api/v1/alerts``); the operator
stops and ``VibeOperatorDown`` fires with the release's namespace.

Prometheus and promtool are built from ``hack/tools/prometheus`` like the rest of the local control
plane. The rules are the chart's PrometheusRule as ``helm template`` renders it, with the ``for`` of the
two alerts shortened by the chart's own values; the scrape jobs are named as the ServiceMonitors' Services
(``<fullname>-<component>-metrics``) with the release namespace as target label, as the Prometheus
Operator would label them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import ROOT, OperatorProcess, free_port

from vibe.cluster.waiting import wait_for
from vibe.crds.apply import apply_crds

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RELEASE_NS = "vibe-system"
DRIFT_AT_S = 45


def _rules(helm: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(helm),
            "template",
            "vibe",
            str(ROOT / "charts" / "vibe"),
            "--namespace",
            RELEASE_NS,
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
            "--set",
            "monitoring.prometheusRule.alerts.gpuSlow.for=5s",
            "--set",
            "monitoring.prometheusRule.alerts.operatorDown.for=5s",
            "--show-only",
            "templates/monitoring/prometheusrule.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return {"groups": yaml.safe_load(out)["spec"]["groups"]}


def _api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def _alerts(port: int, name: str, state: str = "firing") -> list[dict[str, Any]]:
    return [
        a
        for a in _api(port, "/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == name and a["state"] == state
    ]


def test_prometheus_fires_the_drift_alert(cluster, kube, gpu_nodes, cluster_binaries, tmp_path: Path) -> None:
    from kubernetes import client

    profile_ns = f"vibe-prom-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(kube).create_namespace(
        {"metadata": {"name": profile_ns, "labels": {"vibe.dev/test": "true"}}}
    )
    apply_crds(kube)
    prefix = f"pm-{uuid.uuid4().hex[:6]}"
    node = gpu_nodes(1, prefix=prefix, gpus_per_node=8)[0]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "product": "NVIDIA H100 80GB HBM3",
                "seed": 3,
                "generate": {
                    "count": 1,
                    "namePattern": prefix + "-{i}",
                    "gpusPerNode": 8,
                    "spread": 0.02,
                    "outliers": 0,
                },
                "drift": [
                    {
                        "at": f"{DRIFT_AT_S}s",
                        "node": node,
                        "gpu": 2,
                        "timeScale": 1.5,
                        "reason": "HwPowerBrakeSlowdown",
                    }
                ],
            }
        )
    )
    agent_port, prom_port = free_port(), free_port()
    agent_log = tmp_path / "agent.log"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with agent_log.open("wb") as fh:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vibe",
                "agent",
                "run",
                "--simulate",
                str(fleet),
                "--namespace",
                profile_ns,
                "--metrics-port",
                str(agent_port),
                "--metrics-addr",
                "127.0.0.1",
                "--heartbeat-seconds",
                "10",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    op = OperatorProcess(cluster.kubeconfig, profile_ns).start()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules(cluster_binaries["helm"])))
    scrape = {"scrape_interval": "1s", "honor_labels": True}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "vibe-operator-metrics",
                **scrape,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{op.metrics_port}"],
                        "labels": {"namespace": RELEASE_NS, "pod": "op-0"},
                    }
                ],
            },
            {
                "job_name": "vibe-agent-metrics",
                **scrape,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{agent_port}"],
                        "labels": {"namespace": RELEASE_NS, "pod": "agent-0"},
                    }
                ],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_log = tmp_path / "prometheus.log"
    with prom_log.open("wb") as fh:
        prom = subprocess.Popen(
            [
                str(cluster_binaries["prometheus"]),
                "--config.file=prometheus.yml",
                f"--storage.tsdb.path={tempfile.mkdtemp(dir=tmp_path)}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )

    def logs() -> str:
        tail = {
            p.name: "\n".join(p.read_text(errors="replace").splitlines()[-25:]) for p in (agent_log, prom_log)
        }
        return (
            "\n".join(f"---- {k} ----\n{v}" for k, v in tail.items()) + f"\n---- operator ----\n{op.tail(25)}"
        )

    try:

        def both_up() -> bool:
            try:
                res = _api(prom_port, "/api/v1/query", query="up == 1")["result"]
            except OSError:
                return False
            return {r["metric"]["job"] for r in res} == {"vibe-operator-metrics", "vibe-agent-metrics"}

        wait_for(both_up, timeout=90, interval=1, what=f"Prometheus scraping both targets\n{logs()}")
        speeds = _api(prom_port, "/api/v1/query", query=f'vibe_gpu_relative_speed{{node="{node}"}}')["result"]
        assert len(speeds) == 8
        if time.monotonic() - started < DRIFT_AT_S - 5:  # before the drift: every GPU with its peers
            assert not _alerts(prom_port, "VibeGPUSlowerThanPeers", "pending")
            assert not _alerts(prom_port, "VibeGPUSlowerThanPeers")

        firing = wait_for(
            lambda: _alerts(prom_port, "VibeGPUSlowerThanPeers"),
            timeout=240,
            interval=2,
            what=f"VibeGPUSlowerThanPeers firing\n{logs()}",
        )
        assert [(a["labels"]["node"], a["labels"]["gpu"]) for a in firing] == [(node, "2")]
        alert = firing[0]
        assert (
            alert["labels"]["severity"] == "warning"
            and alert["labels"]["modelName"] == "NVIDIA H100 80GB HBM3"
        )
        assert f"GPU 2 on {node} is slower than its peers" == alert["annotations"]["summary"]
        assert float(alert["value"]) < 0.75  # 1/1.5 of its own speed
        assert not _alerts(prom_port, "VibeOperatorDown")

        op.stop()  # nothing answers the operator's scrape any more
        down = wait_for(
            lambda: _alerts(prom_port, "VibeOperatorDown"),
            timeout=90,
            interval=2,
            what=f"VibeOperatorDown firing\n{logs()}",
        )
        assert (
            down[0]["labels"]["namespace"] == RELEASE_NS
            and down[0]["labels"]["job"] == "vibe-operator-metrics"
        )
    finally:
        for p in (prom, agent):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        op.stop()
        client.CoreV1Api(kube).delete_namespace(profile_ns)
