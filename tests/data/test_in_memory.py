"""Loaders: bundled digits, image folders (with broken files), npz, normalize."""

from __future__ import annotations

import io
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxtl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SkippedFilesWarning,
    load_digits,
    load_image_folder,
    load_npz,
    normalize,
)
from jaxtl.models import registry


@pytest.fixture(scope="module")
def digits():
    return load_digits(size=16, channels=3)


def test_digits_shape_range_balance(digits):
    assert digits.images.shape == (1797, 16, 16, 3)
    assert digits.images.dtype == np.float32
    assert digits.labels is not None and digits.labels.shape == (1797,)
    assert digits.images.min() >= 0.0 and digits.images.max() <= 1.0
    assert digits.images.max() > 0.9  # scaled by 16, not by 255
    np.testing.assert_array_equal(digits.images[..., 0], digits.images[..., 2])
    counts = np.bincount(digits.labels, minlength=10)
    assert digits.num_classes == 10 and counts.min() >= 170 and counts.max() <= 185


def test_digits_deterministic_and_native_size(digits):
    again = load_digits(size=16, channels=3)
    np.testing.assert_array_equal(again.images, digits.images)
    np.testing.assert_array_equal(again.labels, digits.labels)
    native = load_digits(size=8, channels=1)
    from sklearn.datasets import load_digits as sk

    np.testing.assert_allclose(native.images[..., 0], sk().images / 16.0, rtol=0, atol=1e-7)


def test_digits_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        load_digits(channels=2)


def _save(img: Image.Image, path: pathlib.Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)

    def rgb(h, w):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")

    _save(rgb(40, 50), root / "cat" / "a.jpg", "JPEG")
    _save(rgb(30, 30), root / "cat" / "b.png", "PNG")
    gray = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (40, 1))  # [40, 40], varies along width
    _save(Image.fromarray(gray, "L"), root / "cat" / "gray.png", "PNG")
    _save(rgb(36, 36), root / "dog" / "c.jpg", "JPEG")
    rgba = np.concatenate([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), np.full((32, 32, 1), 255, np.uint8)], -1)
    _save(Image.fromarray(rgba, "RGBA"), root / "dog" / "rgba.png", "PNG")
    _save(rgb(20, 28), root / "emu" / "nested" / "d.png", "PNG")
    _save(rgb(24, 24).convert("P"), root / "emu" / "palette.png", "PNG")
    # Broken files: random bytes, zero bytes, truncated PNG; plus a non-image that must be ignored silently.
    (root / "dog" / "corrupt.jpg").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (root / "emu" / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    rgb(64, 64).save(buf, format="PNG")
    (root / "emu" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "emu" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_loads_and_skips(folder):
    with pytest.warns(SkippedFilesWarning) as rec:
        ds = load_image_folder(folder, size=16, resize=20)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "skipped 3 " in msg and "corrupt.jpg" in msg and "empty.jpg" in msg and "truncated.png" in msg
    assert ds.class_names == ("cat", "dog", "emu")
    # Files in sorted order per class: cat: a, b, gray; dog: c, rgba; emu: nested/d, palette
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 2, 2])
    assert ds.images.shape == (7, 16, 16, 3) and ds.images.dtype == np.float32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    g = ds.images[2]
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    assert g[0, -1, 0] > g[0, 0, 0]  # the gradient survived resize + crop


def test_image_folder_matches_torchvision_eval_recipe(folder):
    tv = pytest.importorskip("torchvision.transforms")
    with pytest.warns(SkippedFilesWarning):
        ds = load_image_folder(folder, size=16, resize=20)
    img = Image.open(folder / "cat" / "a.jpg").convert("RGB")
    ref = tv.Compose([tv.Resize(20), tv.CenterCrop(16), tv.PILToTensor()])(img).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(np.round(ds.images[0] * 255).astype(np.uint8), ref)


def test_image_folder_class_names_and_grayscale_channel(folder):
    with pytest.warns(SkippedFilesWarning):
        ds = load_image_folder(folder, size=8, channels=1, class_names=["emu", "dog", "cat", "yak"])
    assert ds.num_classes == 4 and ds.images.shape[-1] == 1
    np.testing.assert_array_equal(ds.labels, [2, 2, 2, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="emu"):
        load_image_folder(folder, size=8, class_names=["cat", "dog"])


def test_image_folder_bad_roots(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope"):
        load_image_folder(missing)
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_root"):
        load_image_folder(empty)
    no_images = tmp_path / "no_images"
    (no_images / "cls").mkdir(parents=True)
    (no_images / "cls" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no_images"):
        load_image_folder(no_images)
    only_broken = tmp_path / "only_broken"
    (only_broken / "cls").mkdir(parents=True)
    (only_broken / "cls" / "x.png").write_bytes(b"")
    with pytest.warns(SkippedFilesWarning), pytest.raises(ValueError, match="only_broken"):
        load_image_folder(only_broken)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        load_image_folder(a_file)


def test_image_folder_skips_decompression_bomb(tmp_path, monkeypatch):
    _save(Image.new("RGB", (64, 64)), tmp_path / "a" / "big.png", "PNG")
    _save(Image.new("RGB", (8, 8)), tmp_path / "a" / "small.png", "PNG")
    # A limit below 64*64/2 makes Pillow raise DecompressionBombError (over twice the limit) for big.png only.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(SkippedFilesWarning, match="skipped 1 .*big.png"):
        ds = load_image_folder(tmp_path, size=8, resize=8)
    assert len(ds) == 1


def test_npz_happy_paths(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "u8.npz", images=u8, labels=labels)
    ds = load_npz(tmp_path / "u8.npz")
    np.testing.assert_allclose(ds.images, u8 / 255.0, rtol=1e-6)
    assert ds.num_classes == 3 and ds.labels.dtype == np.int32

    f = rng.random((4, 5, 5)).astype(np.float64)
    np.savez(tmp_path / "f.npz", x=f, y=np.array([3, 3, 0, 1], np.uint8))
    ds = load_npz(tmp_path / "f.npz", images_key="x", labels_key="y", num_classes=5)
    assert ds.images.shape == (4, 5, 5, 1) and ds.images.dtype == np.float32 and ds.num_classes == 5
    np.testing.assert_allclose(ds.images[..., 0], f, rtol=1e-6)

    ds = load_npz(tmp_path / "f.npz", images_key="x", labels_key=None)
    assert ds.labels is None


@pytest.mark.parametrize(
    ("arrays", "kwargs", "match"),
    [
        (dict(pixels=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(2, int)), {}, r"'images'.*pixels"),
        (dict(images=np.zeros((2, 4, 4, 3), np.uint8)), {}, r"'labels'.*images"),
        (dict(images=np.zeros((2, 4), np.uint8), labels=np.zeros(2, int)), {}, r"'images'.*shape"),
        (dict(images=np.zeros((2, 4, 4, 3), np.int64), labels=np.zeros(2, int)), {}, r"'images'.*dtype"),
        (dict(images=np.full((2, 4, 4, 3), np.nan), labels=np.zeros(2, int)), {}, r"'images'.*non-finite"),
        (dict(images=np.zeros((2, 4, 4, 3)), labels=np.zeros(3, int)), {}, r"'labels'.*shape"),
        (dict(images=np.zeros((2, 4, 4, 3)), labels=np.zeros(2)), {}, r"'labels'.*integers"),
        (dict(images=np.zeros((2, 4, 4, 3)), labels=np.array([0, -1])), {}, r"'labels'.*>= 0"),
        (dict(images=np.zeros((2, 4, 4, 3)), labels=np.array([0, 7])), dict(num_classes=5), r"'labels'.*\[0, 5\)"),
    ],
)
def test_npz_bad_inputs_name_file_and_key(tmp_path, arrays, kwargs, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as err:
        load_npz(path, **kwargs)
    assert "bad.npz" in str(err.value)


def test_npz_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.npz"):
        load_npz(tmp_path / "nothere.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz"):
        load_npz(tmp_path / "junk.npz")


def test_normalize_numpy_and_jax():
    assert IMAGENET_MEAN == registry.IMAGENET_MEAN and IMAGENET_STD == registry.IMAGENET_STD
    x = np.random.default_rng(0).random((2, 3, 3, 3)).astype(np.float32)
    out = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 1], (x[..., 1] - 0.456) / 0.224, rtol=1e-6)
    out_j = normalize(jnp.asarray(x), IMAGENET_MEAN, IMAGENET_STD)  # rank promotion "raise" must not trigger
    np.testing.assert_allclose(np.asarray(out_j), out, rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        normalize(x, (0.5,), (0.5,))


def test_image_folder_scales_16bit_and_float_images_by_their_range(tmp_path):
    # Pillow's convert("RGB") (torchvision's loader) would give 1.0 for the 16-bit mid-grey and 0.0 for the float.
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((10, 10), 32768, np.uint16)).save(tmp_path / "a" / "grey16.png")
    Image.fromarray(np.full((10, 10), 0.5, np.float32)).save(tmp_path / "a" / "half.tiff")
    ds = load_image_folder(tmp_path, size=8, resize=8)
    np.testing.assert_allclose(ds.images, 128 / 255, atol=1e-6)


def _zip_bomb(path: pathlib.Path, n: int) -> None:
    """An npz whose images member is n zero bytes, deflated (a few hundred KB for 100 MB)."""
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": (n // (32 * 32 * 3), 32, 32, 3)}
    )
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("images.npy", "w", force_zip64=True) as f:
            f.write(buf.getvalue())
            chunk = b"\0" * (1 << 20)
            for _ in range(n // len(chunk)):
                f.write(chunk)
        buf = io.BytesIO()
        np.save(buf, np.zeros(n // (32 * 32 * 3), np.int64))
        z.writestr("labels.npy", buf.getvalue())


def test_npz_sizes_are_checked_before_inflating(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.npz"
    _zip_bomb(path, 96 << 20)
    assert path.stat().st_size < (2 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb\.npz.*'images'.*inflate to .* more than the limit"):
            load_npz(path, max_bytes=50 << 20)
        with pytest.raises(ValueError, match=r"bomb\.npz.*'images'.*\(32, 32, 3\) per example, expected \(8, 8, 3\)"):
            load_npz(path, image_shape=(8, 8, 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (8 << 20), f"{peak} bytes allocated: the member was inflated before the checks"


def test_npz_labels_beyond_int32_are_an_error(tmp_path):
    np.savez(tmp_path / "big.npz", images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([0, 2**31], np.int64))
    with pytest.raises(ValueError, match=r"big\.npz.*'labels'.*does not fit int32"):
        load_npz(tmp_path / "big.npz")
