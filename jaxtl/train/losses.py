"""Per-example losses and exact (masked, summed) metrics.

Everything here returns per-example values or sums, never means: the step divides by the *global* count of real
examples (summed over devices), which keeps a padded ragged batch and any device count exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy per example ``[N]`` from logits ``[N, K]`` and integer labels ``[N]``.

    With ``label_smoothing=s`` the target is ``(1 - s) * onehot + s / K`` (torch's convention).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    logits = logits.astype(jnp.float32)
    k = logits.shape[-1]
    targets = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def mse(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error per example ``[N]`` over all non-batch axes (autoencoder: target = input)."""
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction shape {reconstruction.shape} != target shape {target.shape}")
    diff = reconstruction.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=-1)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the ``k`` highest logits, per example ``[N]`` (``k`` capped at K).

    Ties are broken towards the lower class index, as ``lax.top_k`` does.
    """
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


class Loss:
    """What a step minimises: ``per_example(outputs, batch, target_images) -> [n]``.

    ``target_images`` is the clean (augmented, normalised) input, which reconstruction losses compare with.
    ``needs_labels`` says whether the batch must hold ``labels`` (and whether top-k metrics are reported).
    """

    name: str = "loss"
    needs_labels: bool = False

    def per_example(self, outputs: jax.Array, batch: dict[str, jax.Array], target_images: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class CrossEntropy(Loss):
    """Softmax cross-entropy against ``batch["labels"]`` (torch's label smoothing convention)."""

    name = "ce"
    needs_labels = True

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def per_example(self, outputs: jax.Array, batch: dict[str, jax.Array], target_images: jax.Array) -> jax.Array:
        return cross_entropy(outputs, batch["labels"], self.label_smoothing)


class Reconstruction(Loss):
    """Mean squared error between the output and the clean input (an autoencoder; no labels needed)."""

    name = "mse"

    def per_example(self, outputs: jax.Array, batch: dict[str, jax.Array], target_images: jax.Array) -> jax.Array:
        return mse(outputs, target_images)


def get_loss(loss: Loss | str) -> Loss:
    """``loss`` as a :class:`Loss`: ``"ce"`` (:class:`CrossEntropy`) or ``"mse"`` (:class:`Reconstruction`)."""
    if isinstance(loss, Loss):
        return loss
    if loss == "ce":
        return CrossEntropy()
    if loss == "mse":
        return Reconstruction()
    raise ValueError(f"loss must be a jaxtl.train.Loss, 'ce' or 'mse', got {loss!r}")
