"""The loads exporter: an engine's statistics -> the load ConfigMap (or a file).

Role: the body of ``vibe serving export-loads`` (a Job for one dump, a sidecar for a running engine),
free of Typer so it can be tested and reused. ``Exporter.publish`` turns one dump (an SGLang recorder
file, a TensorRT-LLM statistics directory: the engine record's ``loads`` reader in ``vibe.engines``)
into the loads document and writes it; ``Exporter.follow`` polls SGLang: start recording, wait
``interval``, dump, publish, delete the dump, and again. An engine that restarted forgets that it was
recording: a failed window is logged and recording starts afresh after a pause, so the sidecar never
dies with its engine. A window with fewer than ``min_passes`` forward passes (an idle engine) is not
published: the last real profile stays.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vibe import api
from vibe.engines import get
from vibe.engines.loads import loads_document
from vibe.serving import kube, loads
from vibe.serving.errors import ServingError, engine_errors

log = logging.getLogger("vibe.serving")

#: Seconds to wait after a failed window before recording again (at most; ``interval`` if shorter).
RETRY_S = 30.0


@dataclass(frozen=True)
class Exporter:
    """Where one window's loads go, and how a dump becomes loads.

    ``engine``: the format whose statistics the dumps are (``vibe.engines``: ``sglang``, ``trtllm``);
    ``steps``, ``first_moe_layer``, ``moe_layers``: as ``vibe.engines.loads.to_loads``; ``assignment``:
    the engine's load-balancer file, to fold per-slot counts back to experts. ``output``: a file to write
    the document to; ``configmap`` (in ``namespace``, under ``key``, through ``api``): the ConfigMap to
    server-side apply it to. Either or both.
    """

    output: Path | None = None
    configmap: str | None = None
    namespace: str | None = None
    key: str = "loads.json"
    api: Any = None
    steps: int | None = None
    first_moe_layer: int | None = None
    moe_layers: int | None = None
    min_passes: int = 100
    engine: str = "sglang"
    assignment: Path | None = None

    def __post_init__(self) -> None:
        with engine_errors():
            if get(self.engine).loads is None:
                raise ServingError("InvalidArgument", f"format {self.engine!r} has no statistics reader")
        if not self.configmap and not self.output:
            raise ServingError("InvalidArgument", "give --configmap and/or --output")
        if self.configmap and (not self.namespace or self.api is None):
            raise ServingError("InvalidArgument", "--namespace (or POD_NAMESPACE) is needed with --configmap")

    def publish(self, dump: Path, *, window: bool = False) -> bool:
        """Write the loads of ``dump``; False (nothing written) for an idle ``window`` of the engine."""
        reader = get(self.engine).loads
        assert reader is not None
        with engine_errors():
            result = reader(
                dump,
                steps=self.steps,
                first_moe_layer=self.first_moe_layer,
                moe_layers=self.moe_layers,
                assignment=self.assignment,
            )
        if window and result.passes is not None and result.passes < self.min_passes:
            log.info("window had %d forward passes (< %d); not publishing", result.passes, self.min_passes)
            return False
        doc = loads_document(result)
        if self.output:
            self.output.write_text(doc + "\n", encoding="utf-8")
        if self.configmap and self.namespace:
            annotations = {api.ANNOTATION_LOADS_SOURCE: get(self.engine).loads_source}
            if result.passes is not None:
                annotations[api.ANNOTATION_LOADS_FORWARD_PASSES] = str(result.passes)
            kube.apply_configmap(
                self.api,
                self.namespace,
                self.configmap,
                {self.key: doc},
                api.FIELD_MANAGER_LOADS,
                annotations,
            )
        log.info(
            "loads %dx%d (dropped %d dense layers, %s passes) -> %s",
            *result.loads.shape,
            result.dropped_layers,
            result.passes,
            f"{self.namespace}/{self.configmap}:{self.key}" if self.configmap else self.output,
        )
        return True

    def follow_file(self, path: Path, *, interval: float, stop: threading.Event) -> int:
        """Publish ``path`` each time its content changes (checked every ``interval`` seconds) until
        ``stop`` is set: an engine that rewrites one statistics file (vLLM's EPLB window, written by vibe's
        policy plugin at each rebalance). A missing or unreadable file is logged, never fatal. Returns the
        windows published."""
        published, last = 0, b""
        while not stop.is_set():
            try:
                content = path.read_bytes()
            except OSError:
                content = b""
            if content and content != last:
                try:
                    published += self.publish(path)
                    last = content
                except ServingError as e:
                    log.warning("%s: %s (retrying in %.0fs)", e.reason, e.message, interval)
            stop.wait(interval)
        return published

    def follow(
        self,
        engine_url: str,
        recorder_dir: str | Path,
        *,
        interval: float,
        stop: threading.Event,
        once: bool = False,
        keep_dumps: bool = False,
    ) -> int:
        """Publish a window of the engine's recorder every ``interval`` seconds until ``stop`` is set
        (with ``once``: one window, whose failure raises). Returns the windows published."""
        published = 0
        recording = False
        while True:
            try:
                if not recording:  # first time, or the engine restarted and forgot
                    loads.start_recording(engine_url)
                    recording = True
                if stop.wait(interval):
                    return published
                path = loads.dump_recording(engine_url, str(recorder_dir))
                try:
                    published += self.publish(path, window=True)
                finally:
                    if not keep_dumps:
                        path.unlink(missing_ok=True)
            except ServingError as e:
                if once:
                    raise
                recording = False
                pause = min(interval, RETRY_S)
                log.warning("%s: %s (retrying in %.0fs)", e.reason, e.message, pause)
                if stop.wait(pause):
                    return published
                continue
            if once:
                return published
