"""GitOps on the local control plane: the examples apply cleanly and idempotently, CRDs upgrade in place.

What a GitOps tool does is `kubectl apply` (or its server-side twin) of the same files, again and again,
and a diff against what is live. Applying the examples twice must change nothing the second time, and a
diff must find nothing; the documented CRD upgrade command must be idempotent too. (That the operator
never writes spec is checked with the operator running, in test_chart_cluster.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import CHART, ROOT, kubectl

from vibe import api

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_crd_upgrade_command_is_idempotent(cluster: Any) -> None:
    # docs/operations.md, "Upgrading", step 1.
    for _ in range(2):
        kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    out = kubectl(cluster, "get", "crd", "-o", "name").stdout
    for name in ("moedeployments.vibe.dev", "gpuprofiles.vibe.dev", "kopfpeerings.kopf.dev"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{name}" in out


@pytest.mark.parametrize("server_side", [False, True], ids=["client-side", "server-side"])
def test_examples_apply_idempotently(cluster: Any, namespace: str, server_side: bool) -> None:
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    assert EXAMPLES
    mode = ["--server-side"] if server_side else []
    args = ["apply", *mode, "-n", namespace, *[a for p in EXAMPLES for a in ("-f", str(p))]]
    first = kubectl(cluster, *args).stdout.splitlines()
    assert len(first) == len(EXAMPLES) and all(
        line.endswith(" created") or line.endswith(" serverside-applied") for line in first
    ), first
    second = kubectl(cluster, *args).stdout.splitlines()
    want = "serverside-applied" if server_side else "unchanged"
    assert all(line.endswith(f" {want}") for line in second), second
    diff = kubectl(cluster, "diff", *mode, "-n", namespace, *args[len(mode) + 3 :], check=False)
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout + diff.stderr
    got = kubectl(cluster, "get", api.MOEDEPLOYMENT_PLURAL, "-n", namespace, "-o", "name").stdout.split()
    assert len(got) == len(EXAMPLES)
