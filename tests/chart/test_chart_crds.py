"""vibe's CRDs live once, in the package (vibe/crds/manifests: an installed wheel carries them for
`vibe crds apply`); the top-level crds/ and the chart's crds/ are copies of them, byte for byte.

Helm installs a chart's `crds/` directory and nothing can template it, and `kubectl apply -f crds/` wants
a plain folder, so both keep copies. This test is what keeps them in sync: after changing a CRD in
vibe/crds/manifests, `make crds` copies it over.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, CRDS, ROOT

from vibe import crds

SOURCE = ROOT / "vibe" / "crds" / "manifests"
CHART_CRDS = CHART / "crds"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("copy", [CRDS, CHART_CRDS], ids=["crds", "chart-crds"])
def test_crd_copies_are_the_package_manifests(copy: Path) -> None:
    source = _files(SOURCE)
    assert source, f"no CRDs in {SOURCE}"
    fix = (
        f"vibe/crds/manifests is the source: edit there and run `make crds`; if you edited "
        f"{copy.relative_to(ROOT)}/ instead, copy that file to vibe/crds/manifests/ first"
    )
    copied = _files(copy)
    assert sorted(copied) == sorted(source), fix
    stale = [name for name, data in copied.items() if data != source[name]]
    assert not stale, f"{copy.relative_to(ROOT)} differs from vibe/crds/manifests in {stale}; {fix}"


def test_package_reads_the_manifests() -> None:
    """What `vibe crds apply` applies is those files (read through importlib.resources)."""
    assert crds.manifest_files() == {n: d.decode() for n, d in sorted(_files(SOURCE).items())}


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
    assert names == set(crds.names())
