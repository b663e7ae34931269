"""Loaders that turn pixels on disk (or bundled with scikit-learn) into an :class:`ArrayDataset` in ``[0, 1]``.

Every loader returns float32 NHWC images in ``[0, 1]``; normalisation with a model's mean/std is a separate step
(:func:`normalize`) so the same dataset can feed models with different statistics.
"""

from __future__ import annotations

import os
import pathlib
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from jaxtl.data.dataset import ArrayDataset
from jaxtl.models.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SkippedFilesWarning",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "normalize",
]


class SkippedFilesWarning(UserWarning):
    """Some image files could not be read (corrupt, truncated, empty, too large) and were left out."""


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


def load_digits(size: int = 32, channels: int = 3) -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits: 1797 images, 10 classes, no download.

    Pixel values 0..16 are scaled to ``[0, 1]``, resized bilinearly (Pillow, deterministic) to ``size x size`` and
    the gray channel is replicated ``channels`` times. Returns images ``[1797, size, size, channels]`` float32.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    _check_channels(channels)
    bunch = sk_load_digits()
    small = np.asarray(bunch.images, np.float32) / 16.0  # [N, 8, 8]
    if size == 8:
        gray = small
    else:
        # Pillow's "F" mode resizes float32 in place of uint8, so no quantisation to 256 levels.
        gray = np.stack(
            [np.asarray(Image.fromarray(im, mode="F").resize((size, size), Image.Resampling.BILINEAR)) for im in small]
        )
    gray = np.clip(gray, 0.0, 1.0).astype(np.float32)
    images = np.repeat(gray[..., None], channels, axis=-1)
    labels = np.asarray(bunch.target, np.int32)
    return ArrayDataset(images, labels, 10, tuple(str(i) for i in range(10)))


def _image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def _resize_center_crop(img: Image.Image, size: int, resize: int) -> Image.Image:
    # torchvision's eval recipe: Resize(resize) scales the shorter side (long side truncated with int()),
    # then CenterCrop(size) with round() offsets.
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def _decode(path: str, size: int, resize: int, mode: str) -> np.ndarray | None:
    """One image as uint8 ``[size, size, C]``, or None when the file cannot be read."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: truncated files fail here, not later
            img: Image.Image = opened
            if img.mode in ("P", "PA", "LA", "RGBA") and mode == "RGB":
                # Palette/alpha images go through RGBA so transparency does not become a random palette colour.
                img = img.convert("RGBA").convert("RGB")
            elif img.mode != mode:
                img = img.convert(mode)
            out = _resize_center_crop(img, size, resize)
            arr = np.asarray(out, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # OSError covers UnidentifiedImageError (empty/corrupt) and "image file is truncated"; some plugins raise
        # ValueError or SyntaxError on malformed headers.
        return None
    return arr.reshape(size, size, -1)


def load_image_folder(
    root: str | os.PathLike[str],
    size: int = 224,
    resize: int | None = None,
    channels: int = 3,
    class_names: Sequence[str] | None = None,
    num_workers: int = 8,
) -> ArrayDataset:
    """Images in ``root/<class>/...`` (one subfolder per class, searched recursively) as ``[N, size, size, C]``.

    Labels follow the sorted subfolder names, or ``class_names`` when given (then every subfolder must be one of
    them). Each image is converted to RGB (or L for ``channels=1``), its shorter side resized to ``resize``
    (default ``int(size * 256 / 224)``) and center-cropped to ``size``: torchvision's evaluation recipe. Values are
    float32 in ``[0, 1]``. Unreadable files (corrupt, truncated, empty, decompression bombs) are skipped and
    reported in one :class:`SkippedFilesWarning`. Files whose extension Pillow does not know are ignored.
    """
    _check_channels(channels)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    resize = int(size * 256 / 224) if resize is None else resize
    if resize < size:
        raise ValueError(f"resize ({resize}) must be >= size ({size}): the center crop would not fit")
    root_path = pathlib.Path(root)
    if not root_path.exists():
        raise ValueError(f"image folder {str(root_path)!r} does not exist")
    if not root_path.is_dir():
        raise ValueError(f"image folder {str(root_path)!r} is not a directory")
    folders = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"image folder {str(root_path)!r} has no class subfolders (expected root/<class>/<image>)")
    if class_names is None:
        names = list(folders)
    else:
        names = list(class_names)
        if len(set(names)) != len(names):
            raise ValueError(f"class_names has duplicates: {names}")
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise ValueError(f"folder(s) {unknown} in {str(root_path)!r} are not in class_names {names}")
    label_of = {n: i for i, n in enumerate(names)}

    exts = _image_extensions()
    files: list[tuple[str, int]] = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(root_path / folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in exts:
                    files.append((os.path.join(dirpath, fn), label_of[folder]))
    if not files:
        raise ValueError(f"image folder {str(root_path)!r} contains no image files in its class subfolders")

    mode = "RGB" if channels == 3 else "L"
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        decoded = list(pool.map(lambda f: _decode(f[0], size, resize, mode), files))

    keep = [i for i, a in enumerate(decoded) if a is not None]
    skipped = [files[i][0] for i, a in enumerate(decoded) if a is None]
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) of {len(files)} in {str(root_path)!r}: {shown}",
            SkippedFilesWarning,
            stacklevel=2,
        )
    if not keep:
        raise ValueError(f"image folder {str(root_path)!r}: none of its {len(files)} image files could be read")
    images = np.empty((len(keep), size, size, channels), np.float32)
    for j, i in enumerate(keep):
        images[j] = decoded[i]
        decoded[i] = None  # free the uint8 copy as we go
    images /= 255.0
    labels = np.array([files[i][1] for i in keep], np.int32)
    return ArrayDataset(images, labels, len(names), tuple(names))


def _check_npy_size(npz: Any, key: str) -> None:
    # numpy allocates the shape its header claims before reading any data: refuse a header bigger than the member.
    name = key if key in npz.zip.namelist() else f"{key}.npy"
    size = npz.zip.getinfo(name).file_size
    with npz.zip.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=10_000)
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if claimed > size:
        raise ValueError(f"its header claims shape {shape} of {dtype} ({claimed} bytes), the member holds {size} bytes")


def load_npz(
    path: str | os.PathLike[str],
    images_key: str = "images",
    labels_key: str | None = "labels",
    num_classes: int | None = None,
) -> ArrayDataset:
    """Images (and labels) from a ``.npz`` file as an :class:`ArrayDataset` in ``[0, 1]``.

    ``images``: uint8 in ``[0, 255]`` (divided by 255) or float (kept as is), ``[N, H, W, C]`` or ``[N, H, W]``
    (a channel axis is added). ``labels``: integers ``[N]`` in ``[0, num_classes)``; ``num_classes`` defaults to
    ``max(label) + 1``. ``labels_key=None`` loads unlabeled images (``num_classes`` then defaults to 0).
    Every problem raises a ValueError naming the file and the key.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"npz file {str(p)!r} does not exist or is not a file")
    try:
        npz = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # EOFError: a zero-byte file
        raise ValueError(f"npz file {str(p)!r} could not be read: {e or type(e).__name__}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"npz file {str(p)!r} holds a single array (.npy), not named arrays (np.savez)")
    with npz:
        keys = list(npz.files)

        def get(key: str) -> np.ndarray:
            if key not in keys:
                raise ValueError(f"npz file {str(p)!r} has no key {key!r}; keys present: {keys}")
            try:
                _check_npy_size(npz, key)
                return np.asarray(npz[key])
            # ValueError: object arrays need pickle, which we refuse; the others: a damaged or truncated member.
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise ValueError(f"npz file {str(p)!r}, key {key!r}: could not be read ({e})") from e

        raw = get(images_key)
        raw_labels = None if labels_key is None else get(labels_key)

    where = f"npz file {str(p)!r}, key {images_key!r}"
    if raw.ndim == 3:
        raw = raw[..., None]
    if raw.ndim != 4:
        raise ValueError(f"{where}: images must be [N, H, W, C] or [N, H, W], got shape {raw.shape}")
    if raw.shape[0] == 0:
        raise ValueError(f"{where}: no images (shape {raw.shape})")
    if raw.dtype == np.uint8:
        images = raw.astype(np.float32) / 255.0
    elif np.issubdtype(raw.dtype, np.floating):
        images = raw.astype(np.float32)
        if not np.all(np.isfinite(images)):
            bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
            raise ValueError(f"{where}: {bad} non-finite pixel value(s) (NaN or inf)")
    else:
        raise ValueError(f"{where}: images must be uint8 in [0, 255] or floating point, got dtype {raw.dtype}")

    labels: np.ndarray | None = None
    if raw_labels is not None:
        lwhere = f"npz file {str(p)!r}, key {labels_key!r}"
        if raw_labels.shape != (images.shape[0],):
            raise ValueError(f"{lwhere}: labels must be [N] with N={images.shape[0]}, got shape {raw_labels.shape}")
        if not np.issubdtype(raw_labels.dtype, np.integer):
            raise ValueError(f"{lwhere}: labels must be integers, got dtype {raw_labels.dtype}")
        lo, hi = int(raw_labels.min()), int(raw_labels.max())
        if lo < 0:
            raise ValueError(f"{lwhere}: labels must be >= 0, found {lo}")
        if num_classes is None:
            num_classes = hi + 1
        elif hi >= num_classes:
            raise ValueError(f"{lwhere}: labels must lie in [0, {num_classes}), found values up to {hi}")
        labels = raw_labels.astype(np.int32)
    if num_classes is None:
        num_classes = 0
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    return ArrayDataset(images, labels, num_classes)


def normalize(images: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``(images - mean) / std`` per channel for ``[..., C]`` numpy or JAX arrays; returns the same kind."""
    c = images.shape[-1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for images with {c} channels")
    if any(s == 0 for s in std):
        raise ValueError(f"std must not contain zeros, got {tuple(std)}")
    if isinstance(images, np.ndarray):
        xp: Any = np
        dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float32
    else:
        import jax.numpy as jnp

        xp = jnp
        dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
    # Explicit [1, ..., 1, C] shapes: jaxtl runs with rank promotion set to "raise".
    shape = (1,) * (images.ndim - 1) + (c,)
    m = xp.asarray(mean, dtype).reshape(shape)
    s = xp.asarray(std, dtype).reshape(shape)
    return (images.astype(dtype) - m) / s
