"""Follow the GPUs, not the ranks: remap a placement onto the engine's actual rank order.

A vibe placement is for GPUs: ``placement.json`` lists them in the placement's rank order, each with its
node and GPU index (``gpus.nodeSelector`` mode: nodes sorted by name, GPUs by index). The engine numbers
its ranks its own way: SGLang under a LeaderWorkerSet is ``node_rank * gpus_per_node + local_rank`` with
``node_rank`` = the pod's worker index, and which node worker 2 lands on is the scheduler's choice, anew
on every restart. Applying physical slot ``p`` of the placement to engine rank ``p // S`` would put the
experts sized for a fast GPU on whatever GPU got that rank.

``engine_gpus`` reads where the pods of this pod's group actually run (the LeaderWorkerSet worker-index
label; under NVIDIA Dynamo's Grove path the PodClique role and pod index, ``GROVE_PCLQ_POD_INDEX``; or the
StatefulSet pod-index label) and lists the engine's ranks as ``(node, gpu index)``,
assuming each pod drives every GPU of its node in index order (one 8-GPU pod per 8-GPU node, the
wide-EP layout); ``permute_slots`` moves each GPU's slots to the engine rank that has that GPU. All pods
of a group compute the same permutation from the same pod list, so the ranks agree. Because the
placement follows GPUs, a restart that reshuffles pods needs no new placement, and the operator (which
sees the same nodes) computes none.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from vibe.api import (
    DGD_API_GROUP,
    DGD_API_VERSION,
    DGD_PLURAL,
    DYNAMO_LABEL_COMPONENT,
    DYNAMO_LABEL_DGD_NAME,
    GROVE_ENV_PCLQ_POD_INDEX,
    GROVE_LABEL_PCLQ,
    GROVE_LABEL_PCLQ_POD_INDEX,
    GROVE_LABEL_PCSG,
    GROVE_LABEL_PCSG_REPLICA,
    GROVE_LEADER_SUFFIX,
    GROVE_WORKER_SUFFIX,
    LWS_ANNOTATION_SIZE,
    LWS_LABEL_GROUP_INDEX,
    LWS_LABEL_NAME,
    LWS_LABEL_WORKER_INDEX,
    STS_LABEL_POD_INDEX,
)
from vibe.kubeclient import as_dict
from vibe.serving.errors import ServingError

log = logging.getLogger(__name__)


def placement_gpus(placement_doc: Any) -> list[tuple[str, int]]:
    """``(node, gpu index)`` per placement rank, from ``placement.json``'s ``gpus`` list."""
    gpus = placement_doc.get("gpus") if isinstance(placement_doc, dict) else None
    if not isinstance(gpus, list) or not gpus:
        raise ServingError(
            "PlacementMismatch", "placement.json lists no gpus; cannot follow GPUs to engine ranks"
        )
    out = []
    for i, g in enumerate(gpus):
        node = g.get("node") if isinstance(g, dict) else None
        index = g.get("index", g.get("gpuIndex")) if isinstance(g, dict) else None
        gpu_id = g.get("id") if isinstance(g, dict) else None
        if (
            index is None
            and isinstance(node, str)
            and isinstance(gpu_id, str)
            and gpu_id.startswith(node + "/")
        ):
            # the operator's placement.json names a GPU "<node>/<index>" (vibe.operator.gpus.GPURef.id)
            tail = gpu_id[len(node) + 1 :]
            index = int(tail) if tail.isdigit() else None
        if not isinstance(node, str) or not isinstance(index, int):
            raise ServingError(
                "PlacementMismatch", f"placement.json gpus[{i}] needs node and index to follow GPUs"
            )
        out.append((node, index))
    if len(set(out)) != len(out):
        raise ServingError("PlacementMismatch", "placement.json lists a GPU twice")
    return out


def grove_node_rank(clique: str, pod_index: str | int | None) -> int:
    """The engine node rank Dynamo gives a pod of a Grove multinode component.

    Dynamo renders a multinode component as a PodCliqueScalingGroup replica with a leader PodClique
    (name ending ``-ldr``, one pod, node rank 0) and a worker PodClique (``-wkr``, node rank
    ``$((GROVE_PCLQ_POD_INDEX + 1))``: ``GroveMultinodeDeployer.GetNodeRank`` in Dynamo's
    ``deploy/operator/internal/dynamo/grove.go``).
    """
    try:
        index = int(pod_index) if pod_index is not None else -1
    except ValueError:
        index = -1
    if index < 0:
        raise ServingError(
            "InvalidArgument", f"Grove pod of PodClique {clique!r} has no valid pod index ({pod_index!r})"
        )
    if clique.endswith(GROVE_LEADER_SUFFIX):
        if index != 0:
            raise ServingError("InvalidArgument", f"Grove leader PodClique {clique!r} has a pod {index}")
        return 0
    if clique.endswith(GROVE_WORKER_SUFFIX):
        return index + 1
    raise ServingError(
        "InvalidArgument",
        f"PodClique {clique!r} is neither a leader (-ldr) nor a worker (-wkr) clique of a multinode"
        " component; cannot order ranks",
    )


def _label_rank(label: str) -> Callable[[Any], int]:
    return lambda pod: int((pod.metadata.labels or {})[label])


def _grove_rank(pod: Any) -> int:
    labels = pod.metadata.labels or {}
    return grove_node_rank(labels.get(GROVE_LABEL_PCLQ, ""), labels.get(GROVE_LABEL_PCLQ_POD_INDEX))


def _dgd_node_count(api: Any, namespace: str, labels: dict[str, str]) -> int:
    """``multinode.nodeCount`` of this pod's DynamoGraphDeployment component (0 when unknown)."""
    from kubernetes import client as k8s

    name, component = labels.get(DYNAMO_LABEL_DGD_NAME), labels.get(DYNAMO_LABEL_COMPONENT)
    if not name or not component:
        return 0
    try:
        dgd = as_dict(
            k8s.CustomObjectsApi(api).get_namespaced_custom_object(
                DGD_API_GROUP, DGD_API_VERSION, namespace, DGD_PLURAL, name
            )
        )
    except k8s.ApiException as e:
        log.warning("cannot read DynamoGraphDeployment %s/%s: HTTP %s", namespace, name, e.status)
        return 0
    for c in (dgd.get("spec") or {}).get("components") or []:
        if isinstance(c, dict) and c.get("name") == component:
            count = (c.get("multinode") or {}).get("nodeCount", 1)
            return count if isinstance(count, int) else 0
    return 0


def engine_gpus(
    api: Any,
    namespace: str,
    pod_name: str,
    gpus_per_pod: int,
    group_size: int | None = None,
    timeout: float = 300.0,
    poll: float = 2.0,
) -> list[tuple[str, int]]:
    """``(node, gpu index)`` per engine rank for this pod's LeaderWorkerSet group, Grove scaling-group
    replica (NVIDIA Dynamo) or StatefulSet.

    Waits until every pod of the group is scheduled. The group size is ``group_size``, else the
    LeaderWorkerSet's ``leaderworkerset.sigs.k8s.io/size`` annotation on the pod, else (Grove) the
    DynamoGraphDeployment component's ``multinode.nodeCount``, else the StatefulSet's replicas.
    """
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api)
    me = core.read_namespaced_pod(pod_name, namespace)
    selector, rank_of, size = _group_of(api, me, namespace, pod_name, group_size)
    size = group_size or size
    if size < 1:
        raise ServingError(
            "InvalidArgument", f"cannot tell the group size of pod {pod_name}; pass --group-size"
        )
    placed = _wait_scheduled(core, namespace, selector, rank_of, size, timeout, poll)
    return [(placed[w], i) for w in range(size) for i in range(gpus_per_pod)]


def _group_of(
    api: Any, me: Any, namespace: str, pod_name: str, group_size: int | None
) -> tuple[str, Callable[[Any], int], int]:
    """The label selector of pod ``me``'s group, how a pod's rank is read, and the group size the
    workload says (0: unknown; the Grove lookup is skipped when ``group_size`` is given)."""
    from kubernetes import client as k8s

    labels = me.metadata.labels or {}
    if LWS_LABEL_NAME in labels:
        group = labels.get(LWS_LABEL_GROUP_INDEX, "0")
        selector = f"{LWS_LABEL_NAME}={labels[LWS_LABEL_NAME]},{LWS_LABEL_GROUP_INDEX}={group}"
        size = int((me.metadata.annotations or {}).get(LWS_ANNOTATION_SIZE, "0"))
        return selector, _label_rank(LWS_LABEL_WORKER_INDEX), size
    if GROVE_LABEL_PCSG in labels:
        mine = _grove_rank(me)
        env_index = os.environ.get(GROVE_ENV_PCLQ_POD_INDEX)
        # Grove injects GROVE_PCLQ_POD_INDEX into every container of its pods; when this is our own pod,
        # its label (what the other pods are ranked by) must agree with it.
        ours = env_index is not None and os.environ.get("POD_NAME") == pod_name
        if ours and grove_node_rank(labels.get(GROVE_LABEL_PCLQ, ""), env_index) != mine:
            raise ServingError(
                "InvalidArgument",
                f"{GROVE_ENV_PCLQ_POD_INDEX}={env_index} disagrees with pod {pod_name}'s label"
                f" {GROVE_LABEL_PCLQ_POD_INDEX}={labels.get(GROVE_LABEL_PCLQ_POD_INDEX)}",
            )
        replica = labels.get(GROVE_LABEL_PCSG_REPLICA, "0")
        selector = f"{GROVE_LABEL_PCSG}={labels[GROVE_LABEL_PCSG]},{GROVE_LABEL_PCSG_REPLICA}={replica}"
        size = 0 if group_size else _dgd_node_count(api, namespace, labels)
        return selector, _grove_rank, size
    if STS_LABEL_POD_INDEX in labels:
        owner = next((r.name for r in me.metadata.owner_references or [] if r.kind == "StatefulSet"), None)
        if owner is None:
            raise ServingError(
                "InvalidArgument", f"pod {pod_name} has a pod-index label but no StatefulSet owner"
            )
        sts = k8s.AppsV1Api(api).read_namespaced_stateful_set(owner, namespace)
        selector = ",".join(f"{k}={v}" for k, v in sorted((sts.spec.selector.match_labels or {}).items()))
        return selector, _label_rank(STS_LABEL_POD_INDEX), int(sts.spec.replicas or 0)
    raise ServingError(
        "InvalidArgument",
        f"pod {pod_name} is neither in a LeaderWorkerSet, a Grove scaling group nor a StatefulSet;"
        " cannot order ranks",
    )


def _wait_scheduled(
    core: Any,
    namespace: str,
    selector: str,
    rank_of: Callable[[Any], int],
    size: int,
    timeout: float,
    poll: float,
) -> dict[int, str]:
    """Rank -> node of the group's pods, once ranks 0..size-1 are all scheduled (or PodsNotScheduled)."""
    deadline = time.monotonic() + timeout
    while True:
        pods = [
            p
            for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if not p.metadata.deletion_timestamp
        ]
        placed = {rank_of(p): p.spec.node_name for p in pods if p.spec.node_name}
        if len(placed) >= size and set(range(size)) <= set(placed):
            return placed
        if time.monotonic() > deadline:
            raise ServingError(
                "PodsNotScheduled",
                f"only {len(placed)} of {size} pods of the group were scheduled after {timeout:.0f}s",
            )
        time.sleep(poll)


def slot_permutation(
    placed: list[tuple[str, int]], engine: list[tuple[str, int]], slots_per_gpu: int
) -> list[int]:
    """``perm[new_slot] = old_slot``: engine rank e takes the slots of the placement rank with e's GPU."""
    if len(placed) != len(engine):
        raise ServingError(
            "PlacementMismatch", f"placement is for {len(placed)} GPUs but the engine group has {len(engine)}"
        )
    rank_of = {gpu: r for r, gpu in enumerate(placed)}
    missing = [gpu for gpu in engine if gpu not in rank_of]
    if missing:
        node, index = missing[0]
        raise ServingError(
            "PlacementMismatch",
            f"engine runs on GPU {index} of node {node}, which the placement does not cover"
            f" ({len(missing)} such GPUs): re-place for the nodes the pods run on",
        )
    return [rank_of[gpu] * slots_per_gpu + s for gpu in engine for s in range(slots_per_gpu)]
