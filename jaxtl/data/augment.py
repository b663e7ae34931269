"""Batch augmentation in pure JAX: jittable, with independent per-example randomness drawn from one key.

Shape arguments (``padding``, ``patch``, ``flip``, ``pad_mode``) are Python values: close over them or mark them
static under ``jax.jit``. Images are ``[N, H, W, C]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["add_noise", "random_crop_flip", "random_mask"]


def _check_images(images: jax.Array, fn: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{fn} expects images [N, H, W, C], got shape {tuple(images.shape)}")


def random_crop_flip(
    rng: jax.Array, images: jax.Array, padding: int = 4, flip: bool = True, pad_mode: str = "reflect"
) -> jax.Array:
    """Pad each side by ``padding`` then crop back to ``[H, W]`` at a random offset; mirror left-right with p=0.5.

    ``pad_mode``: "reflect" (no border artefacts) or "constant" (zeros, the CIFAR recipe). Returns ``[N, H, W, C]``.
    """
    _check_images(images, "random_crop_flip")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
    n, h, w, c = images.shape
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than it, got {h}x{w}")
    k_crop, k_flip = jax.random.split(rng)
    out = images
    if padding:
        padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=pad_mode)
        offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * padding + 1)

        def crop(img: jax.Array, off: jax.Array) -> jax.Array:
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

        out = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
        out = jnp.where(do_flip, out[:, :, ::-1, :], out)
    return out


def add_noise(rng: jax.Array, images: jax.Array, std: float) -> jax.Array:
    """``images + std * N(0, 1)`` per pixel, not clipped (the denoising autoencoder's corruption). ``[N, H, W, C]``."""
    _check_images(images, "add_noise")
    noise = jax.random.normal(rng, images.shape, jnp.float32)
    return (images.astype(jnp.float32) + std * noise).astype(images.dtype)


def random_mask(rng: jax.Array, images: jax.Array, mask_ratio: float, patch: int) -> jax.Array:
    """Zero ``round(mask_ratio * P)`` of the ``P`` non-overlapping ``patch x patch`` squares of each image.

    Each image gets its own random set of exactly that many squares. ``H`` and ``W`` must be multiples of
    ``patch``. Returns ``[N, H, W, C]``.
    """
    _check_images(images, "random_mask")
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")
    n, h, w, c = images.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch={patch} must be >= 1 and divide the image size {h}x{w}")
    gh, gw = h // patch, w // patch
    num_masked = round(mask_ratio * gh * gw)
    # Rank of a uniform draw per patch: the num_masked smallest ranks are masked, a uniform random subset.
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (n, gh * gw)), axis=1), axis=1)
    keep = (ranks >= num_masked).reshape(n, gh, 1, gw, 1, 1)
    tiled = images.reshape(n, gh, patch, gw, patch, c)
    return jnp.where(keep, tiled, jnp.zeros((), images.dtype)).reshape(n, h, w, c)
