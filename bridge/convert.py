"""torchvision state dict <-> Flax variables, strictly checked, mapped by name rules (see :mod:`.names`)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import jaxtl
from jaxtl.models import get_spec
from jaxtl.models.card import ModelCard
from jaxtl.models.heads import new_head

from .checkpoints import Located
from .errors import BridgeError, format_problems
from .infer import FAMILY, describe, infer_arch
from .io import read_source
from .names import (
    INTEGER_TORCH_LEAVES,
    LeafRule,
    flax_to_torch_key,
    rule_for_flax,
    torch_module_and_leaf,
    torch_order,
)

log = logging.getLogger("jaxtl.bridge")

_FC_KEYS = ("fc.weight", "fc.bias")
_INT32_MAX = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True)
class _Entry:
    collection: str
    path: tuple[str, ...]
    flax_shape: tuple[int, ...]
    rule: LeafRule
    torch_key: str

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return self.rule.torch_shape(self.flax_shape)


@functools.lru_cache(maxsize=32)
def _expected(arch: str, num_classes: int) -> tuple[_Entry, ...]:
    """Every variable of ``arch`` with its torch key, in torchvision's state_dict order. No arrays are allocated."""
    module = jaxtl.create(arch, num_classes=num_classes)
    shapes = jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )
    entries: list[_Entry] = []
    for collection in ("params", "batch_stats"):
        for kp, leaf in jax.tree_util.tree_flatten_with_path(shapes[collection])[0]:
            path = tuple(str(k.key) for k in kp)
            rule = rule_for_flax(collection, path, len(leaf.shape))
            entries.append(_Entry(collection, path, tuple(leaf.shape), rule, flax_to_torch_key(path, rule)))
    return tuple(sorted(entries, key=lambda e: torch_order(e.torch_key)))


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt == np.dtype(ml_dtypes.bfloat16)


@dataclasses.dataclass
class BridgeReport:
    """What a conversion found and did. ``problems`` is empty exactly when the state dict converts strictly."""

    arch: str | None
    source: str
    num_classes: int = 0
    source_num_classes: int = 0
    fc_reinitialized: bool = False
    seed: int | None = None
    dropped: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)
    bad_values: list[str] = dataclasses.field(default_factory=list)
    cast_from: dict[str, int] = dataclasses.field(default_factory=dict)
    param_tensors: int = 0
    param_elements: int = 0
    stat_tensors: int = 0
    stat_elements: int = 0
    arch_error: str | None = None
    hint: str | None = None
    layout: str = "torch"
    entry: str | None = None
    alternatives: list[str] = dataclasses.field(default_factory=list)
    prefix: str | None = None
    prefix_detected: bool = False
    outside_prefix: list[str] = dataclasses.field(default_factory=list)
    cached: str | None = None
    fc_shape: list[int] | None = None
    card: dict[str, Any] | None = None

    @property
    def notes(self) -> list[str]:
        """What was done to reach the state dict (entry unwrapped, prefix stripped, keys left out), one line each."""
        located = Located({}, self.source, self.entry, self.alternatives, self.prefix, self.prefix_detected)
        located.outside_prefix, located.layout = self.outside_prefix, self.layout
        notes = located.notes()
        if self.cached:
            notes.append(f"loaded the converted variables from the cache {self.cached}")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BridgeReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def problems(self) -> list[str]:
        out = [x for x in (self.hint, self.arch_error) if x]
        out += [f"missing key {k!r}" for k in self.missing]
        out += [f"unexpected key {k!r}" for k in self.unexpected]
        return out + self.mismatched + self.bad_values

    @property
    def ok(self) -> bool:
        return not self.problems


class Conversion(tuple):  # type: ignore[type-arg]
    """``(module, variables)`` that unpacks as a 2-tuple and also carries ``.report`` (a :class:`BridgeReport`) and
    ``.card`` (the :class:`~jaxtl.models.card.ModelCard`: architecture, classes, preprocessing, source)."""

    report: BridgeReport
    card: ModelCard

    def __new__(
        cls, module: nn.Module, variables: dict[str, Any], report: BridgeReport, card: ModelCard | None = None
    ) -> Conversion:
        self = super().__new__(cls, (module, variables))
        self.report = report
        assert report.arch is not None
        self.card = card or default_card(report.arch, report.num_classes, report.source, module.dtype)
        return self

    @property
    def module(self) -> nn.Module:
        return self[0]  # type: ignore[no-any-return]

    @property
    def variables(self) -> dict[str, Any]:
        return self[1]  # type: ignore[no-any-return]


def dtype_name(dtype: Any) -> str:
    """The model card's name of a compute dtype: "bfloat16" for bfloat16, else "float32"."""
    return "bfloat16" if jnp.dtype(dtype) == jnp.bfloat16 else "float32"


def default_card(arch: str, num_classes: int, source: str | None, dtype: Any = jnp.float32) -> ModelCard:
    """The card of weights that say nothing about themselves: the registry's input size and mean/std for ``arch``
    (Resize 256 / CenterCrop 224 for a 224 model), no class names."""
    return ModelCard.for_arch(arch, num_classes, source=source, dtype=dtype_name(dtype))


def _report_for(located: Located, **fields: Any) -> BridgeReport:
    return BridgeReport(
        source=located.origin,
        layout=located.layout,
        entry=located.entry,
        alternatives=list(located.alternatives),
        prefix=located.prefix,
        prefix_detected=located.prefix_detected,
        outside_prefix=list(located.outside_prefix),
        card=located.card,
        **fields,
    )


def _check(
    sd: Mapping[str, np.ndarray], arch: str | None, num_classes: int | None, located: Located, strict: bool = True
) -> tuple[BridgeReport, list[tuple[_Entry, np.ndarray]]]:
    """Compare ``sd`` with what ``arch`` needs; collect every problem instead of stopping at the first."""
    seen = describe(sd)
    fc = sd.get("fc.weight")
    report = _report_for(
        located,
        arch=arch,
        source_num_classes=seen["num_classes"],
        fc_shape=[int(d) for d in fc.shape] if fc is not None else None,
    )
    if arch is None:
        try:
            arch = report.arch = infer_arch(sd)
        except BridgeError as err:
            report.arch_error = str(err)
            if located.prefix is None and "conv1.weight" not in sd:
                report.arch_error += (
                    "; if the ResNet's keys carry a prefix (e.g. 'model.conv1.weight'), name it with prefix= "
                    "(--prefix), or entry= (--entry) if the checkpoint nests it under an unusual name"
                )
            return report, []
    elif arch not in jaxtl.models.list_models(FAMILY):
        report.arch_error = (
            f"--arch {arch!r} is not a torchvision-convertible architecture; choose one of: "
            + ", ".join(jaxtl.models.list_models(FAMILY))
        )
        return report, []
    target = seen["num_classes"] if num_classes is None else int(num_classes)
    if target < 0:
        raise BridgeError(f"num_classes must be >= 0, got {target}")
    report.num_classes = target
    keep_fc = target > 0 and target == seen["num_classes"]
    entries = [e for e in _expected(arch, target) if keep_fc or not e.torch_key.startswith("fc.")]
    if not keep_fc:
        # An fc that is not a proper [classes, features] matrix is not dropped but reported as unexpected.
        report.dropped = [k for k in _FC_KEYS if k in sd] if seen["num_classes"] > 0 else []
        report.fc_reinitialized = target > 0
    wanted = {e.torch_key: e for e in entries}

    report.missing = [k for k in wanted if k not in sd]
    extra = [k for k in sd if k not in wanted and k not in report.dropped]
    if strict:
        report.unexpected = extra
    else:
        report.ignored = extra
        # torch itself tolerates checkpoints from before num_batches_tracked existed.
        filled = [k for k in report.missing if k.endswith(".num_batches_tracked")]
        report.missing = [k for k in report.missing if k not in filled]
    pairs: list[tuple[_Entry, np.ndarray]] = []
    for key, e in wanted.items():
        if key not in sd:
            if key in report.missing:
                continue
            pairs.append((e, np.zeros((), np.int32)))
            continue
        a = sd[key]
        shape = tuple(int(d) for d in a.shape)
        if shape != e.torch_shape:
            report.mismatched.append(f"shape of {key!r} is {list(shape)}, {arch} needs {list(e.torch_shape)}")
            continue
        leaf = torch_module_and_leaf(key)[1]
        if leaf in INTEGER_TORCH_LEAVES:
            if a.dtype.kind not in "iu":
                report.bad_values.append(f"{key!r} has dtype {a.dtype}, expected an integer")
            elif a.size and not 0 <= int(a.max()) <= _INT32_MAX:
                report.bad_values.append(f"{key!r} = {int(a.max())} is outside the int32 range")
            else:
                pairs.append((e, a.astype(np.int32)))
            continue
        if not _is_float(a.dtype):
            report.bad_values.append(f"{key!r} has dtype {a.dtype}, expected floating point")
            continue
        f32 = a.astype(np.float32)
        if not np.isfinite(f32).all():
            n_bad = int(np.size(f32) - np.isfinite(f32).sum())
            report.bad_values.append(f"{key!r} has {n_bad} NaN/inf value(s) (as float32)")
            continue
        if a.dtype != np.float32:
            report.cast_from[str(a.dtype)] = report.cast_from.get(str(a.dtype), 0) + 1
        pairs.append((e, f32))
    for key, a in sd.items():
        leaf = torch_module_and_leaf(key)[1]
        is_stat = leaf in ("running_mean", "running_var", "num_batches_tracked")
        if is_stat:
            report.stat_tensors += 1
            report.stat_elements += int(np.size(a))
        else:
            report.param_tensors += 1
            report.param_elements += int(np.size(a))
    if report.problems and arch is not None:
        try:
            looks = infer_arch(sd)
            if looks != arch:
                report.hint = f"the state dict looks like {looks}, not {arch}"
        except BridgeError:
            pass
    return report, pairs


def inspect_state_dict(
    source: Any,
    arch: str | None = None,
    num_classes: int | None = None,
    prefix: str | None = None,
    entry: str | None = None,
) -> BridgeReport:
    """Check ``source`` (as :func:`from_torchvision` takes it) without raising on key/shape/value problems.

    File-reading failures still raise :class:`BridgeError` (there is nothing to inspect). ``report.notes`` says
    what was unwrapped or stripped to reach the state dict.
    """
    sd, located = read_source(source, prefix=prefix, entry=entry)
    return _check(sd, arch, num_classes, located)[0]


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def replace_head(variables: dict[str, Any], report: BridgeReport, num_classes: int | None, seed: int) -> dict[str, Any]:
    """``variables`` converted with the source's own head, adapted to ``num_classes`` (None: kept; 0: fc dropped;
    another size: a new fc from ``seed``). Updates ``report`` (num_classes, dropped, fc_reinitialized, seed)."""
    assert report.arch is not None
    source_classes = report.source_num_classes
    target = source_classes if num_classes is None else int(num_classes)
    if target < 0:
        raise BridgeError(f"num_classes must be >= 0, got {target}")
    report.num_classes = target
    if target == source_classes:
        return variables
    params = {k: v for k, v in variables["params"].items() if k != "fc"}
    report.dropped = list(_FC_KEYS) if source_classes > 0 else []
    report.fc_reinitialized = target > 0
    if target > 0:
        report.seed = seed
        params["fc"] = new_head(get_spec(report.arch).num_features, target, seed)
        log.warning(
            "%s: fc replaced: checkpoint has %d classes, new %d-class head initialised from seed %d",
            report.source,
            source_classes,
            target,
            seed,
        )
    else:
        log.info("%s: fc dropped (num_classes=0): a backbone without classifier", report.source)
    return {**variables, "params": params}


def from_torchvision(
    source: Any,
    arch: str | None = None,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
    strict: bool = True,
    prefix: str | None = None,
    entry: str | None = None,
    trust_pickle: bool = False,
) -> Conversion:
    """Convert torchvision ResNet weights to ``(module, variables)``.

    ``source``: a torch ``nn.Module``, a state dict (torch tensors or numpy arrays), a .pth/.pt/.safetensors path
    (a training checkpoint too: see :func:`~jaxtl.bridge.checkpoints.locate` for ``entry=``/``prefix=``), or a
    torchvision weights enum such as ``ResNet50_Weights.IMAGENET1K_V2`` (fetched and cached as
    :func:`~jaxtl.bridge.pretrained` does). ``arch``: a registered resnet-family name; inferred from keys and shapes
    when None. ``num_classes``: None keeps the checkpoint's fc; another value drops it and initialises a new head
    from ``seed`` (0 = backbone, no fc). ``dtype`` is the module's compute dtype; variables are always float32
    (``num_batches_tracked`` int32). ``strict=False`` ignores unexpected keys and fills missing
    ``num_batches_tracked`` with 0 (as torch does for old checkpoints); everything else is still an error.
    ``trust_pickle=True`` reads a .pth with ``weights_only=False`` (runs its pickled code; warns).
    The result unpacks as ``module, variables`` and has ``.report`` and ``.card``.
    Raises BridgeError listing every missing/unexpected/mis-shaped key and every bad value at once.
    """
    from .hub import is_weights_enum

    if is_weights_enum(source):
        from .hub import pretrained

        if arch is not None or prefix is not None or entry is not None:
            raise BridgeError("a torchvision weights enum fixes the architecture; arch/prefix/entry do not apply")
        loaded = pretrained(weights=source, num_classes=num_classes, dtype=dtype, seed=seed)
        return Conversion(loaded.module, loaded.variables, loaded.report, loaded.card)
    sd, located = read_source(source, prefix=prefix, entry=entry, trust_pickle=trust_pickle)
    origin = located.origin
    report, pairs = _check(sd, arch, num_classes, located, strict=strict)
    if report.problems:
        raise BridgeError(
            format_problems(f"cannot convert {origin} to {report.arch or 'a known architecture'}", report.problems)
        )
    assert report.arch is not None
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for e, a in pairs:
        _set(variables[e.collection], e.path, jnp.asarray(e.rule.to_flax(a)))
    if report.fc_reinitialized:
        report.seed = seed
        variables["params"]["fc"] = new_head(get_spec(report.arch).num_features, report.num_classes, seed)
        log.warning(
            "%s: fc replaced: checkpoint has %d classes, new %d-class head initialised from seed %d",
            origin,
            report.source_num_classes,
            report.num_classes,
            seed,
        )
    elif report.dropped:
        log.info("%s: fc dropped (num_classes=0): a backbone without classifier", origin)
    if report.ignored:
        log.warning("%s: ignored %d unexpected key(s): %s", origin, len(report.ignored), ", ".join(report.ignored[:10]))
    if report.cast_from:
        log.info("%s: cast to float32 from %s", origin, report.cast_from)
    for note in located.notes():
        log.info("%s: %s", origin, note)
    module = jaxtl.create(report.arch, num_classes=report.num_classes, dtype=dtype)
    return Conversion(module, variables, report, _card_of(report, dtype))


def _card_of(report: BridgeReport, dtype: Any) -> ModelCard:
    """The card a jaxtl Flax-layout file carried (adapted to the head), else :func:`default_card`."""
    assert report.arch is not None
    if report.card is None:
        return default_card(report.arch, report.num_classes, report.source, dtype)
    try:
        card = ModelCard.from_dict(report.card, where=report.source)
    except ValueError as e:
        raise BridgeError(f"{report.source}: the model card in its metadata is not valid: {e}") from e
    if card.arch != report.arch:
        raise BridgeError(f"{report.source}: its model card says {card.arch}, its variables are {report.arch}")
    if card.num_classes != report.num_classes:
        kind = "classifier" if report.num_classes else "backbone"
        card = card.replace(num_classes=report.num_classes, class_names=(), kind=kind)
    return card.replace(dtype=dtype_name(dtype))


def to_torchvision(variables: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Flax ``{"params", "batch_stats"}`` of ``arch`` -> a torch state dict that
    ``torchvision.models.<arch>(num_classes=k).load_state_dict(sd, strict=True)`` accepts (k from ``fc``; 0 = none:
    load it into a model whose ``fc`` you replace, or with ``strict=False``). Exact: no arithmetic, only transposes."""
    import torch

    if arch not in jaxtl.models.list_models(FAMILY):
        raise BridgeError(
            f"{arch!r} is not a torchvision-convertible architecture: {', '.join(jaxtl.models.list_models(FAMILY))}"
        )
    missing_cols = [c for c in ("params", "batch_stats") if c not in variables]
    if missing_cols:
        raise BridgeError(f"variables lack the collection(s) {missing_cols}; expected 'params' and 'batch_stats'")
    flat: dict[tuple[str, ...], Any] = {}
    for c in ("params", "batch_stats"):
        for kp, leaf in jax.tree_util.tree_flatten_with_path(variables[c])[0]:
            flat[(c, *(str(getattr(k, "key", k)) for k in kp))] = leaf
    fc_kernel = flat.get(("params", "fc", "kernel"))
    num_classes = int(fc_kernel.shape[-1]) if fc_kernel is not None and len(fc_kernel.shape) == 2 else 0
    entries = _expected(arch, num_classes)
    wanted = {(e.collection, *e.path): e for e in entries}
    problems = [f"missing variable {'/'.join(k)!r}" for k in wanted if k not in flat]
    problems += [f"unexpected variable {'/'.join(k)!r}" for k in flat if k not in wanted]
    out: dict[str, Any] = {}
    for key, e in wanted.items():
        if key not in flat:
            continue
        a = np.asarray(flat[key])
        name = "/".join(key)
        if tuple(a.shape) != e.flax_shape:
            problems.append(f"shape of {name!r} is {list(a.shape)}, {arch} needs {list(e.flax_shape)}")
        elif e.torch_key.endswith("num_batches_tracked"):
            if a.dtype.kind not in "iu":
                problems.append(f"{name!r} has dtype {a.dtype}, expected an integer")
            else:
                out[e.torch_key] = torch.tensor(int(a), dtype=torch.int64)
        elif not _is_float(a.dtype):
            problems.append(f"{name!r} has dtype {a.dtype}, expected floating point")
        else:
            t = np.ascontiguousarray(e.rule.to_torch(a.astype(np.float32)))
            out[e.torch_key] = torch.from_numpy(t.copy())
    if problems:
        raise BridgeError(format_problems(f"cannot export variables as torchvision {arch}", problems))
    return out
