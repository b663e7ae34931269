"""Per-device train and eval steps, written once with an axis name; :mod:`jaxtl.train.parallel` maps them.

Every cross-device quantity is an explicit collective over ``axis_name``: the loss is the sum of per-example
losses divided by the *global* count of real examples, gradients are ``psum``-ed, and BatchNorm computes its batch
statistics over the whole global batch (the module is cloned with ``axis_name``). So every replica ends a step
with identical state, and 1, 4 or 8 devices give the same numbers for the same global batch.
With ``axis_name=None`` the step runs unmapped on one device (plain ``jax.jit``).

Freezing (see :class:`~jaxtl.train.state.TrainState`):

- backbone frozen (only the head trains): the model runs with ``train=False`` (BatchNorm on running averages,
  batch_stats never change) and ``jax.grad`` is taken w.r.t. the head only, the backbone being a closed-over
  constant, so no backward pass through the backbone is traced or compiled.
- partly frozen backbone: BatchNorm runs in train mode (batch statistics normalise every layer), gradients are
  taken w.r.t. the trainable leaves only, and the running statistics of modules without a trainable parameter are
  restored after the step, so frozen modules keep their statistics exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax import lax

from jaxtl.train.ema import update_ema
from jaxtl.train.groups import merge_params, split_params
from jaxtl.train.losses import CrossEntropy, Loss, get_loss, hard_labels, topk_correct
from jaxtl.train.mixing import mix_batch
from jaxtl.train.state import Normalization, TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def _psum(x: Any, axis_name: str | None) -> Any:
    return x if axis_name is None else lax.psum(x, axis_name)


def with_axis(module: nn.Module, axis_name: str | None) -> nn.Module:
    """``module`` whose BatchNorms average batch statistics over ``axis_name``, its sub-module fields included
    (an Autoencoder's ``encoder``), wherever a module has the ``axis_name`` option."""
    updates: dict[str, Any] = {}
    for field in dataclasses.fields(module):
        value = getattr(module, field.name, None)
        if field.name != "parent" and isinstance(value, nn.Module):
            new = with_axis(value, axis_name)
            if new is not value:
                updates[field.name] = new
    if hasattr(module, "axis_name") and module.axis_name != axis_name:
        updates["axis_name"] = axis_name
    return module.clone(**updates) if updates else module


def _check_loss(loss: Loss | str, batch: Batch) -> Loss:
    loss = get_loss(loss)
    if loss.needs_labels and "labels" not in batch:
        raise ValueError(f"loss {loss!r} needs batch['labels']; use Reconstruction() for unlabeled (autoencoder) data")
    return loss


def prepare_images(images: jax.Array, normalization: Normalization | None) -> jax.Array:
    """Model input from a batch's images: uint8 pixels ``[n, H, W, C]`` become ``(x / 255 - mean) / std`` in float32
    on the device (``normalization`` = ``(mean, std)``, per channel); float images pass unchanged."""
    if images.dtype != jnp.uint8:
        return images
    if normalization is None:
        raise ValueError("uint8 images need the state's normalization (mean, std); the data source gives it")
    mean, std = (jnp.asarray(v, jnp.float32).reshape(1, 1, 1, -1) for v in normalization)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def _mask(batch: Batch) -> jax.Array:
    n = batch["images"].shape[0]
    return batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones((n,), jnp.float32)


def _denominator(
    loss: Loss, out: jax.Array, batch: Batch, mask: jax.Array, count: jax.Array, axis_name: str | None
) -> jax.Array:
    """The global sum of the examples' weights: the count of real examples unless the loss weighs them (class
    weights), then the psum of their weights (torch's weighted mean over the whole global batch)."""
    weights = loss.example_weight(out, batch)
    if weights is None:
        return count
    return _psum(jnp.sum(lax.stop_gradient(weights) * mask), axis_name)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    axis_name: str | None = "data",
    loss: Loss | str = CrossEntropy(),  # noqa: B008  (immutable)
    augment: Augment | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer step on this device's shard ``{"images": [n,H,W,C], "labels": [n], "mask": [n]?}``.

    ``augment(rng, images) -> images`` runs on device; each device folds its axis index into the step key. Models
    with dropout or stochastic depth get a ``"dropout"`` rng drawn the same way (its own key per step and device).
    The loss says what else a training batch goes through: ``Reconstruction(corrupt=fn)`` (denoising) changes only
    what the model sees, the loss comparing with the (augmented) clean input; ``CrossEntropy(mixing=Mixing(...))``
    applies mixup/cutmix over the global batch, drawn from the step key alone (the same on any device count);
    ``top1`` is then measured against each example's dominant label. uint8 images are normalised on device
    (:func:`prepare_images`). Returns the new state and global metrics ``loss``, ``grad_norm``, ``count`` and, for
    a labeled loss, ``top1``.

    The state's optional parts act here: gradient accumulation (``state.accumulate``, in ``state.tx``), the
    ``lr_scale`` factor on the updates, and the weight EMA update after the optimizer step.
    """
    loss = _check_loss(loss, batch)
    corrupt, mix = loss.corrupt, loss.mixing
    if mix is not None and "mask" in batch:
        raise ValueError("mixup/cutmix need whole training batches (drop_remainder=True); this batch has a mask")
    module = with_axis(state.module, axis_name)
    rng, step_rng = jax.random.split(state.rng)
    images = prepare_images(batch["images"], state.normalization)
    if augment is not None:
        aug_rng = step_rng if axis_name is None else jax.random.fold_in(step_rng, lax.axis_index(axis_name))
        images = augment(aug_rng, images)
    inputs = images
    if corrupt is not None:
        c_rng = jax.random.fold_in(step_rng, 0x5EED)  # independent of the augment key, same on every device count
        if axis_name is not None:
            c_rng = jax.random.fold_in(c_rng, lax.axis_index(axis_name))
        inputs = corrupt(c_rng, images)
    if mix is not None:
        # Drawn before any per-device fold-in: every device mixes with the same lam, box and choice.
        inputs, mixed = mix_batch(jax.random.fold_in(step_rng, 0x313C), inputs, batch["labels"], mix, axis_name)
        batch = {**batch, **mixed}
    # Dropout and stochastic depth (a ViT's dropout, ConvNeXt's drop path) draw from the "dropout" rng: a key of
    # its own per step and per device, as augmentation's; flax ignores it for models without such layers.
    drop_rng = jax.random.fold_in(step_rng, 0xD809)
    if axis_name is not None:
        drop_rng = jax.random.fold_in(drop_rng, lax.axis_index(axis_name))
    rngs = {"dropout": drop_rng}
    mask = _mask(batch)
    count = _psum(jnp.sum(mask), axis_name)
    diff, fixed = split_params(state.params, state.trainable)
    fixed_const = jax.tree.map(lax.stop_gradient, fixed)
    train_bn = not state.backbone_frozen

    def loss_fn(diff_params: dict[str, jax.Array]) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        variables: dict[str, Any] = {"params": merge_params(diff_params, fixed_const)}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        if train_bn and state.batch_stats:
            out, updates = module.apply(variables, inputs, train=True, mutable=["batch_stats"], rngs=rngs)
            new_stats = updates["batch_stats"]
        else:
            out = module.apply(variables, inputs, train=train_bn, rngs=rngs)
            new_stats = state.batch_stats
        per_example = loss.per_example(out, batch, images)
        return jnp.sum(per_example * mask) / _denominator(loss, out, batch, mask, count, axis_name), (out, new_stats)

    (local_loss, (out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(diff)
    grads = _psum(grads, axis_name)
    # Zeros for the frozen leaves only give tx its full-tree signature; the groups' optimizer maps them to zero.
    full_grads = merge_params(grads, jax.tree.map(jnp.zeros_like, fixed))
    updates, opt_state = state.tx.update(full_grads, state.opt_state, state.params)
    if state.lr_scale is not None:
        updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
    stepped, _ = split_params(optax.apply_updates(state.params, updates), state.trainable)
    # Frozen leaves are passed through, not "x + 0": bit-identical even for -0.0.
    params = merge_params(stepped, fixed)
    if state.frozen_stats and train_bn:
        flat_new = traverse_util.flatten_dict(dict(new_stats), sep="/")
        flat_old = traverse_util.flatten_dict(dict(state.batch_stats), sep="/")
        for path in state.frozen_stats:
            flat_new[path] = flat_old[path]
        new_stats = traverse_util.unflatten_dict(flat_new, sep="/")
    metrics: Metrics = {
        "loss": _psum(local_loss, axis_name),
        "grad_norm": optax.tree.norm(grads),
        "count": count,
    }
    if loss.needs_labels:
        metrics["top1"] = _psum(jnp.sum(topk_correct(out, hard_labels(batch), 1) * mask), axis_name) / count
    step = state.step + 1
    ema = state.ema
    if ema is not None:
        assert state.ema_config is not None
        ema = update_ema(state.ema_config, ema, params, new_stats, step, state.accumulate)
    new_state = state.replace(params=params, batch_stats=new_stats, opt_state=opt_state, step=step, rng=rng, ema=ema)
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    axis_name: str | None = "data",
    loss: Loss | str = CrossEntropy(),  # noqa: B008  (immutable)
) -> Metrics:
    """Global *sums* over the real (mask=1) examples of this batch: ``loss_sum``, ``count`` and, for a labeled loss,
    ``top1_correct``/``top5_correct``; with class weights also ``weight_sum`` (the mean loss is then
    ``loss_sum / weight_sum``). The host adds them over batches, so a padded ragged batch stays exact.
    """
    loss = _check_loss(loss, batch)
    return eval_metrics(state.module, state.variables, batch, loss, state.normalization, axis_name)


def eval_metrics(
    module: nn.Module,
    variables: dict[str, Any],
    batch: Batch,
    loss: Loss,
    normalization: Normalization | None,
    axis_name: str | None,
) -> Metrics:
    """What :func:`eval_step` computes, from a module and its variables alone (evaluation needs no optimizer)."""
    module = with_axis(module, axis_name)
    mask = _mask(batch)
    images = prepare_images(batch["images"], normalization)
    out: jax.Array = module.apply(variables, images, train=False)  # type: ignore[assignment]
    per_example = loss.per_example(out, batch, images)
    metrics: Metrics = {"loss_sum": jnp.sum(per_example * mask), "count": jnp.sum(mask)}
    weights = loss.example_weight(out, batch)
    if weights is not None:  # class weights: the mean loss is loss_sum / weight_sum, as in training
        metrics["weight_sum"] = jnp.sum(weights * mask)
    if loss.needs_labels:
        metrics["top1_correct"] = jnp.sum(topk_correct(out, batch["labels"], 1) * mask)
        metrics["top5_correct"] = jnp.sum(topk_correct(out, batch["labels"], 5) * mask)
    return _psum(metrics, axis_name)  # type: ignore[no-any-return]
