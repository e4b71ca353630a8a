"""Narrow watches: the serving pods one podSelector matches, one load ConfigMap by name.

Role: what wakes a MoEDeployment's worker when a pod or load ConfigMap it depends on changes, without
the operator watching every Pod and ConfigMap in the cluster (which cost 15-38 % of a core under churn
of unrelated pods, and read every ConfigMap's data). Each reconcile declares what its deployment
depends on (``want``); this module keeps one server-side filtered watch per distinct need, shared by the
deployments that have it, and stops it when none has:

* ``("pods", namespace, selector)``: pods of the deployment's ``gpus.podSelector`` (a label selector:
  the API server filters, so unrelated pods cost nothing);
* ``("configmap", namespace, name)``: the one load ConfigMap (field selector ``metadata.name``).

A watch lists first (recording what it saw), then watches from that resourceVersion, re-listing after
``410 Gone``; it wakes its deployments only when what matters changed (a pod's node, rank or labels; a
ConfigMap's data), not on status churn. The reconciler reads the objects itself (a GET, a filtered
list), so a watch is only an alarm clock: a missed event costs at most one resync. Watches run in
daemon threads with the synchronous client (blocking streams), and say an API refusal (403: RBAC) once
per status code, then back off, instead of logging a traceback per retry.

``want`` runs on the event loop but ``drop`` also runs in Kopf's thread pool (the synchronous DELETED
handler), so the bookkeeping (``by_key``, ``threads``) is guarded by one lock and read from snapshots:
without it a mass delete raced a reconcile's ``want`` ("dictionary changed size during iteration").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from vibe.operator.gpus import pod_snapshot
from vibe.operator.spec import fingerprint, plain

logger = logging.getLogger("vibe.operator")

Need = tuple[str, str, str]  # (kind, namespace, name or selector)
Key = tuple[str, str]  # a MoEDeployment's (namespace, name)

#: Seconds a watch request lasts before it is renewed (bounds how long a stopped watch lingers).
WATCH_TIMEOUT_S = 60


def selector_string(selector: Mapping[str, Any]) -> str:
    """A metav1.LabelSelector (matchLabels, matchExpressions) as a label selector query string."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or ():
        key, op, values = e.get("key"), e.get("operator"), sorted(e.get("values") or ())
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def pods_need(namespace: str, selector: Mapping[str, Any]) -> Need:
    return ("pods", namespace, selector_string(selector))


def config_map_need(namespace: str, name: str) -> Need:
    return ("configmap", namespace, name)


class Watches:
    """The narrow watches wanted by the deployments, started and stopped as their needs change."""

    def __init__(self, api: client.ApiClient, wake: Callable[[Key], None]) -> None:
        self.core = client.CoreV1Api(api)
        self.wake = wake
        self.loop: Any = None  # the event loop to wake workers on (set by the first ``want``)
        self.by_key: dict[Key, frozenset[Need]] = {}
        self.threads: dict[Need, _Watch] = {}
        self.lock = threading.Lock()  # guards by_key and threads (want: event loop; drop: Kopf's threads)

    def want(self, key: Key, needs: Iterable[Need]) -> None:
        """``key`` depends on exactly ``needs`` now (call from the event loop)."""
        import asyncio

        self.loop = self.loop or asyncio.get_running_loop()
        new = frozenset(needs)
        with self.lock:
            if self.by_key.get(key, frozenset()) == new:
                return
            self.by_key[key] = new
            self._sync()

    def drop(self, key: Key) -> None:
        """``key`` depends on nothing now (from the event loop or any thread)."""
        with self.lock:
            if self.by_key.pop(key, None) is not None:
                self._sync()

    def keys_of(self, need: Need) -> list[Key]:
        with self.lock:
            return [k for k, needs in self.by_key.items() if need in needs]

    def close(self) -> None:
        with self.lock:
            for w in self.threads.values():
                w.stop.set()
            self.threads.clear()

    def _sync(self) -> None:
        """Start the watches wanted and stop the others (the caller holds ``lock``)."""
        wanted = set().union(*self.by_key.values()) if self.by_key else set()
        for need in [n for n in self.threads if n not in wanted]:
            self.threads.pop(need).stop.set()
        for need in wanted - set(self.threads):
            self.threads[need] = _Watch(self, need)
            self.threads[need].start()

    def _fire(self, need: Need) -> None:
        for key in self.keys_of(need):
            self.wake(key)

    def fire_threadsafe(self, need: Need) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._fire, need)


class _Watch(threading.Thread):
    def __init__(self, owner: Watches, need: Need) -> None:
        super().__init__(daemon=True, name=f"watch-{need[0]}-{need[1]}")
        self.owner = owner
        self.need = need
        self.stop = threading.Event()
        self.marks: dict[str, Any] | None = None
        self.refused: set[int] = set()

    def _call_args(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        kind, namespace, what = self.need
        core = self.owner.core
        if kind == "pods":
            return core.list_namespaced_pod, {"namespace": namespace, "label_selector": what}
        return core.list_namespaced_config_map, {
            "namespace": namespace,
            "field_selector": f"metadata.name={what}",
        }

    def _mark(self, obj: Mapping[str, Any]) -> Any:
        if self.need[0] == "pods":
            snap = pod_snapshot(obj)
            return "not-serving" if snap is None else [snap.node, list(snap.rank), plain(dict(snap.labels))]
        return fingerprint([plain(obj.get("data") or {}), plain(obj.get("binaryData") or {})])

    def run(self) -> None:
        backoff = 1.0
        rv: str | None = None
        fn, kwargs = self._call_args()
        while not self.stop.is_set():
            try:
                if rv is None:
                    rsp = fn(**kwargs, _preload_content=False)
                    listed = json.loads(rsp.data)
                    marks = {i["metadata"]["name"]: self._mark(i) for i in listed.get("items") or ()}
                    if self.marks is not None and marks != self.marks:
                        self.owner.fire_threadsafe(self.need)
                    self.marks = marks
                    rv = listed["metadata"].get("resourceVersion")
                rv = self._stream(fn, kwargs, rv)
                backoff = 1.0
            except ApiException as e:
                if e.status == 410:
                    rv = None
                    continue
                self._refused(e)
                self.stop.wait(backoff)
                backoff = min(60.0, backoff * 2)
            except Exception as e:  # connection reset, API server restarting: retry quietly
                logger.debug("watch %s: %s; retrying in %.0f s", self.need, e, backoff)
                self.stop.wait(backoff)
                backoff = min(60.0, backoff * 2)

    def _stream(self, fn: Callable[..., Any], kwargs: dict[str, Any], rv: str | None) -> str | None:
        """Watch from ``rv`` until the request times out; the resourceVersion to continue from."""
        w = watch.Watch()
        marks = self.marks if self.marks is not None else {}
        started = time.monotonic()
        for ev in w.stream(
            fn, **kwargs, resource_version=rv, timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True
        ):
            if self.stop.is_set():
                w.stop()
                break
            obj = ev.get("raw_object") or {}
            kind = ev.get("type")
            if kind == "ERROR":
                if obj.get("code") == 410:
                    return None
                raise ApiException(status=obj.get("code"), reason=obj.get("message"))
            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
            if kind == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            mark = None if kind == "DELETED" else self._mark(obj)
            if marks.get(name) != mark:
                self.owner.fire_threadsafe(self.need)
            if mark is None:
                marks.pop(name, None)
            else:
                marks[name] = mark
        if time.monotonic() - started < 1.0:
            self.stop.wait(1.0)  # a stream that ends at once (server closing it): do not spin
        return rv

    def _refused(self, e: ApiException) -> None:
        if e.status not in self.refused:
            self.refused.add(int(e.status or 0))
            kind, namespace, what = self.need
            hint = "RBAC? see docs/operations.md" if e.status == 403 else "the API server refused the request"
            logger.error(
                "cannot watch %s %r in namespace %s: %s %s (%s); backing off, said once",
                kind, what, namespace, e.status, e.reason, hint,
            )  # fmt: skip
