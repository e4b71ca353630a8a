"""``apply_crds``: install the repository's CRDs into a local control plane and wait until they are served.

Role: the tests and ``benchmarks/operator_scale.py`` run the operator against the local control plane
without the Helm chart, so they install ``crds/`` themselves (the demo installs them with the chart).
The CRDs are read from the source checkout (``crds/`` next to ``vibe/``), like the chart the demo uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vibe import api
from vibe.cluster.waiting import wait_for

#: The project's CRDs (the repository's crds/, next to vibe/).
CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


def apply_crds(api_client: Any, crds_dir: Path = CRDS_DIR) -> None:
    """Create or update every CRD in ``crds_dir`` and wait until the API serves them."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    if not any(crds_dir.glob("*.yaml")):
        raise FileNotFoundError(f"no CRDs in {crds_dir}: run from a source checkout of vibe")
    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(crds_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            name = doc["metadata"]["name"]
            names.append(name)
            try:
                ext.create_custom_resource_definition(doc)
            except ApiException as e:
                if e.status != 409:
                    raise
                cur = ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = cur.metadata.resource_version
                ext.replace_custom_resource_definition(name, doc)

    def established() -> bool:
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                return False
        return True

    wait_for(established, timeout=30, what="CRDs established")
    # Discovery can lag the Established condition by a moment; wait until a list works.
    custom = client.CustomObjectsApi(api_client)
    wait_for(lambda: _lists(custom), timeout=30, what=f"{api.GROUP} resources served")


def _lists(custom: Any) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.MOEDEPLOYMENT_PLURAL, limit=1)
        custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.GPUPROFILE_PLURAL, limit=1)
        return True
    except ApiException:
        return False
