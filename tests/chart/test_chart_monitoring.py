"""Alerts and the dashboard: valid PromQL, on metrics the code really exports, each alert documented.

The alert expressions and dashboard queries are parsed with a PromQL parser (a syntax error fails here,
not in Prometheus), and every metric they name must be defined by a prometheus_client metric in the
vibe package, so a renamed metric cannot silently leave an alert that never fires.
"""

from __future__ import annotations

import re

import pytest
from chart_helpers import (
    CHART,
    MONITORING_APIS,
    ROOT,
    VALUES_DIR,
    Helm,
    defined_metrics,
    grafana_to_promql,
    load_json,
    one,
    promql_metric_names,
)

DOCS = ROOT / "docs" / "operations.md"
DASHBOARD = CHART / "files" / "dashboards" / "vibe.json"
# Series Prometheus makes itself (not exported by vibe).
BUILTIN = {"up"}
EXPECTED_ALERTS = {
    "VibeGPUSlowerThanPeers",
    "VibeGPUProfileStale",
    "VibeAgentDown",
    "VibePlacementImbalanceHigh",
    "VibePlacementNotReady",
    "VibeReconcileErrors",
    "VibeOperatorDown",
}


@pytest.fixture(scope="module")
def rules(helm: Helm) -> list[dict]:
    objs = helm.template(api_versions=MONITORING_APIS)
    rule = one(objs, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def _doc_sections() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^### (\S+)\s*$", DOCS.read_text(), re.MULTILINE)}


def test_every_alert_is_there(rules: list[dict]) -> None:
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS


def test_alerts_parse_and_use_exported_metrics(rules: list[dict]) -> None:
    exported = defined_metrics() | BUILTIN
    for r in rules:
        names = promql_metric_names(r["expr"])
        assert names, r["alert"]
        assert names <= exported, f"{r['alert']} uses {sorted(names - exported)}, which nothing exports"


def test_alerts_are_documented(rules: list[dict]) -> None:
    sections = _doc_sections()
    for r in rules:
        a = r["annotations"]
        assert a["summary"] and a["description"], r["alert"]
        assert re.fullmatch(r"docs/operations\.md, section Vibe\w+", a["runbook"]), a["runbook"]
        section = a["runbook"].rsplit(" ", 1)[1]
        assert section in sections, f"{r['alert']}: no section '### {section}' in docs/operations.md"
        assert r["labels"]["severity"] in ("warning", "critical")
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["for"]
    # And every documented alert exists.
    assert {s for s in sections if s.startswith("Vibe")} <= {r["alert"] for r in rules}


def test_alert_values_are_applied(helm: Helm) -> None:
    objs = helm.template(files=[VALUES_DIR / "full.yaml"])
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "VibeReconcileErrors" not in by_name  # disabled in full.yaml
    slow = by_name["VibeGPUSlowerThanPeers"]
    assert slow["for"] == "5m" and "0.9 * quantile" in slow["expr"]
    assert slow["labels"] == {"severity": "warning", "team": "ml-platform"}
    assert slow["annotations"]["runbook_url"] == "https://runbooks.example/vibe#vibegpuslowerthanpeers"
    assert 'job="vibe-moe-operator-metrics"' in by_name["VibeOperatorDown"]["expr"]


def test_dashboard_queries(helm: Helm) -> None:
    dash = load_json(DASHBOARD)
    exported = defined_metrics()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    titles = {p["title"] for p in panels}
    for want in ("Per-GPU speed", "Drift decisions", "Imbalance", "Gain vs baseline over time"):
        assert want in titles
    for p in panels:
        assert p["description"], p["title"]
        for t in p["targets"]:
            names = promql_metric_names(grafana_to_promql(t["expr"]))
            assert names <= exported, f"panel {p['title']!r} uses {sorted(names - exported)}"
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"]["query"])
            assert inner, var
            assert promql_metric_names(grafana_to_promql(inner.group(1))) <= exported
    # Panels do not overlap on Grafana's 24-column grid.
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))


def test_metrics_named_in_the_docs_exist() -> None:
    named = set(re.findall(r"`(vibe_[a-z0-9_]+)", DOCS.read_text()))
    assert len(named) > 10
    exported = defined_metrics()
    # A histogram is documented by its family name; its series are <name>_bucket, _sum, _count.
    unknown = [n for n in named if n not in exported and f"{n}_bucket" not in exported]
    assert not unknown, sorted(unknown)
