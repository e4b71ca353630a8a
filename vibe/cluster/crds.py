"""``apply_crds`` for the local control plane: the tests and ``benchmarks/operator_scale.py`` run the
operator without the Helm chart, so they install vibe's CRDs themselves (the demo installs them with
the chart).

Role: a name kept where the tests and benchmarks import it. The one implementation is
``vibe.crds.apply.apply_crds`` (what ``vibe crds apply`` runs): server-side apply of the CRDs shipped in
the package (``vibe/crds/manifests``), then a wait until they are served.
"""

from __future__ import annotations

from vibe.crds.apply import apply_crds

__all__ = ["apply_crds"]
