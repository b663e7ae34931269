"""Reading state dicts: .pth/.pt via ``torch.load(weights_only=True)``, .safetensors without torch, in-memory sources.

Everything comes out as ``{torch key: numpy array}``; torch is imported only when a .pth or a torch object is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .errors import BridgeError
from .safetensors_io import load_safetensors

# Keys under which common training scripts nest the state dict in a checkpoint file.
_NESTED_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."


def _is_torch_tensor(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach") and hasattr(v, "numpy")


def _is_array_like(v: Any) -> bool:
    # jax arrays and other array types that numpy can read without copying semantics surprises
    return hasattr(v, "__array__") and hasattr(v, "dtype") and hasattr(v, "shape")


def _tensor_to_numpy(v: Any) -> np.ndarray:
    import torch

    t = v.detach().cpu()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the bits as ml_dtypes' bfloat16.
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return np.array(t.numpy(), copy=True)


def _unwrap(obj: Any, origin: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise BridgeError(f"{origin} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    for k in _NESTED_KEYS:
        inner = obj.get(k)
        if isinstance(inner, Mapping) and not any(
            _is_torch_tensor(v) or isinstance(v, np.ndarray) for v in obj.values()
        ):
            return inner
    return obj


def to_numpy_state_dict(obj: Any, origin: str = "state dict") -> dict[str, np.ndarray]:
    """A mapping of names to torch tensors / numpy arrays (possibly nested under "state_dict"/"model", possibly with
    DataParallel's "module." prefix) -> ``{key: np.ndarray}``. BridgeError naming keys whose value is not an array."""
    sd = _unwrap(obj, origin)
    out: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for k, v in sd.items():
        if not isinstance(k, str):
            bad.append(f"{k!r}: key is not a string")
        elif _is_torch_tensor(v):
            out[k] = _tensor_to_numpy(v)
        elif isinstance(v, np.ndarray | np.generic) or _is_array_like(v):
            out[k] = np.asarray(v)
        else:
            bad.append(f"{k!r}: a {type(v).__name__}, not a tensor")
    if bad:
        from .errors import format_problems

        raise BridgeError(format_problems(f"{origin} is not a state dict of tensors", bad))
    if not out:
        raise BridgeError(f"{origin} is empty: no tensors found")
    if all(k.startswith(_DDP_PREFIX) for k in out):
        out = {k[len(_DDP_PREFIX) :]: v for k, v in out.items()}
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a .pth/.pt (torch, ``weights_only=True``) or .safetensors file -> ``{torch key: np.ndarray}``.

    Any failure to read (missing, empty, truncated or corrupt file, a pickle needing code execution, an object that is
    not a state dict) raises :class:`BridgeError` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise BridgeError(f"no such file: {p}")
    if p.stat().st_size == 0:
        raise BridgeError(f"{p} is empty (0 bytes)")
    if p.suffix == ".safetensors":
        tensors, _ = load_safetensors(p)
        return to_numpy_state_dict(tensors, origin=str(p))
    try:
        import torch
    except ImportError as e:
        raise BridgeError(f"reading {p} needs torch (pip install 'jaxtl[torch]'); .safetensors files do not") from e
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BridgeError(f"cannot load {p} with torch.load(weights_only=True): {first}") from e
    return to_numpy_state_dict(obj, origin=str(p))


def read_source(source: Any) -> tuple[dict[str, np.ndarray], str]:
    """A path, a torch ``nn.Module`` or a state-dict mapping -> (``{key: np.ndarray}``, a description for messages)."""
    if isinstance(source, str | os.PathLike):
        return load_state_dict(source), str(source)
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return to_numpy_state_dict(source.state_dict(), origin=type(source).__name__), type(source).__name__
    if isinstance(source, Mapping):
        return to_numpy_state_dict(source), "state dict"
    raise BridgeError(
        f"cannot convert a {type(source).__name__}: pass a torch nn.Module, a state dict, or a .pth/.safetensors path"
    )
