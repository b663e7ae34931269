"""Datasets held in memory: loaders that turn pixels on disk (or bundled with scikit-learn) into an
:class:`ArrayDataset` in ``[0, 1]``.

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

from jaxtl.data.constants import IMAGENET_MEAN, IMAGENET_STD, default_resize
from jaxtl.data.dataset import ArrayDataset

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


def _decode_eval(path: str, size: int, resize: int, mode: str) -> np.ndarray | None:
    """One image as uint8 ``[size, size, C]`` (torchvision's eval recipe), or None when it cannot be read."""
    from jaxtl.data.transforms import decode_image, resize_center_crop

    try:
        img = decode_image(path, mode)
        arr = np.asarray(resize_center_crop(img, size, resize), np.uint8)
    # Pillow raises many types on damaged data (OSError covers unidentified and truncated files; some plugins raise
    # ValueError, SyntaxError, struct.error, EOFError; DecompressionBombError): any of them makes it unreadable.
    except Exception:
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
    """Images in ``root/<class>/...`` decoded into memory as ``[N, size, size, C]`` float32 in ``[0, 1]``.

    For small sets; an image folder of any size streams with :func:`jaxtl.data.open_source` (uint8 batches decoded
    by worker processes, torchvision's training transforms). Files are listed by the same rules
    (:func:`jaxtl.data.listing.list_image_folder`: torchvision ``ImageFolder``'s classes, extensions and order;
    symlinks followed once, special files and hidden names skipped, an empty class folder an error), and decoded
    the same way (:func:`jaxtl.data.transforms.decode_image`: RGB or L, 16-bit and float images scaled by their
    real range). Labels follow the sorted subfolder names, or ``class_names`` when given (then every subfolder
    must be one of them). Each image's shorter side is resized to ``resize`` (default
    :func:`~jaxtl.data.constants.default_resize`) and center-cropped to ``size``: torchvision's evaluation recipe.
    Unreadable files (corrupt, truncated, empty, decompression bombs) are skipped and reported in one
    :class:`SkippedFilesWarning`.
    """
    from jaxtl.data.listing import list_image_folder

    _check_channels(channels)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    resize = default_resize(size) if resize is None else resize
    if resize < size:
        raise ValueError(f"resize ({resize}) must be >= size ({size}): the center crop would not fit")
    listing = list_image_folder(root, class_names)
    root_s = os.fspath(root)
    files = list(listing.paths)
    mode = "RGB" if channels == 3 else "L"
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        decoded = list(pool.map(lambda f: _decode_eval(f, size, resize, mode), files))

    keep = [i for i, a in enumerate(decoded) if a is not None]
    skipped = [files[i] for i, a in enumerate(decoded) if a is None]
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) of {len(files)} in {root_s!r}: {shown}",
            SkippedFilesWarning,
            stacklevel=2,
        )
    if not keep:
        raise ValueError(f"image folder {root_s!r}: none of its {len(files)} image files could be read")
    images = np.empty((len(keep), size, size, channels), np.float32)
    for j, i in enumerate(keep):
        images[j] = decoded[i]
        decoded[i] = None  # free the uint8 copy as we go
    images /= 255.0
    labels = listing.labels[keep].astype(np.int32)
    return ArrayDataset(images, labels, len(listing.class_names), listing.class_names)


def _npy_header(npz: Any, key: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """``(shape, dtype, uncompressed member size)`` of one member, read from its header without inflating it."""
    name = key if key in npz.zip.namelist() else f"{key}.npy"
    size = npz.zip.getinfo(name).file_size
    with npz.zip.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=10_000)
    return tuple(int(d) for d in shape), dtype, size


def _default_max_bytes() -> int:
    """Half of the machine's physical memory: the most a single npz array may inflate to by default."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def _check_before_inflating(
    header: tuple[tuple[int, ...], np.dtype[Any], int], max_bytes: int, expected: tuple[int, int, int] | None
) -> None:
    # numpy allocates what the header claims and inflates the whole member before any shape check could run: check
    # the header against the member, the memory limit and the expected shape first (a 0.5 MB zip can claim GBs).
    shape, dtype, size = header
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if claimed > size:
        raise ValueError(f"its header claims shape {shape} of {dtype} ({claimed} bytes), the member holds {size} bytes")
    inflated = max(size, claimed // dtype.itemsize * 4) if dtype.itemsize else size  # and as float32
    if inflated > max_bytes:
        raise ValueError(
            f"it would inflate to {inflated:,} bytes, more than the limit of {max_bytes:,} (max_bytes); "
            "stream large sets from a folder or ArrayRecord files instead"
        )
    if expected is not None and len(shape) in (3, 4):
        hwc = (*shape[1:3], shape[3] if len(shape) == 4 else 1)
        if hwc != expected:
            raise ValueError(f"images of shape {tuple(hwc)} per example, expected {expected}")


def load_npz(
    path: str | os.PathLike[str],
    images_key: str = "images",
    labels_key: str | None = "labels",
    num_classes: int | None = None,
    *,
    image_shape: tuple[int, int, int] | None = None,
    max_bytes: int | None = None,
) -> ArrayDataset:
    """Images (and labels) from a ``.npz`` file as an :class:`ArrayDataset` in ``[0, 1]``.

    ``images``: uint8 in ``[0, 255]`` (divided by 255) or float (kept as is), ``[N, H, W, C]`` or ``[N, H, W]``
    (a channel axis is added). ``labels``: integers ``[N]`` in ``[0, num_classes)``; ``num_classes`` defaults to
    ``max(label) + 1``. ``labels_key=None`` loads unlabeled images (``num_classes`` then defaults to 0).
    Before anything is inflated, each member's header is checked: its claimed size against the member, the
    member's size against ``max_bytes`` (default: half the physical memory) and, when given, the images' per-example
    ``image_shape`` ``(H, W, C)``. Every problem raises a ValueError naming the file and the key.
    """
    p = pathlib.Path(path)
    limit = _default_max_bytes() if max_bytes is None else max_bytes
    if not p.is_file():
        raise ValueError(f"npz file {str(p)!r} does not exist or is not a file")
    try:
        npz = np.load(p, allow_pickle=False)
    # EOFError: a zero-byte file; NotImplementedError: zipfile on a damaged header (unknown compression or version)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        raise ValueError(f"npz file {str(p)!r} could not be read: {e or type(e).__name__}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"npz file {str(p)!r} holds a single array (.npy), not named arrays (np.savez)")
    with npz:
        keys = list(npz.files)
        wanted = [images_key] if labels_key is None else [images_key, labels_key]
        for key in wanted:
            if key not in keys:
                raise ValueError(f"npz file {str(p)!r} has no key {key!r}; keys present: {keys}")
            try:
                _check_before_inflating(_npy_header(npz, key), limit, image_shape if key == images_key else None)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
                raise ValueError(f"npz file {str(p)!r}, key {key!r}: {e}") from e

        def get(key: str) -> np.ndarray:
            try:
                return np.asarray(npz[key])
            # ValueError: object arrays need pickle, which we refuse; the others: a damaged or truncated member.
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
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
        if hi >= 2**31:
            raise ValueError(f"{lwhere}: label {hi} does not fit int32")
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
