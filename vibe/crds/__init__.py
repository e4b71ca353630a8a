"""vibe's CustomResourceDefinitions, shipped inside the package, and the names they define.

Role: the one place a running vibe (the operator image's ``vibe crds apply``, the tests, the demo) reads
the CRDs from, so an installed wheel carries them: ``vibe/crds/manifests/*.yaml`` is package data.
The repository's ``crds/`` (for ``kubectl apply -f crds/``) and the chart's ``charts/vibe/crds/`` (which
Helm installs on first install and never upgrades) are byte-for-byte copies of these files; edit here,
then ``make crds`` copies them over, and ``tests/chart/test_chart_crds.py`` fails while any copy differs.

``vibe.crds.apply`` server-side-applies them; ``vibe.crds.cli`` is ``vibe crds apply``. Standard
library and PyYAML only.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

#: The package (``importlib.resources``) folder that holds the manifests.
MANIFESTS = "manifests"


def manifest_files() -> dict[str, str]:
    """File name -> text of every CRD manifest shipped with vibe, sorted by name."""
    folder = resources.files(__name__).joinpath(MANIFESTS)
    files = {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir() if p.name.endswith(".yaml")}
    if not files:
        raise FileNotFoundError(f"no CRD manifests in {folder}: a broken vibe install (package data missing)")
    return dict(sorted(files.items()))


def documents() -> list[dict[str, Any]]:
    """Every CustomResourceDefinition vibe ships, as the dicts the API server takes."""
    return [doc for text in manifest_files().values() for doc in yaml.safe_load_all(text) if doc]


def names() -> list[str]:
    """The CRDs' names (``<plural>.<group>``), in manifest order."""
    return [doc["metadata"]["name"] for doc in documents()]
