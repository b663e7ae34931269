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
