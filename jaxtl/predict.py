"""Class predictions for images, with the preprocessing the model card prescribes.

    module, variables, card = jaxtl.bridge.pretrained("resnet50", weights="IMAGENET1K_V2")
    for p in predict(["cat.jpg"], module, variables, card, top_k=5):
        print(p.source, p.top)   # (("tabby", 0.61), ("tiger cat", 0.22), ...)

:func:`preprocess` is torchvision's eval transform for the card (``weights.transforms()``): Resize the shorter side to
``resize_size`` (bilinear, antialiased), CenterCrop ``crop_size``, scale to ``[0, 1]``, normalise with mean/std;
the pixel work is :func:`jaxtl.data.transforms.resize_center_crop`, the same Pillow calls torchvision makes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxtl.models.card import ModelCard, Preprocessing

ImageLike = str | os.PathLike | Image.Image | np.ndarray


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The ``top`` classes of one image, most probable first: ``(class name, probability, class index)`` each.
    ``source`` is the image's path, or ``"image[i]"`` for an in-memory image."""

    source: str
    top: tuple[tuple[str, float, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.source,
            "top": [{"class": name, "probability": p, "index": i} for name, p, i in self.top],
        }


def _as_pil(image: ImageLike, mode: str, where: str) -> Image.Image:
    from jaxtl.data.transforms import decode_image

    if isinstance(image, str | os.PathLike):
        try:
            return decode_image(image, mode)
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read the image {image}: {e}") from e
    if isinstance(image, Image.Image):
        return image if image.mode == mode else image.convert(mode)
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"{where}: expected a uint8 array [H, W] or [H, W, 1|3|4], got {a.dtype} {list(a.shape)}")
    img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
    return img if img.mode == mode else img.convert(mode)


def preprocess(image: ImageLike, preprocessing: Preprocessing, where: str = "image") -> np.ndarray:
    """One image (a path, a Pillow image, or a uint8 array ``[H, W(, C)]``) -> float32 ``[crop, crop, C]``, as
    torchvision's ``weights.transforms()`` makes it (``C`` = ``preprocessing.channels``; gray and RGBA images are
    converted as torchvision's loader does)."""
    from jaxtl.data.transforms import resize_center_crop

    pre = preprocessing
    if pre.interpolation != "bilinear":
        raise ValueError(
            f"{where}: interpolation {pre.interpolation!r} is not implemented (jaxtl's eval transform is bilinear)"
        )
    img = _as_pil(image, "RGB" if pre.channels == 3 else "L", where)
    crop = resize_center_crop(img, pre.crop_size, pre.resize_size)
    x = np.asarray(crop, np.uint8).reshape(pre.crop_size, pre.crop_size, -1).astype(np.float32) / np.float32(255)
    return (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)


def predict(
    images: Sequence[ImageLike],
    module: nn.Module,
    variables: dict[str, Any],
    card: ModelCard,
    top_k: int = 5,
    batch_size: int = 32,
) -> list[Prediction]:
    """The ``top_k`` most probable classes (softmax of the logits) of each image, named by ``card.class_names``
    (``"class <i>"`` where the card has no names). Images go through :func:`preprocess` with the card's
    preprocessing; the model runs in eval mode. ValueError for a backbone card (no head) or an unreadable image."""
    if card.num_classes < 1:
        raise ValueError(f"the model card describes a {card.kind} without classifier head (num_classes=0)")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k = min(top_k, card.num_classes)
    names = card.class_names or tuple(f"class {i}" for i in range(card.num_classes))

    def probabilities(v: dict[str, Any], x: jax.Array) -> jax.Array:
        logits = jnp.asarray(module.apply(v, x, train=False), jnp.float32)
        return jax.nn.softmax(logits, axis=-1)

    apply = jax.jit(probabilities)
    out: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        sources = [
            str(im) if isinstance(im, str | os.PathLike) else f"image[{start + i}]" for i, im in enumerate(chunk)
        ]
        x = np.stack([preprocess(im, card.preprocessing, src) for im, src in zip(chunk, sources)])
        probs = np.asarray(apply(variables, x))
        for src, p in zip(sources, probs):
            order = np.argsort(-p, kind="stable")[:k]
            out.append(Prediction(src, tuple((names[i], float(p[i]), int(i)) for i in order)))
    return out


def load_model(
    weights: Any = None, checkpoint: str | os.PathLike | None = None, arch: str | None = None
) -> tuple[nn.Module, dict[str, Any], ModelCard]:
    """``(module, variables, card)`` from torchvision weights (a name such as ``"resnet50.IMAGENET1K_V2"``, an enum
    member or a weights file: :func:`jaxtl.bridge.pretrained`) or from a jaxtl checkpoint directory; exactly one."""
    if (weights is None) == (checkpoint is None):
        raise ValueError("give either weights or checkpoint (exactly one)")
    if checkpoint is not None:
        from jaxtl.train.checkpoint import load_variables

        return load_variables(checkpoint)
    from jaxtl.bridge import pretrained

    module, variables, card = pretrained(arch, weights)
    return module, variables, card
