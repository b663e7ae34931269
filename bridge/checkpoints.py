"""Finding the model's state dict inside the checkpoints people have.

Training scripts rarely save a bare torchvision state dict. They nest it (``{"model": sd, "optimizer": ...,
"args": Namespace}`` from torchvision's reference scripts, ``{"state_dict": sd, ...}`` from PyTorch Lightning,
``{"model_state_dict": sd}`` from tutorials, ``{"model_ema": ...}`` beside it) and prefix its keys with the
attribute that held the network (``module.`` from DataParallel/DDP, ``_orig_mod.`` from ``torch.compile``,
``model.``/``net.``/``backbone.`` from a LightningModule). :func:`locate` undoes both and says what it did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import BridgeError
from .infer import FAMILIES, family_of, infer_arch

# Entries holding the model's weights, in the order of preference when several are present.
WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
    "ema",
    "model_ema",
    "state_dict_ema",
    "ema_state_dict",
    "ema_model",
)
_NESTING_LIMIT = 3


def is_torch_tensor(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach") and hasattr(v, "numpy")


def is_array(v: Any) -> bool:
    """A torch tensor, a numpy array or anything array-like with a dtype and shape (jax arrays)."""
    return is_torch_tensor(v) or (hasattr(v, "__array__") and hasattr(v, "dtype") and hasattr(v, "shape"))


def _holds_arrays(m: Mapping[Any, Any]) -> bool:
    return any(is_array(v) for v in m.values())


@dataclasses.dataclass
class Located:
    """Where a state dict was found. ``entry`` is the path of checkpoint entries unwrapped (``"state_dict"``,
    ``"model"``, None for a bare state dict); ``alternatives`` other entries that also hold tensors (e.g.
    ``"model_ema"``); ``prefix`` the key prefix removed (``prefix_detected``: found by the bridge, not given);
    ``outside_prefix`` keys that did not carry it and were left out; ``layout`` "torch" or "jaxtl-flax" (a jaxtl
    Flax-layout .safetensors, whose model ``card`` is kept when it has one)."""

    state_dict: Mapping[str, Any]
    origin: str
    entry: str | None = None
    alternatives: list[str] = dataclasses.field(default_factory=list)
    prefix: str | None = None
    prefix_detected: bool = False
    outside_prefix: list[str] = dataclasses.field(default_factory=list)
    layout: str = "torch"
    card: dict[str, Any] | None = None

    def notes(self) -> list[str]:
        """What was done to reach the state dict, one human-readable line each."""
        out = []
        if self.layout == "jaxtl-flax":
            out.append("read a jaxtl Flax-layout .safetensors (variable paths mapped back to torchvision keys)")
        if self.entry is not None:
            also = ""
            if self.alternatives:
                names = ", ".join(repr(a) for a in self.alternatives)
                also = f" (the file also holds {names}: pass entry=/--entry to use one)"
            out.append(f"unwrapped the checkpoint entry {self.entry!r}{also}")
        if self.prefix:
            how = "detected" if self.prefix_detected else "given"
            out.append(f"stripped the key prefix {self.prefix!r} ({how})")
        if self.outside_prefix:
            shown = ", ".join(repr(k) for k in self.outside_prefix[:5])
            more = f" and {len(self.outside_prefix) - 5} more" if len(self.outside_prefix) > 5 else ""
            out.append(f"left out {len(self.outside_prefix)} key(s) outside the prefix: {shown}{more}")
        return out


def _entries(m: Mapping[Any, Any]) -> str:
    parts = []
    for k, v in list(m.items())[:12]:
        kind = "state dict" if isinstance(v, Mapping) and _holds_arrays(v) else type(v).__name__
        parts.append(f"{k!r} ({kind})")
    return ", ".join(parts) + (" ..." if len(m) > 12 else "")


def _unwrap(obj: Any, origin: str, entry: str | None) -> tuple[Mapping[Any, Any], str | None, list[str]]:
    if not isinstance(obj, Mapping):
        raise BridgeError(
            f"{origin} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors); "
            "save model.state_dict() instead"
        )
    if entry is not None:
        node: Any = obj
        for part in entry.split("/"):
            if not isinstance(node, Mapping) or part not in node:
                where = _entries(node) if isinstance(node, Mapping) else type(node).__name__
                raise BridgeError(f"{origin} has no entry {entry!r}; found: {where}")
            node = node[part]
        if not isinstance(node, Mapping):
            raise BridgeError(f"{origin}: entry {entry!r} is a {type(node).__name__}, not a state dict")
        return node, entry, []
    path: list[str] = []
    alternatives: list[str] = []
    node = obj
    for _ in range(_NESTING_LIMIT):
        if not node or _holds_arrays(node):
            break
        nested = [k for k, v in node.items() if isinstance(v, Mapping) and v and _holds_arrays(v)]
        preferred = [k for k in WRAPPER_KEYS if k in nested]
        if preferred:
            choice = preferred[0]
        elif len(nested) == 1:
            choice = nested[0]
        elif nested:
            raise BridgeError(
                f"{origin} holds several state dicts ({', '.join(repr(k) for k in nested)}); "
                "choose one with entry= (--entry)"
            )
        else:
            wrappers = [k for k in WRAPPER_KEYS if isinstance(node.get(k), Mapping)]
            # Else the one non-empty mapping, whatever its name ({"x": {"state_dict": ...}}): a chain of wrappers.
            maps = [k for k, v in node.items() if isinstance(v, Mapping) and v]
            if not wrappers and len(maps) != 1:
                break  # not a recognised wrapper: reported as "not a state dict of tensors" by the caller
            choice = wrappers[0] if wrappers else maps[0]
        alternatives += ["/".join([*path, str(k)]) for k in nested if k != choice]
        path.append(str(choice))
        node = node[choice]
    return node, ("/".join(path) or None), alternatives


def _prefix_candidates(keys: list[str]) -> list[str]:
    """Prefixes P under which some family's two anchor keys both sit (P + "conv1.weight" and
    P + "layer1.0.conv1.weight" for a ResNet, P + "class_token" and P + "conv_proj.weight" for a ViT, ...)."""
    present = set(keys)
    out = []
    for fam in FAMILIES.values():
        first, second = fam.anchors
        for k in keys:
            if k.endswith(second):
                p = k[: -len(second)]
                if p and p + first in present:
                    out.append(p)
    return sorted(set(out), key=lambda p: (len(p), p))


def _strip(sd: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], list[str]]:
    inside = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return inside, [k for k in sd if not k.startswith(prefix)]


def locate(obj: Any, origin: str, prefix: str | None = None, entry: str | None = None) -> Located:
    """The state dict in ``obj`` (a loaded checkpoint) and how it was reached.

    Unwrapping: a mapping holding tensors is the state dict; otherwise the first of :data:`WRAPPER_KEYS` that holds
    one is taken (up to 3 levels deep), or the only nested mapping of tensors; ``entry="model_ema"`` (a ``/`` path
    for deeper nesting) chooses explicitly. Prefix: ``prefix="model."`` keeps the keys that start with it, without
    it; ``prefix=""`` strips nothing; by default, when the keys are no known architecture as they are, the one
    prefix whose removal gives a recognisable architecture is removed (several candidates: BridgeError asking for
    ``prefix=``).
    """
    node, found_entry, alternatives = _unwrap(obj, origin, entry)
    sd: Mapping[Any, Any] = node
    located = Located(sd, origin, entry=found_entry, alternatives=alternatives)
    str_keys = [k for k in sd if isinstance(k, str)]
    if prefix and not prefix.endswith(".") and any(k.startswith(prefix + ".") for k in str_keys):
        prefix += "."  # "model" means the attribute: "model.conv1.weight", not "model_ema..."
    if prefix:
        inside, outside = _strip({k: sd[k] for k in str_keys}, prefix)
        if not inside:
            heads = sorted({k.split(".", 1)[0] + "." for k in str_keys if "." in k})
            raise BridgeError(
                f"{origin}: no key starts with the prefix {prefix!r}; the keys start with: "
                f"{', '.join(repr(h) for h in heads[:10]) or '(no dotted keys)'}"
            )
        located.state_dict, located.prefix, located.outside_prefix = inside, prefix, outside
        located.state_dict.update({k: v for k, v in sd.items() if not isinstance(k, str)})  # reported later
        return located
    if prefix == "" or len(str_keys) != len(sd) or family_of(sd) is not None:
        return located
    valid = []
    for p in _prefix_candidates(str_keys):
        inside, _ = _strip(sd, p)
        try:
            infer_arch(inside)
        except BridgeError:
            continue
        valid.append(p)
    if len(valid) > 1:
        raise BridgeError(
            f"{origin} holds several models, under the key prefixes {', '.join(repr(p) for p in valid)}; "
            "choose one with prefix= (--prefix)"
        )
    if valid:
        located.state_dict, located.outside_prefix = _strip(sd, valid[0])
        located.prefix, located.prefix_detected = valid[0], True
    return located
