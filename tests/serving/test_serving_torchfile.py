"""The torch-free reader of ``torch.save`` files, on files written the way torch writes them.

Without torch here, a fake ``torch`` module pickles tensors with the same globals and persistent ids
torch uses; with torch installed, the real ``torch.save`` output is read too (and compared).
"""

from __future__ import annotations

import io
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vibe.engines import sglang, torchfile
from vibe.engines.errors import EngineError


def fake_torch_save(obj: dict, path: Path, prefix: str = "archive") -> None:
    """Write ``obj`` (numpy arrays as tensors) in torch's zip layout, with torch's pickle globals."""
    torch_mod, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class IntStorage:  # pickled by reference as torch.IntStorage
        pass

    IntStorage.__module__, IntStorage.__qualname__ = "torch", "IntStorage"
    torch_mod.IntStorage = IntStorage

    def _rebuild_tensor_v2(*a):
        raise AssertionError("never called while saving")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storages: dict[str, bytes] = {}

    class Tensor:
        def __init__(self, arr: np.ndarray) -> None:
            self.arr = np.ascontiguousarray(arr, dtype="<i4")

        def __reduce__(self):
            key = str(len(storages))
            storages[key] = self.arr.tobytes()
            strides = tuple(s // 4 for s in self.arr.strides)
            return (_rebuild_tensor_v2, (("storage", key), 0, self.arr.shape, strides, False, {}))

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, tuple) and len(o) == 2 and o[0] == "storage":
                return ("storage", IntStorage, o[1], "cpu", len(storages[o[1]]) // 4)
            return None

    wrapped = {k: Tensor(v) if isinstance(v, np.ndarray) else v for k, v in obj.items()}
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils
    try:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(wrapped)
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", buf.getvalue())
        z.writestr(f"{prefix}/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"{prefix}/data/{key}", raw)


def test_reads_a_dump_shaped_like_sglangs(tmp_path: Path) -> None:
    count = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4)
    path = tmp_path / "expert_distribution_recorder_1.pt"
    fake_torch_save({"rank": 0, "logical_count": count, "average_utilization_rate_over_window": None}, path)
    obj = torchfile.load(path)
    assert obj["rank"] == 0 and obj["average_utilization_rate_over_window"] is None
    np.testing.assert_array_equal(obj["logical_count"], count)


def test_refuses_code_and_junk(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(print))  # builtins.print: not a tensor
    with pytest.raises(EngineError, match=r"unsupported object builtins\.print"):
        torchfile.load(evil)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(EngineError, match="without torch"):
        torchfile.load(tmp_path / "junk.pt")
    with pytest.raises(EngineError):
        torchfile.load(tmp_path / "missing.pt")


def test_read_dump_uses_the_torch_free_reader(tmp_path: Path, monkeypatch) -> None:
    import builtins

    count = np.ones((3, 2, 5), dtype=np.int32)
    path = tmp_path / "d.pt"
    fake_torch_save({"logical_count": count}, path)
    real = builtins.__import__

    def no_torch(name, *a, **kw):
        if name == "torch":
            raise ImportError("no torch")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert sglang.read_dump(path).shape == (3, 2, 5)


def test_real_torch_files_match(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    count = torch.randint(0, 1000, (7, 5, 9), dtype=torch.int32)
    path = tmp_path / "expert_distribution_recorder_2.pt"
    torch.save({"rank": 0, "logical_count": count, "average_utilization_rate_over_window": 0.5}, str(path))
    np.testing.assert_array_equal(torchfile.load(path)["logical_count"], count.numpy())
    sliced = tmp_path / "sliced.pt"
    torch.save({"logical_count": count[2:, :, ::2].transpose(1, 2)}, str(sliced))  # offset + strides
    np.testing.assert_array_equal(
        torchfile.load(sliced)["logical_count"], count[2:, :, ::2].transpose(1, 2).numpy()
    )
    for dtype in (torch.int64, torch.float32, torch.float64, torch.int16, torch.uint8, torch.bool):
        t = (torch.arange(12) % 3).to(dtype).reshape(3, 4)
        torch.save({"x": t}, str(tmp_path / "t.pt"))
        np.testing.assert_array_equal(torchfile.load(tmp_path / "t.pt")["x"], t.numpy())
