"""Per-example losses and exact (masked, summed) metrics.

Everything here returns per-example values or sums, never means: the step divides by the *global* sum of the
examples' weights (summed over devices; the count of real examples when no class weights are set), which keeps a
padded ragged batch and any device count exact.

Targets. A batch gives integer ``labels`` ``[n]``; mixup/cutmix (:mod:`jaxtl.train.mixing`) add ``mix_labels``
``[n]`` (the partner's label) and ``mix_lam`` (scalar) so the target is ``lam * onehot(labels) + (1 - lam) *
onehot(mix_labels)``, built here where the class count is known; a batch may instead carry soft ``targets``
``[n, K]`` (probabilities). Label smoothing ``s`` then makes ``(1 - s) * target + s / K`` (torch's convention).

Class weights (torch's ``nn.CrossEntropyLoss(weight=w)``): an example's loss is ``-sum_c w_c t_c log p_c`` and the
mean divides by the sum over the batch of each example's weight ``w_{y_n}``; with label smoothing the numerator
uses the smoothed target and the denominator stays ``sum w_{y_n}``, exactly as torch combines them. For a mixed or
soft target the example's weight is ``sum_c w_c t_c`` of its *unsmoothed* target (``lam w_a + (1 - lam) w_b``), so
a mixed batch is normalised like an unmixed one; torch divides soft targets by the example count instead, which
would rescale the loss the moment mixing is switched on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtl.train.mixing import Mixing

Batch = Mapping[str, jax.Array]


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | Sequence[float] | None = None,
) -> jax.Array:
    """Softmax cross-entropy per example ``[N]`` from logits ``[N, K]`` and integer labels ``[N]``.

    With ``label_smoothing=s`` the target is ``(1 - s) * onehot + s / K`` (torch's convention). With
    ``class_weights`` ``[K]`` each class's term is scaled by its weight (the numerator of torch's weighted mean;
    divide the batch's sum by ``class_weights[labels].sum()``, see :meth:`CrossEntropy.example_weight`).
    """
    _check_smoothing(label_smoothing)
    logits = logits.astype(jnp.float32)
    k = logits.shape[-1]
    targets = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    if class_weights is not None:
        return soft_cross_entropy(logits, targets, label_smoothing, class_weights)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def soft_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | Sequence[float] | None = None,
) -> jax.Array:
    """Cross-entropy per example ``[N]`` against target distributions ``[N, K]`` (rows summing to 1), smoothed to
    ``(1 - s) * targets + s / K`` and, with ``class_weights`` ``[K]``, ``-sum_c w_c t_c log p_c``."""
    _check_smoothing(label_smoothing)
    logits = logits.astype(jnp.float32)
    if targets.shape != logits.shape:
        raise ValueError(f"soft targets have shape {targets.shape}, the logits {logits.shape}")
    targets = targets.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    if class_weights is None:
        return optax.softmax_cross_entropy(logits, targets)
    w = _weights(class_weights, logits.shape[-1])
    return -jnp.sum(w[None, :] * targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _weights(class_weights: jax.Array | Sequence[float], k: int) -> jax.Array:
    w = jnp.asarray(class_weights, jnp.float32)
    if w.shape != (k,):
        raise ValueError(f"class_weights has shape {tuple(w.shape)}, the model has {k} classes: give one per class")
    return w


def mixed_targets(labels: jax.Array, mix_labels: jax.Array, lam: jax.Array, k: int) -> jax.Array:
    """``lam * onehot(labels) + (1 - lam) * onehot(mix_labels)`` ``[N, K]``, summed in torchvision's order."""
    lam = jnp.asarray(lam, jnp.float32)
    rolled = jax.nn.one_hot(mix_labels, k, dtype=jnp.float32) * (1.0 - lam)
    return rolled + jax.nn.one_hot(labels, k, dtype=jnp.float32) * lam


def batch_targets(batch: Batch, k: int) -> jax.Array | None:
    """The batch's soft targets ``[n, K]`` when it has any (``targets``, or ``mix_labels``/``mix_lam``), else None
    (plain integer ``labels``)."""
    if "targets" in batch:
        return batch["targets"]
    if "mix_labels" in batch:
        return mixed_targets(batch["labels"], batch["mix_labels"], batch["mix_lam"], k)
    return None


def hard_labels(batch: Batch) -> jax.Array:
    """The label top-k metrics compare with: ``labels``, or under mixing the dominant one of the pair (the
    example's own label when ``lam >= 0.5``, else its partner's); the argmax of soft ``targets``."""
    if "targets" in batch:
        return jnp.argmax(batch["targets"], axis=-1)
    if "mix_labels" in batch:
        return jnp.where(batch["mix_lam"] >= 0.5, batch["labels"], batch["mix_labels"])
    return batch["labels"]


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
    """What a step minimises: ``per_example(outputs, batch, target_images) -> [n]``, averaged over the global
    batch with the weights ``example_weight(outputs, batch) -> [n]`` (None: every example counts 1).

    ``target_images`` is the clean (augmented, normalised) input, which reconstruction losses compare with.
    ``needs_labels`` says whether the batch must hold ``labels`` (and whether top-k metrics are reported).
    What a training batch goes through before the model sees it, besides augmentation: ``corrupt(rng, images)``
    (the model's input only; :class:`Reconstruction`) and ``mixing`` (images and targets; :class:`CrossEntropy`).
    """

    name: str = "loss"
    needs_labels: bool = False
    corrupt: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    mixing: Mixing | None = None

    def per_example(self, outputs: jax.Array, batch: Batch, target_images: jax.Array) -> jax.Array:
        raise NotImplementedError

    def example_weight(self, outputs: jax.Array, batch: Batch) -> jax.Array | None:
        return None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))

    def __repr__(self) -> str:
        # Options at their "off" value (None) are left out, so a run's fingerprint reads as before they existed;
        # a function by its name (its default repr holds a memory address, different in every process).
        args = ", ".join(f"{k}={_describe(v)}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({args})"


def _describe(value: Any) -> str:
    if callable(value) and not isinstance(value, type) and hasattr(value, "__qualname__"):
        return str(value.__qualname__)
    return repr(value)


class CrossEntropy(Loss):
    """Softmax cross-entropy against ``batch["labels"]`` (or the batch's soft/mixed targets), with torch's label
    smoothing and class-weight conventions (see the module docstring).

    ``class_weights``: one non-negative weight per class (e.g. :func:`balanced_class_weights`), or None.
    ``mixing``: a :class:`~jaxtl.train.mixing.Mixing` (mixup/cutmix) the train step applies to every training
    batch, images and targets together; evaluation never mixes.
    """

    name = "ce"
    needs_labels = True

    def __init__(
        self,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        mixing: Mixing | None = None,
    ):
        _check_smoothing(label_smoothing)
        if mixing is not None and not isinstance(mixing, Mixing):
            raise TypeError(f"mixing must be a jaxtl.train.mixing.Mixing, got {type(mixing).__name__}")
        self.label_smoothing = float(label_smoothing)
        self.class_weights: tuple[float, ...] | None = None
        self.mixing = mixing
        if class_weights is not None:
            w = np.asarray(class_weights, np.float64)
            if w.ndim != 1 or w.size == 0:
                raise ValueError(f"class_weights must be a non-empty list of numbers, got shape {w.shape}")
            if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
                raise ValueError(f"class_weights must be finite, >= 0 and not all 0, got {w.tolist()}")
            self.class_weights = tuple(float(x) for x in w)

    def per_example(self, outputs: jax.Array, batch: Batch, target_images: jax.Array) -> jax.Array:
        targets = batch_targets(batch, outputs.shape[-1])
        if targets is None:
            return cross_entropy(outputs, batch["labels"], self.label_smoothing, self.class_weights)
        return soft_cross_entropy(outputs, targets, self.label_smoothing, self.class_weights)

    def example_weight(self, outputs: jax.Array, batch: Batch) -> jax.Array | None:
        if self.class_weights is None:
            return None
        w = _weights(self.class_weights, outputs.shape[-1])
        if "targets" in batch:
            return jnp.sum(batch["targets"].astype(jnp.float32) * w[None, :], axis=-1)
        if "mix_labels" in batch:
            lam = jnp.asarray(batch["mix_lam"], jnp.float32)
            return w[batch["mix_labels"]] * (1.0 - lam) + w[batch["labels"]] * lam
        return w[batch["labels"]]


class Reconstruction(Loss):
    """Mean squared error between the output and the clean input (an autoencoder; no labels needed).

    ``corrupt(rng, images) -> images`` (a denoising autoencoder): the train step corrupts only what the model sees;
    the target stays the clean (augmented) input. Evaluation never corrupts.
    """

    name = "mse"

    def __init__(self, corrupt: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
        if corrupt is not None and not callable(corrupt):
            raise TypeError(f"corrupt must be a function (rng, images) -> images, got {type(corrupt).__name__}")
        self.corrupt = corrupt

    def per_example(self, outputs: jax.Array, batch: Batch, target_images: jax.Array) -> jax.Array:
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


# --- imbalanced data ---

IMBALANCE_RATIO = 10.0


def class_counts(labels: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """Examples per class ``[num_classes]`` (int64); a label outside ``[0, num_classes)`` is an error."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {y.min()} to {y.max()}")
    return np.bincount(y.astype(np.int64), minlength=num_classes)


def balanced_class_weights(labels: np.ndarray | Sequence[int], num_classes: int) -> tuple[float, ...]:
    """scikit-learn's ``compute_class_weight("balanced")``: ``n_samples / (num_classes * count_c)`` per class.

    Every class must have an example (scikit-learn refuses too): a class the training split lacks has no count
    to balance, and its weight would be infinite.
    """
    counts = class_counts(labels, num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if empty.size > 10 else "")
        raise ValueError(
            f"balanced class weights need an example of every class; classes {shown} have none in these labels "
            "(give explicit class weights instead)"
        )
    return tuple(float(x) for x in counts.sum() / (num_classes * counts.astype(np.float64)))


def imbalance_warning(
    labels: np.ndarray | Sequence[int],
    num_classes: int,
    class_names: Sequence[str] = (),
    threshold: float = IMBALANCE_RATIO,
) -> str | None:
    """A one-line warning when the label distribution is badly imbalanced, else None.

    Badly imbalanced: the largest class has more than ``threshold`` (default 10) times the examples of the
    smallest, or a class has none. Names come from ``class_names`` when given.
    """
    counts = class_counts(labels, num_classes)
    if counts.sum() == 0:
        return None
    big, small = int(np.argmax(counts)), int(np.argmin(counts))

    def name(c: int) -> str:
        return repr(class_names[c]) if len(class_names) == num_classes else str(c)

    if counts[small] == 0:
        absent = [name(int(c)) for c in np.flatnonzero(counts == 0)]
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        return f"class(es) {shown} have no training example: the model cannot learn them"
    ratio = counts[big] / counts[small]
    if ratio <= threshold:
        return None
    return (
        f"the training labels are imbalanced: class {name(big)} has {counts[big]} examples, class {name(small)} "
        f"{counts[small]} ({ratio:.1f}x, over {threshold:g}x); consider class weights ('balanced')"
    )
