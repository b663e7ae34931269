"""torchvision's image transforms on uint8 Pillow images, pixel for pixel, with draws from a per-example seed.

Everything here runs in the data workers, on the host, on 8-bit pixels:

- :func:`decode_image` opens encoded bytes (or a path) as a uint8 Pillow image in ``"RGB"`` (or ``"L"``) mode,
  as torchvision's ``ImageFolder`` loader does (``convert("RGB")``), except that 16-bit and float images are
  scaled to ``[0, 255]`` by their real range instead of being clipped at 255 (see :func:`decode_image`).
- :func:`random_resized_crop_params` is ``torchvision.transforms.v2.RandomResizedCrop``'s sampling algorithm
  (10 attempts at an area in ``scale`` and a log-uniform aspect ratio in ``ratio``, then the clamped centre crop),
  drawing from a numpy ``Generator`` instead of torch's global RNG.
- :func:`resized_crop` is its pixel path: ``crop`` the box, then Pillow's (antialiased) ``resize``, the same two
  Pillow calls torchvision makes for a PIL image, so the pixels are identical (``resize(box=...)`` would blend
  pixels outside the box at its edges and is not the same).
- :func:`resize_center_crop` is ``Resize(resize_size)`` + ``CenterCrop(size)``, torchvision's evaluation recipe
  (``weights.transforms()``).
- Every resize takes the model card's ``interpolation`` (:data:`INTERPOLATIONS`: ``"bilinear"``, ``"bicubic"``,
  ``"nearest"``) and makes Pillow's call with that filter, as torchvision does for a PIL image (Pillow's bilinear
  and bicubic filters are antialiased when downscaling).
- :class:`ImageTransform` puts them together per example: train ``"rrc"`` = RandomResizedCrop + horizontal flip,
  ``"flip"`` = eval crop + flip, ``"none"`` = eval crop; its draws come from :func:`example_rng`, a function of
  ``(seed, epoch, index)`` only, so results do not depend on which worker or process handles the example.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Literal

import numpy as np
from PIL import Image

__all__ = [
    "AUGMENTATIONS",
    "INTERPOLATIONS",
    "ImageTransform",
    "decode_image",
    "example_rng",
    "random_resized_crop_params",
    "resize_center_crop",
    "resized_crop",
]

Augment = Literal["none", "flip", "rrc"]
AUGMENTATIONS: tuple[str, ...] = ("none", "flip", "rrc")

# torchvision's InterpolationMode -> the Pillow filter its functional resize passes for a PIL image.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resample_filter(interpolation: str) -> Image.Resampling:
    """The Pillow filter of ``interpolation`` (a key of :data:`INTERPOLATIONS`); ValueError naming the choices."""
    try:
        return INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}") from None


# Resize + CenterCrop resamples the whole image unless that would be more than this many times resize_size**2
# pixels (an aspect ratio beyond 64:1); then only the crop (see resize_center_crop).
_MAX_RESIZE_AREA = 64

# Pillow modes with more than 8 bits per sample: scaled by their real range, not clipped by convert().
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_uint8_gray(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-channel image as 8-bit ``"L"``, scaled by its real range.

    16-bit modes and ``"I"`` images whose values fit 16 bits are divided by 65535; other ``"I"`` images and float
    ``"F"`` images outside ``[0, 1]`` are scaled by their own min/max; float images within ``[0, 1]`` keep their
    values. Non-finite values make the image unreadable (ValueError).
    """
    arr = np.asarray(img)
    if img.mode == "F" or np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("float image with non-finite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    else:
        x = arr.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0 and hi <= 65535):  # 32-bit data beyond 16 bits: its own range
            x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
            return Image.fromarray(np.round(x * 255.0).astype(np.uint8), "L")
        x = x / 65535.0
    return Image.fromarray(np.round(x * 255.0).astype(np.uint8), "L")


def decode_image(data: bytes | str | os.PathLike[str], mode: str = "RGB") -> Image.Image:
    """Encoded image bytes (or a file path) as a decoded uint8 Pillow image in ``mode`` (``"RGB"`` or ``"L"``).

    8-bit images are converted with ``Image.convert(mode)`` as torchvision's loader does (palette and alpha images
    through RGBA, which gives the same pixels without Pillow's transparency warning). 16-bit, 32-bit integer and
    float images are scaled to ``[0, 255]`` by their real range (see :func:`_to_uint8_gray`), where ``convert``
    would clip them at 255 (a mid-grey 16-bit PNG would become white, a float TIFF of 0.5 black).
    Raises OSError, ValueError or SyntaxError (Pillow's errors) for an empty, corrupt or truncated file.
    """
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as opened:
        opened.load()  # decode now: truncated files fail here, not later
        img: Image.Image = opened
        if img.mode in _WIDE_INT_MODES or img.mode == "F":
            img = _to_uint8_gray(img)
        if img.mode in ("P", "PA", "LA", "RGBA") and mode == "RGB":
            img = img.convert("RGBA").convert("RGB")
        elif img.mode != mode:
            img = img.convert(mode)
        else:
            img = img.copy()  # detach from the file before the context manager closes it
    return img


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one example's augmentation: ``default_rng([seed, epoch, index, 1])``.

    A function of the three numbers only (the trailing 1 keeps it apart from ``epoch_indices``' ``[seed, epoch]``
    stream), so any worker in any process draws the same crop and flip for the same example.
    """
    return np.random.default_rng([seed, epoch, index, 1])


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """A crop box ``(top, left, h, w)`` of a ``height x width`` image, by torchvision's RandomResizedCrop rule.

    Up to 10 attempts: area ``U(scale) * H * W``, aspect ratio ``exp(U(log ratio))``, ``w = round(sqrt(area *
    ratio))``, ``h = round(sqrt(area / ratio))``; the first box that fits is placed uniformly. Otherwise the
    centre crop of the whole image clamped to ``ratio``. Same algorithm and distribution as torchvision; the
    draws come from ``rng`` (not bit-identical to torch's RNG stream).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(
    img: Image.Image, box: tuple[int, int, int, int], size: int, interpolation: str = "bilinear"
) -> Image.Image:
    """Crop ``box = (top, left, h, w)`` then resize to ``size x size`` with ``interpolation`` (antialiased):
    torchvision's ``v2.functional.resized_crop`` on a PIL image, the same Pillow calls."""
    top, left, h, w = box
    out = img.crop((left, top, left + w, top + h))
    if out.size != (size, size):
        out = out.resize((size, size), resample_filter(interpolation))
    return out


def resize_center_crop(img: Image.Image, size: int, resize_size: int, interpolation: str = "bilinear") -> Image.Image:
    """torchvision's ``Resize(resize_size, interpolation)`` (shorter side to ``resize_size``, the longer
    ``int()``-truncated, antialiased) then ``CenterCrop(size)`` (offsets ``round((new - size) / 2)``), pixel for
    pixel: ``weights.transforms()`` on a PIL image.

    Images with an aspect ratio beyond 64:1 resample only the crop region (within 1 level of torchvision), so
    memory stays bounded where torchvision would allocate the whole resized strip.
    """
    resample = resample_filter(interpolation)
    w, h = img.size
    if w <= h:
        new_w, new_h = resize_size, int(resize_size * h / w)
    else:
        new_w, new_h = int(resize_size * w / h), resize_size
    if new_w < size or new_h < size:
        raise ValueError(f"resize_size {resize_size} gives {new_w}x{new_h}, smaller than the crop {size}")
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    if new_w * new_h > _MAX_RESIZE_AREA * resize_size**2:
        # An extreme aspect ratio (a 1 x 20M pixel image would resize to gigabytes): resample only the crop, from
        # the whole image with the same scale. Pillow's filter still sees the pixels around the box, so this equals
        # resize-then-crop up to float rounding of the filter weights (at most 1 level, in a few pixels).
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), resample, box=box)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    return img.crop((left, top, left + size, top + size))


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """One example's pixels: a decoded uint8 image in, uint8 ``[size, size, C]`` out.

    ``augment`` (training only): ``"rrc"`` RandomResizedCrop(``size``, ``scale``, ``ratio``) + horizontal flip
    with probability 1/2 (torchvision's fine-tuning recipe), ``"flip"`` the eval crop + flip, ``"none"`` the eval
    crop. Eval (``train=False``) is always Resize(``resize_size``) + CenterCrop(``size``). Every resize uses
    ``interpolation`` (the model card's; torchvision's reference recipes use one filter for both).
    """

    size: int
    resize_size: int
    augment: Augment = "none"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        resample_filter(self.interpolation)  # a clear error for an unknown one
        if self.size < 1:
            raise ValueError(f"image size must be >= 1, got {self.size}")
        if self.resize_size < self.size:
            raise ValueError(f"resize size ({self.resize_size}) must be >= image size ({self.size})")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")

    def __call__(self, img: Image.Image, rng: np.random.Generator | None, train: bool) -> np.ndarray:
        """``img`` (uint8 Pillow image) -> uint8 ``[size, size, C]``; ``rng`` is used only when ``train``."""
        if train and self.augment == "rrc":
            assert rng is not None
            box = random_resized_crop_params(img.height, img.width, rng, self.scale, self.ratio)
            out = resized_crop(img, box, self.size, self.interpolation)
        else:
            out = resize_center_crop(img, self.size, self.resize_size, self.interpolation)
        arr = np.asarray(out, np.uint8).reshape(self.size, self.size, -1)
        if train and self.augment in ("rrc", "flip"):
            assert rng is not None
            if rng.random() < 0.5:
                arr = arr[:, ::-1]
        return np.ascontiguousarray(arr)
