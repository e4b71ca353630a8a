"""``vibe.serving.export``: the loads exporter's loop against an engine's recorder endpoints, over HTTP.

The engine is a small HTTP server speaking SGLang's two recorder endpoints; its dump writes a real
``torch.save`` file into the recorder directory, as rank 0 does. No Typer: the loop is a function.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from vibe.engines.loads import loads_document, to_loads
from vibe.serving.errors import ServingError
from vibe.serving.export import Exporter


def window(passes: int, seed: int, layers: int = 3, experts: int = 4) -> np.ndarray:
    count = np.zeros((passes + 2, layers, experts))  # two unfilled buffer rows
    count[:passes, 1:, :] = np.random.default_rng(seed).integers(1, 40, size=(passes, layers - 1, experts))
    return count


def test_follow_survives_an_engine_restart_and_skips_idle_windows(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    recorder, out = tmp_path / "recorder", tmp_path / "loads.json"
    recorder.mkdir()
    stop = threading.Event()
    calls: list[str] = []
    # dump 1: the engine restarted (HTTP 500); dump 2: an idle window; dump 3: the real one, then stop
    windows = {2: window(3, seed=1), 3: window(150, seed=2)}

    class Engine(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(self.path.strip("/"))
            dumps = calls.count("dump_expert_distribution_record")
            if self.path.startswith("/dump") and dumps == 1:
                self.send_response(500)
                self.end_headers()
                return
            if self.path.startswith("/dump"):
                count = torch.tensor(windows[dumps], dtype=torch.int32)
                path = recorder / f"expert_distribution_recorder_{dumps}.pt"
                torch.save({"rank": 0, "logical_count": count}, str(path))
                if dumps == 3:
                    stop.set()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        exporter = Exporter(output=out, first_moe_layer=1, min_passes=100)
        url = f"http://127.0.0.1:{server.server_port}"
        published = exporter.follow(url, recorder, interval=0.05, stop=stop)
    finally:
        server.shutdown()
    assert published == 1
    start, dump = "start_expert_distribution_record", "dump_expert_distribution_record"
    assert calls == [start, dump, start, dump, dump]  # recording restarts after the failed window
    expected = loads_document(to_loads(windows[3], None, 1, None))
    assert out.read_text() == expected + "\n"
    assert json.loads(out.read_text())["loads"] and list(recorder.iterdir()) == []  # dumps deleted


def test_one_dump_and_its_errors(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"logical_count": window(2, seed=3).tolist()}))
    out = tmp_path / "loads.json"
    assert Exporter(output=out, first_moe_layer=1, min_passes=100).publish(dump)  # a file: no idle check
    assert np.asarray(json.loads(out.read_text())["loads"]).shape == (2, 4)
    with pytest.raises(ServingError) as e:
        Exporter()
    assert e.value.reason == "InvalidArgument"
    with pytest.raises(ServingError, match="--namespace"):
        Exporter(configmap="loads", api=object())
    with pytest.raises(ServingError, match="failed"):  # with --once, a failed window is the command's error
        Exporter(output=out).follow(
            "http://127.0.0.1:1", tmp_path, interval=0, stop=threading.Event(), once=True
        )


def test_follow_file_ships_each_vllm_eplb_window_the_plugin_writes(tmp_path: Path) -> None:
    """vibe's vLLM plugin rewrites one window file at each EPLB rebalance (atomically); the sidecar
    (``export-loads --engine vllm --dump FILE --follow``) publishes each new one as tokens per step."""
    from vibe.serving.vllm_eplb import window as vllm_window
    from vibe.serving.vllm_eplb import write_window

    path, out = tmp_path / "eplb" / "window.json", tmp_path / "loads.json"
    exporter = Exporter(output=out, engine="vllm")
    stop = threading.Event()
    published: list[int] = []
    thread = threading.Thread(
        target=lambda: published.append(exporter.follow_file(path, interval=0.02, stop=stop))
    )
    thread.start()

    def shipped(expected: list[list[float]]) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if out.exists() and json.loads(out.read_text())["loads"] == expected:
                return True
            time.sleep(0.02)
        return False

    try:
        write_window(path, vllm_window(np.array([[40, 0, 8], [4, 4, 4]]), steps=4) or "")
        assert shipped([[10.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
        path.write_text('{"logical_count": "garbage"}')  # a bad file is logged, the loop goes on
        time.sleep(0.1)
        write_window(path, vllm_window(np.array([[8, 8, 8], [0, 4, 0]]), steps=4) or "")
        assert shipped([[2.0, 2.0, 2.0], [0.0, 1.0, 0.0]])
    finally:
        stop.set()
        thread.join(5)
    assert published == [2]
