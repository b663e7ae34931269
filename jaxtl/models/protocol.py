"""What every jaxtl classifier declares about itself, so the rest of the code asks instead of assuming.

A module is a :class:`Classifier` when it has these members (ResNet, ConvNet, VisionTransformer and ConvNeXt do):

- ``num_classes`` (0: a backbone without head), ``dtype`` (the compute dtype; parameters are float32);
- ``num_features``: the width of the pooled features the head reads (``pre_logits``);
- ``head_path``: where the head's parameters sit in ``params``, ``"/"``-separated (``"fc"``, ``"heads/head"``,
  ``"classifier/2"``); everything else is the backbone;
- ``no_decay``: a regex (``re.search`` on ``"a/b/leaf"`` paths) of the parameters that take no weight decay (norms,
  biases, a class token, a position embedding, ConvNeXt's layer scale);
- ``decay_norms``: whether a full fine-tune decays the no-decay parameters too by default (ResNet: True, as
  torchvision's recipe; ViT and ConvNeXt: False);
- ``layer_patterns``: one regex per layer from the input up (index 0: the stem or embeddings, then each block);
  parameters matching none (the final norm, the head) form the top layer, index ``len(layer_patterns)``;
- ``input_size``: the side of the square input the module is built for (a ViT's ``image_size``), or None when it
  takes any size from a small minimum (ResNet, ConvNeXt, ConvNet: 32 px works);
- ``__call__(x, train=False, return_features=False)``: logits ``[N, num_classes]`` (the pooled features when
  ``num_classes=0``), or a dict with at least ``pre_logits`` ``[N, num_features]`` and ``logits``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Classifier(Protocol):
    """The family description every jaxtl classifier module carries (see the module docstring)."""

    num_classes: int
    dtype: Any
    head_path: str
    no_decay: str
    decay_norms: bool

    @property
    def num_features(self) -> int: ...

    @property
    def layer_patterns(self) -> tuple[str, ...]: ...

    @property
    def input_size(self) -> int | None: ...

    def __call__(self, x: Any, train: bool = False, return_features: bool = False) -> Any: ...
