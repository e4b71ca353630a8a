"""Read the tensors of a ``torch.save`` file without torch, so the loads exporter fits in a slim image.

``torch.save`` (the zip format, default since torch 1.6) writes ``<archive>/data.pkl`` -- a pickle whose
tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls, with each
storage a *persistent id* ``("storage", torch.IntStorage, key, location, numel)`` -- and the raw storage
bytes as ``<archive>/data/<key>``, little-endian unless ``<archive>/byteorder`` says otherwise.

``load`` rebuilds those tensors as numpy arrays and refuses every other global, so a dump cannot run
code (like ``torch.load(weights_only=True)``). It covers what SGLang's expert-distribution dump holds
(dicts, ints, floats, None, integer and float tensors); anything else is a clear error, and ``loads``
falls back to torch itself when it is installed.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vibe.engines.errors import EngineError

# Legacy storage class names (what torch pickles in the persistent id) -> numpy dtype (little-endian).
_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> np.ndarray:
    if not size:
        return storage[offset].copy()
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, order: str) -> None:
        super().__init__(file)
        self._archive, self._prefix, self._order = archive, prefix, order

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a torch file")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        _, storage_type, key, _location, _numel = pid
        raw = self._archive.read(f"{self._prefix}data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(self._order + _DTYPES[storage_type.name]))


def load(path: str | Path) -> Any:
    """The object a ``torch.save`` zip file holds, with tensors as numpy arrays.

    Raises:
        EngineError(InvalidDump): not a torch zip file, or it holds objects other than plain data and
            integer/float tensors (bfloat16, sparse, custom classes).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise EngineError("InvalidDump", f"{path} is not a torch.save zip file")
            prefix = pickles[0][: -len("data.pkl")]
            order = "<"
            if f"{prefix}byteorder" in archive.namelist():
                order = ">" if archive.read(f"{prefix}byteorder").strip() == b"big" else "<"
            with archive.open(pickles[0]) as f:
                return _Unpickler(f, archive, prefix, order).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError, ValueError) as e:
        raise EngineError("InvalidDump", f"cannot read {path} without torch: {e}") from None
