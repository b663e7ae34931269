"""Reading a zip-format torch file (what ``torch.save`` writes since torch 1.6) without importing torch.

Importing torch costs about 1.5 s on a small machine and another 0.5 s at interpreter exit, most of a short
fine-tune's start-up when all it needs from torch is a state dict. A state dict is a pickle of a few globals
(``OrderedDict``, ``torch._utils._rebuild_tensor_v2``, storage types, ``_codecs.encode`` for bytes) plus raw
little-endian storages, so :func:`read_pth` unpickles it with an allow-list of exactly those (Python's documented
way to restrict globals, as torch's own ``weights_only`` unpickler does) and builds numpy arrays from the storages.

Anything outside that list (a legacy non-zip file, a big-endian file, a quantized or float8 tensor, a pickled class,
a damaged archive) makes it answer ``None``: the caller reads the file with ``torch.load(weights_only=True)``, so
every such file keeps torch's exact result and refusal. The fast path never decides what a file means.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# Storage types torch writes in a state dict's pickle -> numpy dtype (bfloat16 through ml_dtypes, as io.py does).
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _NeedsTorch(Exception):
    """The file holds something this reader does not build; torch.load reads it instead."""


class _StorageType:
    """A storage type named in the pickle (``torch.FloatStorage``); a fresh one per lookup, so that nothing a file's
    pickle does to it (BUILD sets attributes) reaches another file's load."""

    def __init__(self, name: str) -> None:
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor_v2(
    storage: np.ndarray,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: Any,
    metadata: Any = None,
) -> np.ndarray:
    """A tensor's view of its storage, copied out (strides and offset checked against the storage's bounds; a tensor
    with more elements than its storage, a broadcast view, is torch's to read: copying it out could take any size)."""
    if backward_hooks or metadata or not isinstance(storage, np.ndarray):
        raise _NeedsTorch("hooks, tensor metadata or no storage")
    ints = (offset, *size, *stride)
    if not all(type(i) is int and i >= 0 for i in ints) or len(size) != len(stride):
        raise _NeedsTorch("bad tensor geometry")
    if 0 in size:
        return np.empty(size, storage.dtype)
    if math.prod(size) > storage.size:
        raise _NeedsTorch("more elements than the storage holds")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise _NeedsTorch("tensor reaches past its storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride])
    return np.array(view, copy=True, order="C")


def _rebuild_parameter(data: np.ndarray, requires_grad: bool, backward_hooks: Any) -> np.ndarray:
    if backward_hooks or not isinstance(data, np.ndarray):
        raise _NeedsTorch("parameter hooks")
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self._archive, self._root = archive, root
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Bound methods and fresh objects: a BUILD opcode cannot set attributes on anything shared between loads.
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # a C type: its attributes cannot be set
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return self._rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 pickles bytes: encode(text, "latin1")
            return self._latin1
        raise _NeedsTorch(f"{module}.{name}")

    def _latin1(self, text: Any, encoding: Any) -> bytes:
        if not isinstance(text, str) or encoding != "latin1":
            raise _NeedsTorch("_codecs.encode")
        return text.encode("latin1")

    def _rebuild_tensor_v2(self, *args: Any) -> np.ndarray:
        return _rebuild_tensor_v2(*args)

    def _rebuild_parameter(self, *args: Any) -> np.ndarray:
        return _rebuild_parameter(*args)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _NeedsTorch(f"persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise _NeedsTorch("storage record")
        if key not in self._storages:
            name = f"{self._root}/data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise _NeedsTorch(f"storage {key} missing") from None
            if numel < 0 or info.file_size != numel * kind.dtype.itemsize:  # checked before anything is read
                raise _NeedsTorch(f"storage {key} is not {numel} elements")
            raw = self._archive.read(name)
            self._storages[key] = np.frombuffer(raw, dtype=kind.dtype, count=numel)
        storage = self._storages[key]
        if storage.dtype != kind.dtype:  # two views of one storage as different types: torch's business
            raise _NeedsTorch("storage viewed as two types")
        return storage


def read_pth(path: str | os.PathLike[str]) -> Any | None:
    """The object saved in the zip-format torch file ``path`` with its tensors as numpy arrays, or None when the
    file needs torch to read (see the module docstring); never raises for a file's content."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                return None
            root = pickles[0].rpartition("/")[0]
            names = set(archive.namelist())
            if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").strip() != b"little":
                return None
            return _Unpickler(archive.read(pickles[0]), archive, root).load()
    except Exception:  # anything unexpected, a damaged file included: torch.load reads it and words the refusal
        return None
