"""Linear probe: compute a frozen backbone's pooled features once, then train only the head on them.

With the backbone frozen and no augmentation, every epoch of :func:`jaxtl.train.fit` recomputes identical features;
here they are computed once (data-parallel, eval-mode BatchNorm) and the head is trained on the cached ``[N, F]``
array with the same data order (``epoch_indices``), so the head matches what frozen-backbone ``fit`` trains.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtl.data.batching import epoch_indices, run_length
from jaxtl.data.protocol import Normalization, Source
from jaxtl.models.heads import HEAD, Head, get_head, head_path, init_head, new_head, set_head
from jaxtl.models.protocol import Classifier
from jaxtl.train.losses import CrossEntropy, topk_correct
from jaxtl.train.parallel import Parallel
from jaxtl.train.progress import Progress
from jaxtl.train.step import prepare_images


def _features_step(
    variables: Any,
    batch: dict[str, jax.Array],
    *,
    module: nn.Module,
    feature: str,
    normalization: Normalization | None,
    axis_name: Any,
) -> Any:
    del axis_name  # eval mode: no cross-device statistics
    images = prepare_images(batch["images"], normalization)
    out: Any = module.apply(variables, images, train=False, return_features=True)
    if feature not in out:
        raise KeyError(f"model has no feature {feature!r}; it returns {sorted(out)}")
    return out[feature].astype(jnp.float32)


@functools.lru_cache(maxsize=32)
def _feature_fn(
    module: nn.Module, feature: str, parallel: str, normalization: Normalization | None
) -> tuple[Parallel, Any]:
    # One compiled feature function per (module, feature, wrapper): repeated extraction (every epoch of a sweep,
    # every seed of the demo) must not retrace and recompile. Keyed on the global device set too, via Parallel.
    par = Parallel(parallel)
    fn = par.map(
        functools.partial(_features_step, module=module, feature=feature, normalization=normalization),
        donate=False,
        n_out=1,
        batch_out=True,
    )
    return par, fn


def extract_features(
    module: nn.Module,
    variables: dict[str, Any],
    dataset: Source,
    batch_size: int = 256,
    *,
    parallel: str = "auto",
    feature: str = "pre_logits",
    out_path: str | pathlib.Path | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Features ``[N, F]`` (float32) of every example of ``dataset`` (any :class:`~jaxtl.data.protocol.Source`,
    streamed once through its eval transform), in order; eval-mode BatchNorm, ragged tail kept.

    With ``out_path`` the features are written into a ``.npy`` memory map there (for sets too large for memory)
    and the returned array is that memmap. Multi-process: every process returns all ``[N, F]`` features; only
    process 0 writes ``out_path`` (the others keep theirs in memory), so a shared folder is never written twice.
    ``progress=True`` reports the batches as ``fit`` reports steps (:class:`~jaxtl.train.progress.Progress`: a bar
    on a terminal, else a plain line every 30 s or 10 %; process 0 only).
    """
    par, fn = _feature_fn(module, feature, parallel, dataset.normalization)
    batch_size = -(-batch_size // par.num_devices) * par.num_devices  # a multiple of the devices (padded, masked)
    placed = par.put_state({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    out: np.ndarray | None = None
    n, pos = len(dataset), 0
    bar = Progress(-(-n // batch_size), desc="features", enabled=progress and par.process_index == 0)
    bar.start()
    # Each process feeds its slice; gather() returns the global batch's features on every process.
    for batch in par.full_pass(dataset, batch_size):
        feats = par.gather(fn(placed, batch))
        bar.update(1)
        if out is None:
            shape = (n, *feats.shape[1:])
            if out_path is not None and par.process_index == 0:
                out = np.lib.format.open_memmap(str(out_path), mode="w+", dtype=np.float32, shape=shape)
            else:
                out = np.empty(shape, np.float32)
        take = min(batch_size, n - pos)
        out[pos : pos + take] = feats[:take]
        pos += take
    bar.close()
    assert out is not None
    if isinstance(out, np.memmap):
        out.flush()
    return out


@dataclasses.dataclass
class LinearProbe:
    """The trained head (``{"kernel": [F, K], "bias": [K]}``), the full variables with it written in (when
    ``variables`` was given) and the per-step history."""

    head: dict[str, np.ndarray]
    variables: dict[str, Any] | None
    history: list[dict[str, float]]


_SCAN_BYTES = 1 << 30  # features up to 1 GiB are trained on in one compiled scan


def _head_step(
    carry: tuple[dict[str, jax.Array], Any],
    xy: tuple[jax.Array, jax.Array],
    *,
    tx: optax.GradientTransformation,
    loss: CrossEntropy,
) -> tuple[tuple[dict[str, jax.Array], Any], dict[str, jax.Array]]:
    """One optimizer step of the linear head on a batch of features ``[B, F]`` and labels ``[B]``; the mean loss
    is weighted as in ``fit`` (divided by the batch's class-weight sum when ``loss`` has class weights)."""
    h, opt_state = carry
    x, y = xy

    def loss_fn(h: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        logits = x @ h["kernel"] + h["bias"][None, :]
        per_example = loss.per_example(logits, {"labels": y}, x)
        weights = loss.example_weight(logits, {"labels": y})
        if weights is None:
            return jnp.mean(per_example), logits
        return jnp.sum(per_example) / jnp.sum(weights), logits

    (value, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(h)
    updates, opt_state = tx.update(grads, opt_state, h)
    metrics = {"loss": value, "top1": jnp.mean(topk_correct(logits, y, 1))}
    return (optax.apply_updates(h, updates), opt_state), metrics


# Module-level and keyed on the optimizer object (static): probing again with the same ``tx`` (another epoch
# count, another seed) reuses the compiled code instead of compiling a fresh closure per call.
_head_step_jit = jax.jit(_head_step, static_argnames=("tx", "loss"), donate_argnums=(0,))


@functools.partial(jax.jit, static_argnames=("tx", "loss"), donate_argnums=(0,))
def _head_run(
    carry: Any,
    feats: jax.Array,
    labs: jax.Array,
    idx: jax.Array,
    *,
    tx: optax.GradientTransformation,
    loss: CrossEntropy,
) -> Any:
    """All steps in one compiled scan; ``idx`` ``[steps, B]`` holds each step's example indices."""
    return jax.lax.scan(lambda c, i: _head_step(c, (feats[i], labs[i]), tx=tx, loss=loss), carry, idx)


def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    tx: optax.GradientTransformation,
    *,
    variables: dict[str, Any] | None = None,
    classifier: Head = HEAD,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    loss: CrossEntropy | None = None,
) -> LinearProbe:
    """Train a linear head on cached ``features`` ``[N, F]`` and ``labels`` ``[N]`` with ``tx``; one device.

    ``classifier`` is the model (a :class:`~jaxtl.models.Classifier`) or its head path (``"fc"``,
    ``"heads/head"``). The head starts from the one at that path in ``variables`` when given (the same start as
    frozen-backbone ``fit``), else from a new head by the head rule (:func:`~jaxtl.models.init_head`, from
    ``seed``) when ``classifier`` is the model, else (features without a model) from a bare linear layer's init
    (:func:`~jaxtl.models.new_head`). Batches follow ``fit``'s order (seeded per-epoch permutation, ragged
    last batch dropped), so the same ``seed``, ``batch_size`` and ``tx`` give the head ``fit`` would train.
    Labels outside ``[0, num_classes)`` are an error; a NaN/inf loss raises ``NonFiniteLossError`` naming the first
    bad step, and no head is returned. ``loss``: a :class:`~jaxtl.train.losses.CrossEntropy` (label smoothing,
    class weights as ``fit`` applies them; mixup/cutmix need images and are refused here); default plain.
    """
    loss = CrossEntropy() if loss is None else loss
    if not isinstance(loss, CrossEntropy) or loss.mixing is not None:
        raise ValueError(f"a linear probe trains with a CrossEntropy loss without mixup/cutmix, got {loss!r}")
    features = np.asarray(features) if not isinstance(features, np.memmap) else features
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"features must be [N, F] and labels [N], got {features.shape} and {labels.shape}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels lie in [{int(labels.min())}, {int(labels.max())}], but the head has {num_classes} outputs "
            f"(labels must lie in [0, {num_classes}))"
        )
    n, f = features.shape
    spe, total = run_length(n, batch_size, epochs, steps)
    path = "/".join(head_path(classifier))
    if variables is not None:
        start = get_head(variables, classifier)
        if start is None:
            raise KeyError(
                f"variables have no classifier head {path!r}; top-level params: {sorted(variables['params'])}"
            )
        # A copy: the step donates the head, and the caller's arrays must survive.
        head = {k: jnp.array(v, copy=True) for k, v in start.items()}
    elif isinstance(classifier, Classifier):
        head = init_head(classifier, num_classes, seed)
    else:
        head = new_head(f, num_classes, seed)
    if head["kernel"].shape != (f, num_classes):
        raise ValueError(f"{path}/kernel has shape {head['kernel'].shape}, expected {(f, num_classes)}")

    # Every step's batch indices, in fit's order: seeded per-epoch permutation, ragged last batch dropped.
    order = [epoch_indices(n, seed, e)[: spe * batch_size].reshape(spe, batch_size) for e in range(-(-total // spe))]
    batch_idx = np.concatenate(order)[:total]
    epochs_of = np.arange(total) // spe
    carry = (head, tx.init(head))
    metrics: dict[str, np.ndarray]
    if not isinstance(features, np.memmap) and features.nbytes <= _SCAN_BYTES:
        # Features fit on the device: the whole run is one compiled scan, no per-step host round trip.
        feats, labs = jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32)
        carry, m = _head_run(carry, feats, labs, batch_idx, tx=tx, loss=loss)
        metrics = {k: np.asarray(v) for k, v in m.items()}
    else:
        # Memory-mapped (large) features: stream one batch at a time from the host.
        per_step = []
        for idx in batch_idx:
            xy = (jnp.asarray(np.asarray(features[idx], np.float32)), jnp.asarray(np.asarray(labels[idx], np.int32)))
            carry, m = _head_step_jit(carry, xy, tx=tx, loss=loss)
            per_step.append(m)
        metrics = {k: np.asarray([float(m[k]) for m in per_step]) for k in ("loss", "top1")}
    head = carry[0]
    bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
    if len(bad):
        from jaxtl.train.fit import NonFiniteLossError

        raise NonFiniteLossError(int(bad[0]) + 1, float(metrics["loss"][bad[0]]), None)
    history = [
        {
            "step": i + 1,
            "epoch": int(epochs_of[i]),
            "loss": float(metrics["loss"][i]),
            "top1": float(metrics["top1"][i]),
        }
        for i in range(total)
    ]
    head_np = {k: np.asarray(v) for k, v in head.items()}
    new_vars = None
    if variables is not None:
        new_vars = set_head(variables, head_np, classifier)
    return LinearProbe(head_np, new_vars, history)
