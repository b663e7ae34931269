"""Reading weight files: .pth/.pt via ``torch.load(weights_only=True)``, .safetensors without torch, in-memory sources.

Everything comes out as ``{torch key: numpy array}`` plus a :class:`~.checkpoints.Located` saying where in the file
the state dict was found. A zip-format .pth of tensors and plain containers (what ``torch.save(model.state_dict())``
writes) is read without importing torch (:mod:`.pth_io`); torch is imported only for the files that need it (and
torch objects). Nothing here runs pickled code unless the caller passes ``trust_pickle=True`` (which warns).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .checkpoints import Located, is_array, is_torch_tensor, locate
from .errors import BridgeError, format_problems
from .pth_io import read_pth
from .safetensors_io import load_safetensors

# Classes a training checkpoint commonly holds besides tensors that are plain data. Allowing them in torch's
# weights_only unpickler builds them from their saved attributes; it runs no code of theirs.
SAFE_CLASSES: tuple[type, ...] = (argparse.Namespace,)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_TRUST_HINT = (
    "only if you trust the file: from_torchvision(..., trust_pickle=True) in Python reads it with "
    "weights_only=False, which runs its pickled code"
)


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape codes (torch's messages embed bold/colour codes)."""
    return _ANSI.sub("", text)


def _tensor_to_numpy(v: Any, key: str, origin: str) -> np.ndarray:
    import torch

    t = v.detach().cpu()
    if t.is_quantized:
        raise BridgeError(
            f"{origin}: {key!r} is a quantized tensor ({t.dtype}); jaxtl reads float weights: "
            "dequantize the model first (tensor.dequantize(), or save the float model's state_dict())"
        )
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the bits as ml_dtypes' bfloat16.
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    try:
        return np.array(t.numpy(), copy=True)
    except (TypeError, RuntimeError) as e:  # float8, complex32, uint16 ... have no numpy type
        raise BridgeError(
            f"{origin}: {key!r} has torch dtype {t.dtype}, which jaxtl cannot read ({e}); "
            "save it as float32/float16/bfloat16 (tensor.float())"
        ) from e


def to_numpy_state_dict(located: Located) -> dict[str, np.ndarray]:
    """The located state dict as ``{key: np.ndarray}``; BridgeError naming every key whose value is not an array."""
    out: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for k, v in located.state_dict.items():
        if not isinstance(k, str):
            bad.append(f"{k!r}: key is not a string")
        elif is_torch_tensor(v):
            out[k] = _tensor_to_numpy(v, k, located.origin)
        elif isinstance(v, np.ndarray | np.generic) or is_array(v):
            out[k] = np.asarray(v)
        else:
            bad.append(f"{k!r}: a {type(v).__name__}, not a tensor")
    if bad:
        raise BridgeError(format_problems(f"{located.origin} is not a state dict of tensors", bad))
    if not out:
        raise BridgeError(f"{located.origin} is empty: no tensors found")
    return out


@contextlib.contextmanager
def _allow_safe_classes() -> Iterator[None]:
    import torch

    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is None:  # torch < 2.5: only the process-wide allow-list exists
        torch.serialization.add_safe_globals(list(SAFE_CLASSES))
        yield
        return
    with ctx(list(SAFE_CLASSES)):
        yield


def _is_module_class(qualname: str) -> bool:
    """Whether ``qualname`` names a torch ``nn.Module`` subclass, judged without importing anything new."""
    import sys

    import torch

    if qualname.startswith(("torchvision.models.", "timm.models.", "torch.nn.modules.")):
        return True
    module_name, _, attr = qualname.rpartition(".")
    obj = getattr(sys.modules.get(module_name), attr, None)
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def _refusal(p: Path, e: BaseException) -> BridgeError:
    """torch.load's refusal of ``p``, its full text kept (escape codes removed), and what to do about it."""
    text = strip_ansi(str(e)).strip() or type(e).__name__
    head = f"cannot load {p} with torch.load(weights_only=True):"
    m = _UNSUPPORTED_GLOBAL.search(text)
    if m and _is_module_class(m.group(1)):
        advice = (
            f"{head} it holds a whole pickled model ({m.group(1)}), not a state dict, and unpickling it would run "
            "code. In the program that made it, save torch.save(model.state_dict(), 'weights.pth') and convert that "
            f"file ({_TRUST_HINT})."
        )
    elif m:
        advice = (
            f"{head} it needs {m.group(1)}, which weights_only does not allow (unpickling it may run code). Save only "
            f"model.state_dict(), or a dict of tensors and plain values ({_TRUST_HINT})."
        )
    else:
        advice = f"{head} the file is damaged or not a torch file."
    return BridgeError(f"{advice} torch said: {text}")


def _torch_load(p: Path, trust_pickle: bool) -> Any:
    if not trust_pickle and (obj := read_pth(p)) is not None:
        return obj  # the same object torch.load(weights_only=True) gives, tensors as numpy arrays
    try:
        import torch
    except ImportError as e:
        raise BridgeError(
            f"reading {p} needs torch (pip install 'jaxtl[torch]'): it is not a zip-format file of tensors and plain "
            "values, which jaxtl reads without torch; .safetensors files never need it"
        ) from e
    if trust_pickle:
        warnings.warn(
            f"trust_pickle=True: loading {p} with torch.load(weights_only=False) RUNS THE CODE PICKLED IN IT; "
            "do this only for files you made yourself or fully trust",
            UserWarning,
            stacklevel=4,
        )
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:
            raise BridgeError(f"cannot load {p} with torch.load(weights_only=False): {strip_ansi(str(e))}") from e
        if isinstance(obj, torch.nn.Module):
            return obj.state_dict()
        return obj
    try:
        with _allow_safe_classes():
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        raise _refusal(p, e) from e


def read_file(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[Any, str, dict[str, Any] | None]:
    """The raw object in ``path``, its layout: ``"torch"`` (.pth/.pt/.safetensors of torch names) or
    ``"jaxtl-flax"`` (a jaxtl Flax-layout .safetensors, given back in torch layout), and the model card (a dict) such
    a file carries, else None."""
    import json

    from .flax_io import FORMAT, flax_to_torch_state_dict

    p = Path(path)
    if not p.is_file():
        raise BridgeError(f"no such file: {p}")
    if p.stat().st_size == 0:
        raise BridgeError(f"{p} is empty (0 bytes)")
    if p.suffix == ".safetensors":
        tensors, metadata = load_safetensors(p)
        if metadata.get("format") == FORMAT:
            try:
                card = json.loads(metadata["card"]) if "card" in metadata else None
            except json.JSONDecodeError as e:
                raise BridgeError(f"{p}: metadata 'card' is not JSON ({e})") from e
            return flax_to_torch_state_dict(tensors, str(p)), "jaxtl-flax", card
        return tensors, "torch", None
    return _torch_load(p, trust_pickle), "torch", None


def load_state_dict(
    path: str | os.PathLike, prefix: str | None = None, entry: str | None = None, trust_pickle: bool = False
) -> dict[str, np.ndarray]:
    """Read a .pth/.pt (torch, ``weights_only=True``) or .safetensors file -> ``{torch key: np.ndarray}``.

    The state dict is found inside training checkpoints and its key prefix removed as :func:`~.checkpoints.locate`
    describes (``entry``/``prefix`` choose explicitly). Any failure to read (missing, empty, truncated or corrupt
    file, a pickle needing code execution, an object that is not a state dict) raises :class:`BridgeError` naming
    the file.
    """
    return read_source(path, prefix=prefix, entry=entry, trust_pickle=trust_pickle)[0]


def read_source(
    source: Any, prefix: str | None = None, entry: str | None = None, trust_pickle: bool = False
) -> tuple[dict[str, np.ndarray], Located]:
    """A path, a torch ``nn.Module`` or a (wrapped) state-dict mapping -> (``{key: np.ndarray}``, where it was)."""
    layout, card = "torch", None
    if isinstance(source, str | os.PathLike):
        obj, layout, card = read_file(source, trust_pickle)
        origin = str(source)
    elif hasattr(source, "state_dict") and callable(source.state_dict):
        obj, origin = source.state_dict(), type(source).__name__
    elif isinstance(source, Mapping):
        obj, origin = source, "state dict"
    else:
        raise BridgeError(
            f"cannot convert a {type(source).__name__}: pass a torch nn.Module, a state dict, a .pth/.safetensors "
            "path or a torchvision weights enum"
        )
    located = locate(obj, origin, prefix=prefix, entry=entry)
    located.layout, located.card = layout, card
    return to_numpy_state_dict(located), located
