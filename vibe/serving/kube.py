"""The few Kubernetes calls the serving helpers make, behind plain functions.

Everything here takes an ``ApiClient`` (from ``client()``, or a test fixture) and imports the Kubernetes
client lazily, so the init container's file-only path never needs it. The generated client in use picks
the *first* patch content type it knows (``json-patch+json``) unless told otherwise, so every patch
below passes ``_content_type`` explicitly:

* ``apply_configmap``: server-side apply (``application/apply-patch+yaml``, JSON is YAML), with a field
  manager of its own, so the loads writer owns its keys and nothing else;
* ``restart_workload``: a merge/strategic patch of the pod template's annotation, guarded by the
  object's ``resourceVersion`` and by the never-backwards rule on the annotation itself, so N pods'
  sidecars racing to restart the same workload patch it once. For an NVIDIA Dynamo
  ``DynamoGraphDeployment`` the patch goes to the DGD's worker components' ``podTemplate`` (Dynamo
  owns, and reverts edits to, the LeaderWorkerSets and PodCliques it generates);
* ``emit_event``: a core/v1 Event on the pod (or the ConfigMap), what ``kubectl describe`` shows.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from typing import Any

from vibe import contract
from vibe.api import (
    DGD_API_GROUP,
    DGD_API_VERSION,
    DGD_KIND,
    DGD_PLURAL,
    DGD_WORKER_TYPES,
    DYNAMO_LABEL_COMPONENT,
    DYNAMO_LABEL_DGD_NAME,
    LWS_API_GROUP,
    LWS_API_VERSION,
    LWS_LABEL_NAME,
    LWS_PLURAL,
)
from vibe.contract import ANNOTATION_PLACEMENT_GENERATION
from vibe.kubeclient import as_dict
from vibe.serving.errors import ServingError

log = logging.getLogger(__name__)

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "LeaderWorkerSet", DGD_KIND)
#: Custom resources: kind -> (group, version, plural); patched with a JSON merge patch.
_CUSTOM = {
    "LeaderWorkerSet": (LWS_API_GROUP, LWS_API_VERSION, LWS_PLURAL),
    DGD_KIND: (DGD_API_GROUP, DGD_API_VERSION, DGD_PLURAL),
}


def client(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> Any:
    """An ``ApiClient``: in-cluster config when running in a pod, else the kubeconfig (and its context)."""
    from vibe.kubeclient import CredentialsError, api_client

    try:
        return api_client(None if kubeconfig is None else str(kubeconfig), context=context)
    except CredentialsError as e:
        raise ServingError("NoCredentials", str(e)) from None


def _api_error(e: Exception, what: str) -> ServingError:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None) or type(e).__name__
    return ServingError("ApplyFailed", f"{what}: HTTP {status} {reason}".strip())


def read_configmap(api: Any, namespace: str, name: str) -> tuple[dict[str, str], dict[str, str], str]:
    """``(data, annotations, resourceVersion)`` of a ConfigMap; raises if it does not exist."""
    from kubernetes import client as k8s

    try:
        cm = k8s.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    except k8s.ApiException as e:
        if e.status == 404:
            raise ServingError(
                "MissingPlacement", f"ConfigMap {namespace}/{name} does not exist (yet)"
            ) from None
        raise _api_error(e, f"reading ConfigMap {namespace}/{name}") from None
    meta = cm.metadata
    return dict(cm.data or {}), dict(meta.annotations or {}), str(meta.resource_version or "")


def apply_configmap(
    api: Any,
    namespace: str,
    name: str,
    data: dict[str, str],
    field_manager: str,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """Server-side apply of ``data`` (and annotations/labels) into a ConfigMap, creating it if needed."""
    from kubernetes import client as k8s

    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = annotations
    if labels:
        metadata["labels"] = labels
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
    try:
        k8s.CoreV1Api(api).patch_namespaced_config_map(
            name,
            namespace,
            body,
            field_manager=field_manager,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    except k8s.ApiException as e:
        raise _api_error(e, f"applying ConfigMap {namespace}/{name}") from None


def _dgd_components(obj: dict, component: str | None) -> list[int]:
    """Indices in ``spec.components`` of the DGD components to roll: ``component``, else every engine one."""
    components = (obj.get("spec") or {}).get("components") or []
    name = (obj.get("metadata") or {}).get("name")
    if component:
        found = [i for i, c in enumerate(components) if isinstance(c, dict) and c.get("name") == component]
        if not found:
            raise ServingError("ApplyFailed", f"{DGD_KIND} {name} has no component {component!r}")
        return found
    found = [i for i, c in enumerate(components) if isinstance(c, dict) and c.get("type") in DGD_WORKER_TYPES]
    if not found:
        raise ServingError(
            "ApplyFailed",
            f"{DGD_KIND} {name} has no component of type {'/'.join(DGD_WORKER_TYPES)} to restart",
        )
    return found


def _template_paths(kind: str, obj: dict, component: str | None = None) -> list[list[str]]:
    """Where the pod templates of a workload object live."""
    if kind == DGD_KIND:
        return [["spec", "components", str(i), "podTemplate"] for i in _dgd_components(obj, component)]
    if kind == "LeaderWorkerSet":
        lwt = (obj.get("spec") or {}).get("leaderWorkerTemplate") or {}
        paths = [["spec", "leaderWorkerTemplate", "workerTemplate"]]
        if lwt.get("leaderTemplate"):  # absent: the leader uses workerTemplate; never create a bare one
            paths.insert(0, ["spec", "leaderWorkerTemplate", "leaderTemplate"])
        return paths
    return [["spec", "template"]]


def _get_path(obj: Any, path: list[str]) -> dict:
    for key in path:
        obj = (obj[int(key)] if isinstance(obj, list) else (obj or {}).get(key)) or {}
    return obj


def _read_workload(api: Any, namespace: str, kind: str, name: str) -> dict:
    from kubernetes import client as k8s

    try:
        if kind in _CUSTOM:
            group, version, plural = _CUSTOM[kind]
            custom = k8s.CustomObjectsApi(api)
            return as_dict(custom.get_namespaced_custom_object(group, version, namespace, plural, name))
        apps = k8s.AppsV1Api(api)
        reader = {
            "Deployment": apps.read_namespaced_deployment,
            "StatefulSet": apps.read_namespaced_stateful_set,
            "DaemonSet": apps.read_namespaced_daemon_set,
        }[kind]
        return api.sanitize_for_serialization(reader(name, namespace))
    except k8s.ApiException as e:
        raise _api_error(e, f"reading {kind} {namespace}/{name}") from None


def _patch_workload(api: Any, namespace: str, kind: str, name: str, body: dict) -> None:
    from kubernetes import client as k8s

    if kind in _CUSTOM:
        group, version, plural = _CUSTOM[kind]
        k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
            group, version, namespace, plural, name, body, _content_type="application/merge-patch+json"
        )
        return
    apps = k8s.AppsV1Api(api)
    patcher = {
        "Deployment": apps.patch_namespaced_deployment,
        "StatefulSet": apps.patch_namespaced_stateful_set,
        "DaemonSet": apps.patch_namespaced_daemon_set,
    }[kind]
    patcher(name, namespace, body, _content_type="application/strategic-merge-patch+json")


def restart_workload(
    api: Any,
    namespace: str,
    kind: str,
    name: str,
    generation: int,
    uid: str | None = None,
    attempts: int = 5,
) -> bool:
    """Set the pod templates' ``vibe.dev/placement-generation`` to ``generation`` (a rolling restart),
    written as ``contract.template_value(generation, uid)``.

    ``name`` of a ``DynamoGraphDeployment`` may name one component, ``dgd/component``; without it every
    worker/prefill/decode component rolls.

    Returns:
        True if this call changed the workload; False if it already had this or a newer generation of
        the same MoEDeployment object (another UID's generations are not comparable: the caller decided
        this one supersedes it).
    Raises:
        ServingError(ApplyFailed): the workload cannot be read or patched (RBAC, missing, conflicts).
    """
    from kubernetes import client as k8s

    if kind not in WORKLOAD_KINDS:
        raise ServingError(
            "InvalidArgument", f"cannot restart a {kind}; use one of {', '.join(WORKLOAD_KINDS)}"
        )
    name, _, component = name.partition("/") if kind == DGD_KIND else (name, "", "")
    for _ in range(attempts):
        obj = _read_workload(api, namespace, kind, name)
        paths = _template_paths(kind, obj, component or None)
        current = []
        for path in paths:
            value = (_get_path(obj, [*path, "metadata", "annotations"]) or {}).get(
                ANNOTATION_PLACEMENT_GENERATION
            )
            try:
                parsed = contract.parse_template_value(value, ANNOTATION_PLACEMENT_GENERATION)
            except ValueError:
                parsed = None
            same_object = parsed is not None and (parsed[1] is None or uid is None or parsed[1] == uid)
            current.append(parsed[0] if parsed is not None and same_object else -1)
        if min(current) >= generation:
            return False  # another pod's sidecar (or a newer placement) got there first
        body: dict[str, Any] = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}}
        value = contract.template_value(generation, uid)
        if kind == DGD_KIND:
            # spec.components is a list: a merge patch replaces it whole, so send the list as read (the
            # resourceVersion guarantees nobody changed it since) with the annotation set.
            components = obj["spec"]["components"]
            for path in paths:
                template = components[int(path[2])].setdefault("podTemplate", {})
                meta = template.setdefault("metadata", {})
                meta.setdefault("annotations", {})[ANNOTATION_PLACEMENT_GENERATION] = value
            body["spec"] = {"components": components}
        else:
            for path in paths:
                node = body
                for key in path:
                    node = node.setdefault(key, {})
                node["metadata"] = {"annotations": {ANNOTATION_PLACEMENT_GENERATION: value}}
        try:
            _patch_workload(api, namespace, kind, name, body)
            return True
        except k8s.ApiException as e:
            if e.status == 409:  # someone else changed it since we read it: read again
                time.sleep(0.2)
                continue
            raise _api_error(e, f"patching {kind} {namespace}/{name}") from None
    raise ServingError(
        "ApplyFailed", f"{kind} {namespace}/{name} kept changing; gave up after {attempts} tries"
    )


def discover_workload(api: Any, namespace: str, pod_name: str) -> tuple[str, str]:
    """``(kind, name)`` of the workload owning a pod: DynamoGraphDeployment (``name/component``),
    LeaderWorkerSet, StatefulSet, Deployment, DaemonSet."""
    from kubernetes import client as k8s

    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    try:
        pod = core.read_namespaced_pod(pod_name, namespace)
    except k8s.ApiException as e:
        raise _api_error(e, f"reading pod {namespace}/{pod_name}") from None
    labels = pod.metadata.labels or {}
    if DYNAMO_LABEL_DGD_NAME in labels:  # before LWS: Dynamo reverts edits to the LWS it generates
        component = labels.get(DYNAMO_LABEL_COMPONENT)
        name = labels[DYNAMO_LABEL_DGD_NAME]
        return DGD_KIND, f"{name}/{component}" if component else name
    if LWS_LABEL_NAME in labels:
        return "LeaderWorkerSet", labels[LWS_LABEL_NAME]
    for ref in pod.metadata.owner_references or []:
        if ref.kind in ("StatefulSet", "DaemonSet"):
            return ref.kind, ref.name
        if ref.kind == "ReplicaSet":
            try:
                rs = apps.read_namespaced_replica_set(ref.name, namespace)
            except k8s.ApiException as e:
                raise _api_error(e, f"reading ReplicaSet {namespace}/{ref.name}") from None
            for owner in rs.metadata.owner_references or []:
                if owner.kind == "Deployment":
                    return "Deployment", owner.name
    raise ServingError(
        "InvalidArgument",
        f"pod {namespace}/{pod_name} has no Deployment/StatefulSet/LeaderWorkerSet owner; pass --target",
    )


def emit_event(
    api: Any,
    namespace: str,
    involved: dict[str, str],
    reason: str,
    message: str,
    type_: str = "Normal",
    component: str = "vibe-serving",
) -> None:
    """Create a core/v1 Event about ``involved`` (``kind``, ``name``, ``api_version``, ``uid``)."""
    from kubernetes import client as k8s

    now = dt.datetime.now(dt.timezone.utc)
    event = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(name=f"{involved['name']}.{time.time_ns():x}", namespace=namespace),
        involved_object=k8s.V1ObjectReference(namespace=namespace, **involved),
        reason=reason,
        message=message[:1024],
        type=type_,
        source=k8s.V1EventSource(component=component, host=os.environ.get("NODE_NAME")),
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        reporting_component=component,
        reporting_instance=os.environ.get("POD_NAME", component),
    )
    try:
        k8s.CoreV1Api(api).create_namespaced_event(namespace, event)
    except k8s.ApiException as e:  # an Event is best effort: the log line already says it
        log.warning(
            "could not record Event %s on %s/%s: HTTP %s",
            reason,
            involved.get("kind"),
            involved["name"],
            e.status,
        )
