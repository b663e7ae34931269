"""Class predictions for images, with the preprocessing the model card prescribes.

    module, variables, card = jaxtl.bridge.pretrained("resnet50", weights="IMAGENET1K_V2")
    for p in predict(["cat.jpg"], module, variables, card, top_k=5):
        print(p.source, p.top)   # (("tabby", 0.61), ("tiger cat", 0.22), ...)

:func:`preprocess` is torchvision's eval transform for the card (``weights.transforms()``): Resize the shorter side to
``resize_size`` (the card's interpolation: bilinear, or bicubic for SWAG weights; antialiased), CenterCrop
``crop_size``, scale to ``[0, 1]``, normalise with mean/std;
the pixel work is :func:`jaxtl.data.transforms.resize_center_crop`, the same Pillow calls torchvision makes.

An image file that cannot be read (missing, corrupt, not an image) does not stop the others: its
:class:`Prediction` carries the reason in ``error`` and no classes. :func:`write_predictions` prints them as
``jaxtl predict`` does and stops quietly when the reader of a pipe goes away (``| head``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

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
    ``source`` is the image's path, or ``"image[i]"`` for an in-memory image. ``error`` says why an image file
    could not be read (then ``top`` is empty); None otherwise."""

    source: str
    top: tuple[tuple[str, float, int], ...]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": self.source,
            "top": [{"class": name, "probability": p, "index": i} for name, p, i in self.top],
        }
        if self.error is not None:
            out["error"] = self.error
        return out


class UnreadableImageError(ValueError):
    """An image file that cannot be read or decoded; the message names it and says why."""


def _as_pil(image: ImageLike, mode: str, where: str) -> Image.Image:
    from jaxtl.data.transforms import decode_image

    if isinstance(image, str | os.PathLike):
        try:
            return decode_image(image, mode)
        # Pillow raises many types on damaged data (OSError, ValueError, SyntaxError, struct.error, EOFError,
        # DecompressionBombError, ...): each makes this one file unreadable.
        except Exception as e:
            reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
            raise UnreadableImageError(f"cannot read the image {image}: {reason}") from e
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
    img = _as_pil(image, "RGB" if pre.channels == 3 else "L", where)
    crop = resize_center_crop(img, pre.crop_size, pre.resize_size, pre.interpolation)
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
    preprocessing; the model runs in eval mode. An image file that cannot be read gets a :class:`Prediction` with
    its ``error`` (the others are predicted); ValueError for a model without classifier head or a bad array."""
    if card.num_classes < 1:
        kind = card.kind or "model"
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise ValueError(
            f"the model is {article} {kind} without classifier head (num_classes=0): predict needs a classifier "
            "(fine-tune it first)"
        )
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
        rows: list[np.ndarray | None] = []
        errors: dict[int, str] = {}
        for i, (im, src) in enumerate(zip(chunk, sources)):
            try:
                rows.append(preprocess(im, card.preprocessing, src))
            except UnreadableImageError as e:
                rows.append(None)
                errors[i] = str(e)
        good = [r for r in rows if r is not None]
        probs = iter(np.asarray(apply(variables, np.stack(good)))) if good else iter(())
        for i, src in enumerate(sources):
            if i in errors:
                out.append(Prediction(src, (), errors[i]))
                continue
            p = next(probs)
            order = np.argsort(-p, kind="stable")[:k]
            out.append(Prediction(src, tuple((names[i], float(p[i]), int(i)) for i in order)))
    return out


def write_predictions(
    predictions: Sequence[Prediction], model: str, *, as_json: bool = False, file: TextIO | None = None
) -> bool:
    """Print ``predictions`` as ``jaxtl predict`` does: per image its path then ``probability  class`` lines
    (unreadable images are left out: the caller reports their ``error``), or with ``as_json`` one document
    ``{"model": model, "predictions": [...]}`` (unreadable images included, with their ``error``).

    Returns False when the reader went away (a closed pipe, ``| head``): the rest is dropped quietly and the
    stream is pointed at ``os.devnull`` so that flushing it at exit raises nothing. True otherwise.
    """
    stream = sys.stdout if file is None else file
    try:
        if as_json:
            doc = {"model": model, "predictions": [p.to_dict() for p in predictions]}
            stream.write(json.dumps(doc, indent=2) + "\n")
        else:
            for p in predictions:
                if p.error is not None:
                    continue
                stream.write(p.source + "\n")
                for name, prob, _ in p.top:
                    stream.write(f"  {prob:8.4f}  {name}\n")
        stream.flush()
    except BrokenPipeError:
        try:  # the unflushed rest would raise again when the interpreter flushes the stream at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a file descriptor stream (e.g. io.StringIO)
            pass
        return False
    return True


def load_model(
    weights: Any = None, checkpoint: str | os.PathLike | None = None, arch: str | None = None
) -> tuple[nn.Module, dict[str, Any], ModelCard]:
    """``(module, variables, card)`` from torchvision weights (a name such as ``"resnet50.IMAGENET1K_V2"``, an enum
    member or a weights file: :func:`jaxtl.bridge.pretrained`) or from a jaxtl checkpoint directory; exactly one."""
    if (weights is None) == (checkpoint is None):
        raise ValueError("give either weights or checkpoint (exactly one)")
    if checkpoint is not None:
        from jaxtl.train.model_files import load_variables

        return load_variables(checkpoint)
    from jaxtl.bridge import pretrained

    module, variables, card = pretrained(arch, weights)
    return module, variables, card
