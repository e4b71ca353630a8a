"""The chart's CRDs are the top-level crds/, byte for byte.

Helm installs a chart's `crds/` directory and nothing can template it, so the chart keeps copies. This
test is what keeps them in sync: after changing a CRD, copy it over (`cp crds/*.yaml charts/vibe/crds/`).
"""

from __future__ import annotations

import yaml
from chart_helpers import CHART, CRDS

CHART_CRDS = CHART / "crds"


def test_chart_crds_are_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in CHART_CRDS.iterdir()}
    assert top, "no CRDs in crds/"
    fix = "run: cp crds/*.yaml charts/vibe/crds/ (and remove files deleted from crds/)"
    assert sorted(chart) == sorted(top), fix
    stale = [name for name in top if chart[name] != top[name]]
    assert not stale, f"charts/vibe/crds differs from crds/ in {stale}; {fix}"


def test_chart_crds_are_crds() -> None:
    names = set()
    for path in CHART_CRDS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "CustomResourceDefinition", path
            assert doc["apiVersion"] == "apiextensions.k8s.io/v1", path
            names.add(doc["metadata"]["name"])
    assert {
        "moedeployments.vibe.dev",
        "gpuprofiles.vibe.dev",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    } <= names
