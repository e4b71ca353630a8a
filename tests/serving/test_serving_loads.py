"""SGLang's expert-distribution dump -> tokens per step per MoE layer and expert, and its recorder."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from vibe.engines import sglang
from vibe.engines.errors import EngineError
from vibe.engines.loads import loads_document, to_loads
from vibe.serving import loads
from vibe.serving.errors import ServingError


def dump(passes: int = 5, filled: int = 3, layers: int = 4, dense: int = 1, experts: int = 6) -> np.ndarray:
    """A circular buffer of ``passes`` rows, ``filled`` of them recorded; dense layers stay zero."""
    rng = np.random.default_rng(0)
    count = np.zeros((passes, layers, experts))
    count[:filled, dense:, :] = rng.integers(1, 50, size=(filled, layers - dense, experts))
    return count


def test_divides_by_recorded_passes_and_drops_dense_layers() -> None:
    count = dump()
    result = to_loads(count)
    assert result.passes == 3 and result.dropped_layers == 1
    np.testing.assert_allclose(result.loads, count[:3, 1:].sum(axis=0) / 3)


def test_explicit_layer_options_and_steps() -> None:
    count = dump()
    assert to_loads(count, first_moe_layer=1).loads.shape == (3, 6)
    assert to_loads(count, moe_layers=3).dropped_layers == 1
    assert to_loads(count, steps=6).passes == 6
    with pytest.raises(EngineError, match="no tokens"):
        to_loads(count, first_moe_layer=0)
    with pytest.raises(EngineError, match="not both"):
        to_loads(count, first_moe_layer=1, moe_layers=3)
    with pytest.raises(EngineError, match="cannot drop"):
        to_loads(count, moe_layers=9)


def test_two_dimensional_counts() -> None:
    total = dump()[:, :, :].sum(axis=0)
    raw = to_loads(total)
    assert raw.passes is None and raw.dropped_layers == 1
    np.testing.assert_allclose(to_loads(total, steps=3).loads, total[1:] / 3)


def test_idle_dump_is_refused() -> None:
    with pytest.raises(EngineError, match="no forward pass"):
        to_loads(np.zeros((4, 3, 2)))


def test_document_is_deterministic() -> None:
    result = to_loads(dump())
    doc = loads_document(result)
    assert doc == loads_document(to_loads(dump()))
    parsed = json.loads(doc)
    assert list(parsed) == ["loads"] and len(parsed["loads"]) == 3 and len(parsed["loads"][0]) == 6


def test_read_json_dumps(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"logical_count": dump().tolist()}))
    assert sglang.read_dump(p).shape == (5, 4, 6)
    p.write_text(json.dumps([[1, 2], [3, 4]]))
    assert sglang.read_dump(p).shape == (2, 2)
    for bad, msg in (([1, 2], "shape"), ({"x": 1}, "no logical_count"), ([[-1, 2]], "negative")):
        p.write_text(json.dumps(bad))
        with pytest.raises(EngineError, match=msg):
            sglang.read_dump(p)


def test_read_pt_dump(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    p = tmp_path / "expert_distribution_recorder_1.pt"
    torch.save({"rank": 0, "logical_count": torch.tensor(dump(), dtype=torch.int32)}, str(p))
    assert sglang.read_dump(p).shape == (5, 4, 6)


def test_missing_pt_without_torch_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_torch(name, *a, **kw):
        if name == "torch":
            raise ImportError("no torch")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(EngineError) as e:
        sglang.read_dump(tmp_path / "x.pt")
    assert e.value.reason == "InvalidDump"


def test_recorder_endpoints(tmp_path: Path) -> None:
    """A fake engine: start/dump endpoints; dump writes a new file into the recorder dir, as rank 0 does."""
    calls = []

    class Engine(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(self.path)
            if self.path == "/dump_expert_distribution_record":
                (tmp_path / f"expert_distribution_recorder_{len(calls)}.pt").write_bytes(b"x" * 10)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        (tmp_path / "expert_distribution_recorder_0.pt").write_bytes(b"old")
        loads.start_recording(url)
        path = loads.dump_recording(url, str(tmp_path), poll=0.01)
        assert path.name == "expert_distribution_recorder_2.pt"
        assert calls == ["/start_expert_distribution_record", "/dump_expert_distribution_record"]
    finally:
        server.shutdown()
    with pytest.raises(ServingError, match="failed"):
        loads.start_recording("http://127.0.0.1:1", timeout=2)
