"""``apply_crds``: server-side apply vibe's CRDs, wait until they are served, say what changed.

Role: the one way vibe installs or upgrades its CRDs, for ``vibe crds apply`` (by hand, or the chart's
pre-upgrade hook Job: Helm installs ``crds/`` once and never upgrades it) and for the tests, the demo
and the benchmarks.

Server-side apply with field manager ``vibe.api.FIELD_MANAGER_CRDS`` and ``force``: vibe owns its CRDs
wholly. A CRD first created by someone else (``helm install`` creates ``crds/`` with a plain create, a
``kubectl create``/``replace``/``edit``, an older vibe) has fields owned by those "Update" managers, and
server-side apply never removes a field another manager owns: a property or CEL rule a release drops
would linger. So before the first apply the other managers' fields are handed to vibe's manager (what
``kubectl apply --server-side`` does when it upgrades from client-side apply), and from then on a field
the new manifest lacks is removed. The caller needs get and patch on the CRDs by name, nothing else:
the Established wait reads each CRD, the "served" wait reads discovery (open to every authenticated user).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vibe import api
from vibe import crds as manifests

APPLY = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
JSON_PATCH = "application/json-patch+json"
CRD_API_VERSION = "apiextensions.k8s.io/v1"


class CrdError(RuntimeError):
    """Applying or waiting for a CRD failed; ``reason`` is a CamelCase word for the CLI's one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Change:
    """What applying one CRD did (or, with ``dry_run``, would do)."""

    name: str
    action: str  # "created", "updated" or "unchanged"
    dry_run: bool = False


def apply_crds(
    api_client: Any,
    docs: Iterable[dict[str, Any]] | None = None,
    *,
    dry_run: bool = False,
    field_manager: str = api.FIELD_MANAGER_CRDS,
    timeout: float = 60.0,
) -> list[Change]:
    """Server-side apply ``docs`` (default: the CRDs vibe ships) and wait until each is Established and
    its resources are in discovery. ``dry_run``: the API server validates and answers, nothing is
    written, nothing is awaited. Returns one ``Change`` per CRD; raises ``CrdError``."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    docs = list(manifests.documents() if docs is None else docs)
    changes = []
    for doc in docs:
        name = doc["metadata"]["name"]
        before = _call(f"reading CRD {name}", _read, ext, name)
        if before is not None and not dry_run:
            _call(f"taking over the fields of CRD {name}", _adopt, ext, before, field_manager)
        after = _call(f"applying CRD {name}", _apply, ext, doc, field_manager, dry_run)
        if before is None:
            action = "created"
        else:
            action = "unchanged" if _content(before) == _content(after) else "updated"
        changes.append(Change(name, action, dry_run))
    if not dry_run:
        _wait_served(api_client, docs, timeout)
    return changes


# ---- reading and taking over


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def _apply(ext: Any, doc: dict[str, Any], field_manager: str, dry_run: bool) -> dict[str, Any]:
    response = ext.patch_custom_resource_definition(
        doc["metadata"]["name"],
        doc,
        field_manager=field_manager,
        force=True,
        dry_run="All" if dry_run else None,
        _content_type=APPLY,
        _preload_content=False,
    )
    return _json(response)


def _read(ext: Any, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return _json(ext.read_custom_resource_definition(name, _preload_content=False))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What a person means by "the CRD changed": its spec, labels and annotations."""
    meta = obj.get("metadata") or {}
    return {"spec": obj.get("spec"), "labels": meta.get("labels"), "annotations": meta.get("annotations")}


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Union of two managedFields field sets (nested ``{"f:name": {...}}`` dicts)."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into.setdefault(key, value)


def adopted_managed_fields(obj: dict[str, Any], field_manager: str) -> list[dict[str, Any]] | None:
    """``obj``'s managedFields with every other "Update" manager's fields (the object itself, not a
    subresource such as status) merged into ``field_manager``'s Apply entry; None when none is there."""
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    others = [
        e
        for e in entries
        if e.get("operation") == "Update" and not e.get("subresource") and e.get("manager") != field_manager
    ]
    if not others:
        return None
    mine = next(
        (e for e in entries if e.get("manager") == field_manager and e.get("operation") == "Apply"), None
    )
    kept = [e for e in entries if e not in others and e is not mine]
    mine = dict(mine or {})
    mine.update(manager=field_manager, operation="Apply", apiVersion=CRD_API_VERSION, fieldsType="FieldsV1")
    fields = json.loads(json.dumps(mine.get("fieldsV1") or {}))
    for e in others:
        _merge(fields, e.get("fieldsV1") or {})
    mine["fieldsV1"] = fields
    return [*kept, mine]


def _adopt(ext: Any, obj: dict[str, Any], field_manager: str) -> None:
    entries = adopted_managed_fields(obj, field_manager)
    if entries is None:
        return
    meta = obj["metadata"]
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
        {"op": "replace", "path": "/metadata/managedFields", "value": entries},
    ]
    ext.patch_custom_resource_definition(meta["name"], patch, _content_type=JSON_PATCH)


def _call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args)
    except ApiException as e:
        reason = {403: "Forbidden", 422: "Invalid", 409: "Conflict"}.get(e.status or 0, "ApiError")
        try:
            detail = json.loads(e.body or "").get("message", e.body)
        except (TypeError, ValueError):
            detail = e.body or e.reason
        raise CrdError(reason, f"{what}: {e.status} {detail}") from None
    except HTTPError as e:
        raise CrdError("Unreachable", f"{what}: {e}") from None


# ---- waiting


def _is_established(ext: Any, name: str) -> bool:
    conds = ((_read(ext, name) or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conds)


def _discovered(custom: Any, group: str, version: str, plural: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        found = _json(custom.get_api_resources(group, version, _preload_content=False))
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return any(r.get("name") == plural for r in found.get("resources") or ())


def _wait_served(api_client: Any, docs: list[dict[str, Any]], timeout: float) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout
    for doc in docs:
        name, spec = doc["metadata"]["name"], doc["spec"]
        checks: list[tuple[str, Callable[..., bool], tuple[Any, ...]]] = [
            (f"CRD {name} Established", _is_established, (ext, name))
        ]
        for v in spec["versions"]:
            if v.get("served", True):
                ref = (spec["group"], v["name"], spec["names"]["plural"])
                checks.append((f"{'/'.join(ref)} served", _discovered, (custom, *ref)))
        for what, check, args in checks:
            while not _call(f"waiting for {what}", check, *args):
                if time.monotonic() > deadline:
                    raise CrdError("Timeout", f"timed out after {timeout:.0f}s waiting for {what}")
                time.sleep(0.2)
