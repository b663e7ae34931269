"""Parameter groups: the one source of truth for what trains, at which learning rate, and what is frozen.

A :class:`ParamGroups` is a list of ``(regex, group)`` rules over ``"layer4/1/conv2/kernel"``-style paths (first
match wins, the rest fall in ``default``) and a :class:`Group` per name. The constructors that take a model read
its family description (:class:`~jaxtl.models.Classifier`: head path, no-weight-decay rule, layers from the input
up), so they hold for ResNets, ViTs and ConvNeXts alike. The train state holds the groups; everything else derives
from them, whichever public route built the state:

- the optimizer: ``optax.partition`` with ``optax.set_to_zero()`` for frozen groups (exact zero updates, no
  optimizer state for those leaves), the user's optimizer (scaled by the group's ``lr_scale``) for the others;
- the step: a frozen backbone (only the head trains) runs BatchNorm on running averages and is not differentiated;
  partly frozen models keep the statistics of modules without a trainable parameter.

``optax.masked`` is the trap this avoids: it passes the *raw gradient* through as the update of masked-out leaves,
so a "frozen" backbone moves.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxtl.models import HEAD, Classifier, create, head_path

Params = Mapping[str, Any]
TxFactory = Callable[["Group"], optax.GradientTransformation]
Model = Classifier | str  # a jaxtl model, or a registered architecture's name
Head = str | Classifier  # a head path ("fc", "heads/head") or the model (default HEAD: a ResNet's "fc")


def _model(model: Model) -> Classifier:
    return create(model) if isinstance(model, str) else model  # type: ignore[no-any-return]


def _head_rule(head: Head) -> str:
    """The regex of a head's parameter paths: ``"heads/head"`` or the model -> ``"^heads/head/"``."""
    return "^" + re.escape("/".join(head_path(head))) + "/"


def _both(a: str, b: str) -> str:
    """A regex that ``re.search``-matches exactly the paths both ``a`` and ``b`` match."""
    return f"^(?=.*?(?:{a}))(?=.*?(?:{b}))"


def param_paths(params: Params) -> list[str]:
    """The ``"a/b/c"`` paths of every leaf of a nested params dict, in flattening order."""
    return list(traverse_util.flatten_dict(dict(params), sep="/").keys())


@dataclasses.dataclass(frozen=True)
class Group:
    """How one group of parameters trains: ``frozen`` (no update, no optimizer state), or at ``lr_scale`` times
    the learning rate with ``weight_decay_scale`` times the weight decay (the latter needs an optimizer factory,
    e.g. ``fit(optimizer={...})``, since a built optax optimizer's decay cannot be rescaled from outside)."""

    frozen: bool = False
    lr_scale: float = 1.0
    weight_decay_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.frozen and not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0 (use frozen=True to freeze), got {self.lr_scale}")
        if not self.weight_decay_scale >= 0:
            raise ValueError(f"weight_decay_scale must be >= 0, got {self.weight_decay_scale}")


FROZEN = Group(frozen=True)
TRAINABLE = Group()


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """``rules`` ``((regex, group_name), ...)`` matched with ``re.search`` in order; unmatched paths go to
    ``default``. ``groups`` maps every name used to its :class:`Group`. A rule that matches no parameter is an
    error (a typo would otherwise train the wrong thing silently)."""

    rules: tuple[tuple[str, str], ...] = ()
    groups: Mapping[str, Group] = dataclasses.field(default_factory=lambda: {"all": TRAINABLE})
    default: str = "all"
    strict: bool = True  # False: rules may match nothing (groups made from a family description, e.g. no head)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple((str(p), str(g)) for p, g in self.rules))
        object.__setattr__(self, "groups", dict(self.groups))
        names = {g for _, g in self.rules} | {self.default}
        missing = sorted(names - set(self.groups))
        if missing:
            raise ValueError(f"parameter groups {missing} are used by a rule but not defined; defined: {sorted(self)}")
        for pattern, _ in self.rules:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"parameter-group pattern {pattern!r} is not a valid regex: {err}") from None

    def __iter__(self) -> Any:
        return iter(self.groups)

    def __hash__(self) -> int:
        return hash((self.rules, tuple(sorted(self.groups.items())), self.default, self.strict))

    # --- the usual specs ---

    @classmethod
    def all_trainable(cls) -> ParamGroups:
        """Every parameter trains at the optimizer's learning rate."""
        return cls()

    @classmethod
    def head_only(cls, head: Head = HEAD) -> ParamGroups:
        """Only the classifier head trains (``head``: the model, or its head path such as ``"heads/head"``; default
        ``"fc"``, a ResNet's); the backbone is frozen (BatchNorm on running averages)."""
        return cls(
            rules=((_head_rule(head), "head"),), groups={"head": TRAINABLE, "backbone": FROZEN}, default="backbone"
        )

    @classmethod
    def finetune(cls, head: Head = HEAD, backbone_lr_scale: float = 1.0, *, no_decay: bool = False) -> ParamGroups:
        """Everything trains; the backbone at ``backbone_lr_scale`` times the head's learning rate. ``head`` is the
        head's path or the model; ``no_decay=True`` (needs the model) also takes weight decay off the model's
        no-decay parameters (:meth:`no_weight_decay`)."""
        if no_decay:
            if not isinstance(head, Classifier):
                raise TypeError("finetune(no_decay=True) needs the model as head= (it knows its no-decay rule)")
            if backbone_lr_scale == 1.0:
                return cls.no_weight_decay(head)
            scales = {"head": 1.0, "backbone": backbone_lr_scale}
            return cls._with_no_decay(head, ((_head_rule(head), "head"),), scales, "backbone")
        if backbone_lr_scale == 1.0:
            return cls()
        return cls(
            rules=((_head_rule(head), "head"),),
            groups={"head": TRAINABLE, "backbone": Group(lr_scale=backbone_lr_scale)},
            default="backbone",
        )

    @classmethod
    def no_weight_decay(cls, model: Model) -> ParamGroups:
        """Everything trains; the model's no-decay parameters (norms, biases, a ViT's class token and position
        embedding, ConvNeXt's layer scale: its ``no_decay`` rule) get ``weight_decay_scale=0``."""
        return cls._with_no_decay(_model(model), (), {"all": 1.0}, "all")

    @classmethod
    def layer_decay(cls, model: Model, decay: float = 0.75, *, no_decay: bool = True) -> ParamGroups:
        """Layer-wise learning-rate decay: the top layer (final norm and head) trains at the full rate, each layer
        below at ``decay`` times the one above, down to the stem or embeddings at ``decay ** len(layers)``; the
        layers are the model's ``layer_patterns`` (each ViT encoder block, each ConvNeXt or ResNet block). With
        ``no_decay`` (default) the model's no-decay parameters also get ``weight_decay_scale=0`` in every layer."""
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"layer decay must lie in (0, 1], got {decay}")
        module = _model(model)
        patterns = tuple(module.layer_patterns)
        top = len(patterns)
        width = len(str(top))
        names = [f"layer{str(i).zfill(width)}" for i in range(top + 1)]
        layers = tuple(zip(patterns, names[:top], strict=True))
        scales = {name: decay ** (top - i) for i, name in enumerate(names)}
        if no_decay:
            return cls._with_no_decay(module, layers, scales, names[top])
        groups = {n: Group(lr_scale=s) for n, s in scales.items()}
        return cls(rules=layers, groups=groups, default=names[top], strict=False)

    @classmethod
    def defaults(cls, model: Model) -> ParamGroups:
        """The groups a full fine-tune of ``model`` starts from: :meth:`no_weight_decay` for families that train
        so (ViT, ConvNeXt: the model's ``decay_norms`` is False), every parameter alike otherwise (ResNet)."""
        module = _model(model)
        return cls() if module.decay_norms else cls.no_weight_decay(module)

    @classmethod
    def _with_no_decay(
        cls, module: Classifier, layers: tuple[tuple[str, str], ...], scales: Mapping[str, float], default: str
    ) -> ParamGroups:
        """``layers`` ((regex, name), first match) split in two by the model's no-decay rule; ``default`` takes the
        rest. Each name trains at ``scales[name]``; its ``<name>_no_decay`` half without weight decay."""
        nd = module.no_decay
        rules = [(_both(pattern, nd), f"{name}_no_decay") for pattern, name in layers]
        rules += [(pattern, name) for pattern, name in layers]
        rules.append((nd, f"{default}_no_decay"))
        groups: dict[str, Group] = {}
        for name, scale in scales.items():
            groups[name] = Group(lr_scale=scale)
            groups[f"{name}_no_decay"] = Group(lr_scale=scale, weight_decay_scale=0.0)
        return cls(rules=tuple(rules), groups=groups, default=default, strict=False)

    @classmethod
    def trainable(cls, patterns: str | Sequence[str]) -> ParamGroups:
        """Paths matching any of ``patterns`` train; everything else is frozen."""
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        if not pats:
            raise ValueError("trainable is an empty list of patterns: nothing would be trained")
        return cls(
            rules=tuple((p, "trainable") for p in pats),
            groups={"trainable": TRAINABLE, "frozen": FROZEN},
            default="frozen",
        )

    @classmethod
    def of(cls, spec: ParamGroups | str | Sequence[str] | None) -> ParamGroups:
        """``spec`` as groups: None = all trainable, a regex or list of regexes = :meth:`trainable`."""
        if spec is None:
            return cls()
        if isinstance(spec, ParamGroups):
            return spec
        if callable(spec):
            raise TypeError("parameter groups are (regex, group) rules, not a predicate; use ParamGroups(rules=...)")
        return cls.trainable(spec)

    # --- what derives from them ---

    def assign(self, params: Params) -> dict[str, str]:
        """``{path: group name}`` for every parameter; ValueError naming a rule that matches nothing, or when
        nothing at all would train."""
        paths = param_paths(params)
        compiled = [(re.compile(p), g) for p, g in self.rules]
        used = [False] * len(compiled)
        out = {}
        for path in paths:
            name = self.default
            for i, (rx, g) in enumerate(compiled):
                if rx.search(path):
                    name, used[i] = g, True
                    break
            out[path] = name
        unused = [p for (p, _), u in zip(self.rules, used) if not u]
        if unused and self.strict:
            sample = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
            raise ValueError(f"parameter-group pattern(s) {unused} match no parameter path (paths look like: {sample})")
        if all(self.groups[g].frozen for g in out.values()):
            raise ValueError(f"parameter groups {self.rules or 'default'} leave no parameter trainable")
        return out

    def labels(self, params: Params) -> Any:
        """A pytree shaped like ``params`` holding each leaf's group name (what ``optax.partition`` takes)."""
        return traverse_util.unflatten_dict(self.assign(params), sep="/")

    def trainable_paths(self, params: Params) -> tuple[str, ...]:
        return tuple(p for p, g in self.assign(params).items() if not self.groups[g].frozen)

    def optimizer(self, tx: optax.GradientTransformation | TxFactory, params: Params) -> optax.GradientTransformation:
        """The one optimizer a state trains with: ``tx`` per trainable group (scaled by its ``lr_scale``), exact
        zeros and no state for frozen groups. ``tx`` is an optax optimizer or a factory ``Group -> optimizer``
        (which applies ``lr_scale`` and ``weight_decay_scale`` itself)."""
        assign = self.assign(params)
        used = sorted(set(assign.values()))
        if len(used) == 1 and not self.groups[used[0]].frozen and self.groups[used[0]] == TRAINABLE:
            return tx(TRAINABLE) if callable(tx) and not isinstance(tx, optax.GradientTransformation) else tx
        txs: dict[str, optax.GradientTransformation] = {}
        for name in used:
            group = self.groups[name]
            if group.frozen:
                txs[name] = optax.set_to_zero()
            elif callable(tx) and not isinstance(tx, optax.GradientTransformation):
                txs[name] = tx(group)
            else:
                if group.weight_decay_scale != 1.0:
                    raise ValueError(
                        f"group {name!r} sets weight_decay_scale, which needs an optimizer factory "
                        "(fit(optimizer={...}) or a callable Group -> optax optimizer), not a built optimizer"
                    )
                txs[name] = tx if group.lr_scale == 1.0 else optax.chain(tx, optax.scale(group.lr_scale))
        return optax.partition(txs, traverse_util.unflatten_dict(assign, sep="/"))


def frozen_stat_paths(batch_stats: Params, trainable: Iterable[str]) -> tuple[str, ...]:
    """batch_stats leaves whose module has no trainable parameter (its statistics must not change)."""
    trainable_modules = {p.rsplit("/", 1)[0] for p in trainable}
    flat = traverse_util.flatten_dict(dict(batch_stats), sep="/")
    return tuple(p for p in flat if p.rsplit("/", 1)[0] not in trainable_modules)


def is_backbone_frozen(trainable: Iterable[str], all_paths: Iterable[str], head: Head = HEAD) -> bool:
    """True when the trainable paths are exactly the classifier head's (``head``: its path or the model) and the
    model has other params."""
    trainable, all_paths = set(trainable), set(all_paths)
    prefix = "/".join(head_path(head)) + "/"
    head_paths = {p for p in all_paths if p.startswith(prefix)}
    return bool(head_paths) and trainable == head_paths and head_paths != all_paths


def check_optimizer_respects(tx: optax.GradientTransformation, params: Params, trainable: Sequence[str]) -> None:
    """Refuse an optimizer that freezes leaves the groups call trainable (e.g. one already wrapped in its own
    ``optax.partition``/``set_to_zero``): the step would then run the model as if they trained while they don't.

    Probed on a size-1 copy of every leaf (same tree and ranks, so cheap): a trainable leaf whose update is exactly
    zero while others move. An optimizer whose first update is zero everywhere (warm-up from 0) cannot be judged
    and passes.
    """
    probe = jax.tree.map(lambda x: jnp.ones((1,) * np.ndim(x), jnp.result_type(x)), dict(params))
    updates, _ = tx.update(probe, tx.init(probe), probe)
    flat = traverse_util.flatten_dict(dict(updates), sep="/")
    zero = [p for p in trainable if not np.any(np.asarray(flat[p]))]
    if zero and len(zero) < len(trainable):
        listed = ", ".join(zero[:5]) + (f" and {len(zero) - 5} more" if len(zero) > 5 else "")
        raise ValueError(
            f"the optimizer gives zero updates to trainable parameters ({listed}): it freezes leaves on its own. "
            "Give freezing once, as parameter groups (TrainState.create(..., groups=...) or fit(groups=...)), "
            "and pass a plain optimizer"
        )


def split_params(params: Params, paths: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``params`` into flat ``{path: leaf}`` dicts (selected, rest)."""
    selected = set(paths)
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return {k: v for k, v in flat.items() if k in selected}, {k: v for k, v in flat.items() if k not in selected}


def merge_params(*flats: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_params`: one nested params dict from flat ``{path: leaf}`` dicts."""
    merged: dict[str, Any] = {}
    for flat in flats:
        merged.update(flat)
    return traverse_util.unflatten_dict(merged, sep="/")  # type: ignore[no-any-return]
