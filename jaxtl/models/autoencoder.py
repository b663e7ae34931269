"""A convolutional autoencoder around any classifier-style encoder (a ResNet, a ConvNeXt, the small ConvNet).

The design rule that makes transfer a dictionary update: an encoder is a classifier module built with
``num_classes=0``; the same module with ``num_classes=k`` has the same parameter tree plus its head (at its
``head_path``: ``fc``, ``heads/head``, ``classifier/2``). So a pretrained autoencoder becomes a classifier with the
encoder's arrays and a new head (:func:`classifier_from_autoencoder`). ``ConvNet`` (jaxtl.models.convnet) is
re-exported here for older callers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl._trees import tree_mismatch
from jaxtl.models import kernels
from jaxtl.models.batchnorm import BatchNorm
from jaxtl.models.convnet import ConvNet
from jaxtl.models.heads import INIT_SIZE, get_head, head_path, init_head, set_head, strip_head
from jaxtl.models.resnet import ConvLayer

Dtype = Any

__all__ = ["Autoencoder", "ConvNet", "classifier_from_autoencoder", "last_spatial_map"]


def last_spatial_map(features: Mapping[str, Any]) -> jax.Array:
    """The encoder's deepest spatial map: the 4-D entry with the fewest pixels (the later one on ties).

    ResNet gives ``layer4``, ConvNet ``last_map``; any module returning a features dict works.
    """
    best: jax.Array | None = None
    for value in features.values():
        if getattr(value, "ndim", 0) == 4 and (
            best is None or value.shape[1] * value.shape[2] <= best.shape[1] * best.shape[2]
        ):
            best = value
    if best is None:
        raise ValueError(f"the encoder's features {list(features)} hold no spatial map [N, h, w, C]")
    return best


class Decoder(nn.Module):
    """Upsample a map ``[N, h, w, C]`` to ``[N, H, W, out_channels]``: (resize -> conv3x3 -> BN -> relu) per width.

    Sizes grow geometrically from ``h`` to ``H`` over the blocks; resize is bilinear, since ConvTranspose is very
    slow on XLA:CPU. The last conv has a bias and no BN; ``sigmoid_output`` squashes it to ``(0, 1)``.
    """

    out_size: tuple[int, int]
    out_channels: int = 3
    widths: Sequence[int] = (128, 64, 32)
    sigmoid_output: bool = True
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        _, h, w, _ = x.shape
        big_h, big_w = self.out_size
        k = len(self.widths)
        for i, width in enumerate(self.widths):
            t = (i + 1) / k
            size = (max(1, round(h * (big_h / h) ** t)), max(1, round(w * (big_w / w) ** t)))
            if i == k - 1:
                size = (big_h, big_w)
            if size != (x.shape[1], x.shape[2]):
                x = kernels.resize_bilinear(x, size)
            x = ConvLayer(width, 3, 1, 1, dtype=self.dtype, name=f"conv{i + 1}")(x)
            x = BatchNorm(dtype=self.dtype, axis_name=self.axis_name, name=f"bn{i + 1}")(x, train)
            x = nn.relu(x)
        if k == 0 and (x.shape[1], x.shape[2]) != (big_h, big_w):
            x = kernels.resize_bilinear(x, (big_h, big_w))
        x = ConvLayer(self.out_channels, 3, 1, 1, dtype=self.dtype, name="out")(x)
        bias = self.param("out_bias", nn.initializers.zeros, (self.out_channels,), jnp.float32)
        x = x.astype(jnp.float32) + bias.reshape(1, 1, 1, -1)
        # Reconstructions are compared in float32 whatever the compute dtype.
        return nn.sigmoid(x) if self.sigmoid_output else x


class Autoencoder(nn.Module):
    """A convolutional autoencoder around a classifier-style ``encoder`` built with ``num_classes=0``.

    The decoder starts from the encoder's deepest spatial map (:func:`last_spatial_map`: ``layer4`` for a ResNet,
    ``last_map`` for :class:`ConvNet`) and upsamples to ``image_size`` (default: the input's size).
    The output goes through a sigmoid by default, because jaxtl's loaders give images in ``[0, 1]``; set
    ``sigmoid_output=False`` to reconstruct normalised (mean/std) inputs. Submodules are "encoder" and "decoder",
    so ``variables["params"]["encoder"]`` is exactly the parameter tree of the encoder on its own.
    ``axis_name`` is the decoder's cross-device BatchNorm axis; the training step sets it on the encoder too.
    """

    encoder: nn.Module
    out_channels: int = 3
    decoder_widths: Sequence[int] = (128, 64, 32)
    image_size: int | tuple[int, int] | None = None
    sigmoid_output: bool = True
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    def _check_encoder(self) -> None:
        if getattr(self.encoder, "num_classes", 0) != 0:
            raise ValueError(
                f"the encoder must be built with num_classes=0 (a backbone), got num_classes={self.encoder.num_classes}"
            )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Reconstruct ``x`` ``[N, H, W, C]`` as ``[N, H', W', out_channels]`` float32 (``H' x W'`` = image_size)."""
        self._check_encoder()
        if self.image_size is None:
            out_size = (x.shape[1], x.shape[2])
        elif isinstance(self.image_size, int):
            out_size = (self.image_size, self.image_size)
        else:
            out_size = (int(self.image_size[0]), int(self.image_size[1]))
        feats = self.encoder(x, train, return_features=True)
        decoder = Decoder(
            out_size=out_size,
            out_channels=self.out_channels,
            widths=tuple(self.decoder_widths),
            sigmoid_output=self.sigmoid_output,
            dtype=self.dtype,
            axis_name=self.axis_name,
            name="decoder",
        )
        return decoder(last_spatial_map(feats), train)

    def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The pooled latent ``[N, num_features]`` (the encoder's ``pre_logits``).

        Use ``ae.apply(variables, x, method=Autoencoder.encode)``.
        """
        self._check_encoder()
        return self.encoder(x, train, return_features=True)["pre_logits"]


def _first_conv_channels(params: Mapping[str, Any]) -> int:
    # Flattened paths are sorted, and a stem conv (conv1, stage1/conv1) sorts before the deeper ones.
    for leaf in jax.tree_util.tree_leaves(params):
        if getattr(leaf, "ndim", 0) == 4:
            return int(leaf.shape[2])
    raise ValueError("the encoder's params hold no 4-D conv kernel; pass input_shape to classifier_from_autoencoder")


def classifier_from_autoencoder(
    ae_variables: Mapping[str, Any],
    encoder_module: nn.Module,
    num_classes: int,
    rng: jax.Array,
    input_shape: tuple[int, int, int] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder with a fresh head of ``num_classes`` outputs: ``(classifier_module, variables)``.

    The encoder's ``params`` and ``batch_stats`` are taken unchanged (the very same arrays) from
    ``ae_variables[...]["encoder"]``; only the head (at the encoder's ``head_path``: ``fc``, ``heads/head``,
    ``classifier/2``) is new, made by the head rule (:func:`~jaxtl.models.heads.init_head`: as the module
    initialises it, from ``rng``). ``input_shape`` ``(H, W, C)`` is the shape the encoder is checked at; by default
    32x32 (a ViT: its own size) with the channels of the encoder's first conv kernel.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 for a classifier, got {num_classes}")
    if "params" not in ae_variables or "encoder" not in ae_variables["params"]:
        found = list(ae_variables.get("params", {})) if "params" in ae_variables else list(ae_variables)
        raise ValueError(f"ae_variables must hold params['encoder'] (an Autoencoder's variables); found {found}")
    enc_params = ae_variables["params"]["encoder"]
    enc_stats = ae_variables.get("batch_stats", {}).get("encoder", {})
    clf = encoder_module.clone(num_classes=num_classes)
    head = head_path(clf)
    if input_shape is None:
        size = clf.input_size or INIT_SIZE
        input_shape = (size, size, _first_conv_channels(enc_params))
    dummy = jnp.zeros((1, *input_shape), jnp.float32)

    def init(key: jax.Array) -> Any:
        return clf.init(key, dummy, train=False)

    expected = jax.eval_shape(init, rng)
    if get_head(expected, head) is None:
        raise ValueError(
            f"{type(clf).__name__} with num_classes={num_classes} has no {'/'.join(head)!r}; "
            f"params: {list(expected['params'])}"
        )
    fresh_params = strip_head(expected, head)["params"]
    for what, mine, theirs in (
        ("params", enc_params, fresh_params),
        ("batch_stats", enc_stats, expected.get("batch_stats", {})),
    ):
        problems = tree_mismatch(mine, theirs)
        if problems:
            raise ValueError(
                f"the autoencoder's encoder {what} do not match {type(clf).__name__}(num_classes={num_classes}) "
                f"without its head: {'; '.join(problems)}"
            )
    fresh_head = init_head(clf, num_classes, rng, input_shape=input_shape)
    variables: dict[str, Any] = set_head({"params": dict(enc_params)}, fresh_head, head)
    if enc_stats:
        variables["batch_stats"] = dict(enc_stats)
    return clf, variables
