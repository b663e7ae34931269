"""Augmentation: shapes, per-key determinism, real flips, crops inside the padded image, masks and noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtl.data import add_noise, random_crop_flip, random_mask

N, H, W, C = 64, 8, 8, 2


@pytest.fixture(scope="module")
def images():
    # Every pixel distinct and nonzero, so a crop identifies its offset and zero padding is recognisable.
    base = np.arange(1, H * W * C + 1, dtype=np.float32).reshape(1, H, W, C)
    return jnp.asarray(np.repeat(base, N, axis=0))


def test_crop_flip_shape_and_determinism(images):
    key = jax.random.key(0)
    out = jax.jit(random_crop_flip, static_argnames=("padding", "flip", "pad_mode"))(key, images, padding=2)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, random_crop_flip(key, images, padding=2))
    assert not np.array_equal(out, random_crop_flip(jax.random.key(1), images, padding=2))


def test_flip_only_flips(images):
    out = np.asarray(random_crop_flip(jax.random.key(0), images, padding=0, flip=True))
    img = np.asarray(images[0])
    same = np.array([np.array_equal(o, img) for o in out])
    mirrored = np.array([np.array_equal(o, img[:, ::-1]) for o in out])
    assert np.all(same | mirrored)
    assert 10 < mirrored.sum() < N - 10  # p = 0.5, per example
    np.testing.assert_array_equal(random_crop_flip(jax.random.key(0), images, padding=0, flip=False), images)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_crops_are_windows_of_the_padded_image(images, pad_mode):
    p = 3
    out = np.asarray(random_crop_flip(jax.random.key(2), images, padding=p, flip=False, pad_mode=pad_mode))
    padded = np.pad(np.asarray(images[0]), ((p, p), (p, p), (0, 0)), mode=pad_mode)
    found = set()
    for o in out:
        offsets = [(i, j) for i in range(2 * p + 1) for j in range(2 * p + 1)]
        hits = [(i, j) for i, j in offsets if np.array_equal(padded[i : i + H, j : j + W], o)]
        assert len(hits) == 1, "every crop is exactly one in-bounds window"
        found.add(hits[0])
    assert len(found) > 20  # offsets really vary over the 49 possible
    assert any(i in (0, 2 * p) for i, _ in found) and any(j in (0, 2 * p) for _, j in found)  # edges reachable


def test_crop_flip_errors(images):
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        random_crop_flip(jax.random.key(0), images[0])
    with pytest.raises(ValueError, match="reflect"):
        random_crop_flip(jax.random.key(0), images, padding=8)


def test_random_mask(images):
    out = np.asarray(random_mask(jax.random.key(0), images, 0.5, patch=2))
    assert out.shape == images.shape
    patches = out.reshape(N, H // 2, 2, W // 2, 2, C)
    zero = np.all(patches == 0, axis=(2, 4, 5)).reshape(N, -1)
    kept = np.all(patches == np.asarray(images).reshape(N, H // 2, 2, W // 2, 2, C), axis=(2, 4, 5)).reshape(N, -1)
    assert np.all(zero ^ kept)  # each patch is either fully masked or untouched
    np.testing.assert_array_equal(zero.sum(axis=1), 8)  # exactly round(0.5 * 16) per image
    assert len({tuple(z) for z in zero}) > N // 2  # each image its own mask
    np.testing.assert_array_equal(out, random_mask(jax.random.key(0), images, 0.5, patch=2))
    with pytest.raises(ValueError, match="divide"):
        random_mask(jax.random.key(0), images, 0.5, patch=3)


def test_add_noise(images):
    x = jnp.zeros((N, H, W, C))
    out = add_noise(jax.random.key(0), x, 0.1)
    assert out.shape == x.shape
    assert abs(float(jnp.std(out)) - 0.1) < 0.01
    np.testing.assert_array_equal(out, add_noise(jax.random.key(0), x, 0.1))
