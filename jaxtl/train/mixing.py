"""Mixup and CutMix on device, with torchvision's ``transforms.v2.MixUp`` / ``v2.CutMix`` semantics.

One draw per *global* batch: ``lam ~ Beta(alpha, alpha)``; the batch is mixed with itself rolled by one example
(torchvision's ``batch.roll(1, 0)``: example ``i`` is paired with ``i - 1``, the first with the last), and the
labels become ``lam * onehot(y) + (1 - lam) * onehot(y_rolled)``. CutMix pastes the rolled batch's box
``[y1:y2, x1:x2]`` into every image, the box centred at ``r_x ~ U{0..W-1}``, ``r_y ~ U{0..H-1}`` with half sides
``int(0.5 * sqrt(1 - lam) * W)`` and ``int(... * H)``, clamped to the image, and ``lam`` becomes ``1 - box area /
(H * W)``. With both on, one of the two is chosen per batch with probability 1/2 (``v2.RandomChoice``).

Determinism: the draws come from a key the step derives from the state's step key *before* any per-device fold-in,
so every device draws the same ``lam``/box/choice, and the roll runs over the global batch order (the last example
of each device's shard travels to the next device by ``lax.ppermute``). So 1, 4 or 8 devices, and any number of
processes, give the same mixed batch for the same ``(seed, step)``.

Mixing is linear, so mixing the normalised images (as the step does, after on-device augmentation) equals
normalising mixed pixels, which is where torchvision's references apply it (after ``Normalize``, in the collate).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxtl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Mixing:
    """Mixup (``mixup_alpha``) and/or CutMix (``cutmix_alpha``); an alpha of 0 turns that one off.

    torchvision's reference recipes use ``mixup_alpha=0.2, cutmix_alpha=1.0``; timm's ``0.8`` and ``1.0``.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0 (0 turns it off), got {value!r}", name)
            object.__setattr__(self, name, float(value))
        if not self.enabled:
            raise ConfigError(
                "Mixing needs mixup_alpha > 0 or cutmix_alpha > 0; train without mixing=... to turn it off",
                "mixup_alpha",
            )

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class MixDraw(NamedTuple):
    """One batch's draw: ``lam`` the label weight of the example's own label (CutMix: corrected to the box area),
    ``cutmix`` whether CutMix (else Mixup) applies, and the CutMix ``box`` ``(x1, y1, x2, y2)`` (int32 scalars)."""

    lam: jax.Array
    cutmix: jax.Array
    box: tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def cutmix_box(
    lam: jax.Array, r_x: jax.Array, r_y: jax.Array, height: int, width: int
) -> tuple[tuple[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]:
    """torchvision's CutMix box ``(x1, y1, x2, y2)`` from ``lam`` and the centre ``(r_x, r_y)``, and the label
    weight ``1 - area / (H * W)``. ``int()`` of a positive number is ``floor``."""
    r = 0.5 * jnp.sqrt(1.0 - lam.astype(jnp.float32))
    r_w_half = jnp.floor(r * width).astype(jnp.int32)
    r_h_half = jnp.floor(r * height).astype(jnp.int32)
    x1 = jnp.maximum(r_x - r_w_half, 0)
    y1 = jnp.maximum(r_y - r_h_half, 0)
    x2 = jnp.minimum(r_x + r_w_half, width)
    y2 = jnp.minimum(r_y + r_h_half, height)
    area = ((x2 - x1) * (y2 - y1)).astype(jnp.float32)
    return (x1, y1, x2, y2), 1.0 - area / float(height * width)


def draw(rng: jax.Array, mixing: Mixing, height: int, width: int) -> MixDraw:
    """The batch's ``lam``, choice and box from ``rng`` alone (the same key on every device)."""
    k_choice, k_mix, k_cut, k_x, k_y = jax.random.split(rng, 5)
    if mixing.mixup_alpha > 0 and mixing.cutmix_alpha > 0:
        use_cutmix = jax.random.bernoulli(k_choice, 0.5)
    else:
        use_cutmix = jnp.asarray(mixing.cutmix_alpha > 0)
    lam_mix = _beta(k_mix, mixing.mixup_alpha)
    lam_cut = _beta(k_cut, mixing.cutmix_alpha)
    r_x = jax.random.randint(k_x, (), 0, width, jnp.int32)
    r_y = jax.random.randint(k_y, (), 0, height, jnp.int32)
    box, lam_box = cutmix_box(lam_cut, r_x, r_y, height, width)
    return MixDraw(jnp.where(use_cutmix, lam_box, lam_mix), use_cutmix, box)


def _beta(key: jax.Array, alpha: float) -> jax.Array:
    if alpha <= 0:
        return jnp.ones((), jnp.float32)  # that method is off; its lam is never selected
    return jax.random.beta(key, alpha, alpha, (), jnp.float32)


def roll_global(x: jax.Array, axis_name: str | None) -> jax.Array:
    """``x`` rolled by one along axis 0 of the *global* batch: ``out[i] = x[i - 1]``, ``out[0] = x[-1]``.

    Under an axis each device holds a contiguous shard (device ``d`` = rows ``[d n, (d + 1) n)``): its first row
    is the previous device's last row, received by ``lax.ppermute``.
    """
    if axis_name is None:
        return jnp.roll(x, 1, axis=0)
    n_dev = lax.psum(1, axis_name)
    from_prev = lax.ppermute(x[-1:], axis_name, perm=[(d, (d + 1) % n_dev) for d in range(n_dev)])
    return jnp.concatenate([from_prev, x[:-1]], axis=0)


def apply(images: jax.Array, labels: jax.Array, params: MixDraw, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """Mix this device's shard ``images`` ``[n, H, W, C]`` with the global batch rolled by one; returns the mixed
    images and each example's partner label ``[n]`` (the label weights are ``params.lam`` and ``1 - lam``)."""
    rolled = roll_global(images, axis_name)
    rolled_labels = roll_global(labels, axis_name)
    lam = params.lam.astype(images.dtype)
    mixed = rolled * (1.0 - lam) + images * lam  # torchvision's order: roll * (1 - lam) + x * lam
    h, w = images.shape[1:3]
    x1, y1, x2, y2 = params.box
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    pasted = jnp.where(inside[None, :, :, None], rolled, images)
    return jnp.where(params.cutmix, pasted, mixed), rolled_labels


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    mixing: Mixing,
    axis_name: str | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Draw from ``rng`` (identical on every device) and mix this device's shard; returns the images and the batch
    entries the loss reads: ``mix_labels`` ``[n]`` and ``mix_lam`` (scalar), see :mod:`jaxtl.train.losses`."""
    if images.ndim != 4:
        raise ValueError(f"mixup/cutmix need a batch of images [n, H, W, C], got shape {images.shape}")
    params = draw(rng, mixing, images.shape[1], images.shape[2])
    mixed, partner = apply(images, labels, params, axis_name)
    return mixed, {"mix_labels": partner, "mix_lam": params.lam}
