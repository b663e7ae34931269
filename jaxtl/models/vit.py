"""torchvision's Vision Transformer (``vit_b_16`` ... ``vit_h_14``) in Flax linen, numerically and structurally
faithful.

Submodules carry torchvision's names (``conv_proj``, ``class_token``, ``encoder/pos_embedding``,
``encoder/layers/encoder_layer_3/self_attention/out_proj``, ``encoder/ln``, ``heads/head``), so a key of a torch
``state_dict`` and a Flax parameter path read the same; the packed attention projection is ``in_proj_kernel``
(torch's ``in_proj_weight``, transposed) and ``in_proj_bias``. LayerNorms (eps 1e-6) and the attention softmax run
in float32 whatever the compute ``dtype``; GELU is exact (erf). Input is NHWC ``[N, image_size, image_size, 3]``.

Attention goes through :func:`jax.nn.dot_product_attention` (``implementation=None``: JAX picks; today that is
XLA's attention on every platform, exact on the CPU). Attention dropout, which that function does not take, runs
an explicit softmax in train mode. :func:`interpolate_embeddings` resizes the position embedding for another input
size as torchvision's function of that name does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.models.heads import torch_linear_init
from jaxtl.models.layers import RNG_COLLECTION, LayerNorm, check_rng, dense, gelu, trunc_normal

Dtype = Any
LN_EPS = 1e-6  # torchvision: partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """``conv_proj = Conv2d(3, D, kernel_size=p, stride=p)`` as a reshape and one matmul (the same sum, no conv
    lowering needed): ``[N, H, W, C]`` -> tokens ``[N, (H/p) * (W/p), D]`` in row-major patch order, as torch's
    ``reshape(n, D, h*w).permute(0, 2, 1)``. ``kernel`` is HWIO ``[p, p, C, D]``, ``bias`` ``[D]``."""

    hidden_dim: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        p = self.patch_size
        init = trunc_normal(math.sqrt(1.0 / (c * p * p)))  # torchvision's init of the patchify stem
        kernel = self.param("kernel", init, (p, p, c, self.hidden_dim), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_dim,), jnp.float32)
        gh, gw = h // p, w // p
        patches = x.astype(self.dtype).reshape(n, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(n, gh * gw, p * p * c)  # (i, j, c) order, as the HWIO kernel flattens
        tokens = patches @ kernel.astype(self.dtype).reshape(p * p * c, self.hidden_dim)
        return tokens + bias.astype(self.dtype).reshape(1, 1, -1)


class MultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention(D, heads, dropout, batch_first=True)`` as self-attention: ``[N, T, D]`` ->
    ``[N, T, D]``. Parameters: ``in_proj_kernel`` ``[D, 3D]`` and ``in_proj_bias`` ``[3D]`` (q, k, v packed as
    torch packs them), ``out_proj/{kernel,bias}``."""

    num_heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        n, t, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"hidden size {d} is not divisible by num_heads={self.num_heads}")
        hd = d // self.num_heads
        w = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (d, 3 * d), jnp.float32)
        b = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,), jnp.float32)
        qkv = x.astype(self.dtype) @ w.astype(self.dtype) + b.astype(self.dtype).reshape(1, 1, -1)
        q, k, v = (a.reshape(n, t, self.num_heads, hd) for a in jnp.split(qkv, 3, axis=-1))
        if train and self.dropout > 0.0:
            # Dropout on the attention weights: jax.nn.dot_product_attention has none, so the softmax is explicit.
            logits = jnp.einsum("ntkh,nskh->nkts", q, k, preferred_element_type=jnp.float32) / math.sqrt(hd)
            probs = jax.nn.softmax(logits, axis=-1)
            probs = nn.Dropout(self.dropout, rng_collection=RNG_COLLECTION)(probs, deterministic=False)
            out = jnp.einsum("nkts,nskh->ntkh", probs.astype(v.dtype), v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)  # type: ignore[arg-type]
        out = out.reshape(n, t, d)
        return dense(d, self.dtype, "out_proj", torch_linear_init(d))(out)  # type: ignore[no-any-return]


class MLPBlock(nn.Module):
    """torchvision's ``MLPBlock``: ``Linear(D, mlp_dim)`` "0", GELU, Dropout, ``Linear(mlp_dim, D)`` "3", Dropout."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        d = x.shape[-1]
        init = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6))
        drop = nn.Dropout(self.dropout, deterministic=not train, rng_collection=RNG_COLLECTION)
        x = gelu(dense(self.mlp_dim, self.dtype, "0", **init)(x))
        x = dense(d, self.dtype, "3", **init)(drop(x))
        return drop(x)  # type: ignore[no-any-return]


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = LayerNorm(LN_EPS, self.dtype, name="ln_1")(x)
        y = MultiheadAttention(
            self.num_heads, self.attention_dropout, self.dtype, self.attention_impl, name="self_attention"
        )(y, train)
        y = nn.Dropout(self.dropout, deterministic=not train, rng_collection=RNG_COLLECTION)(y)
        x = x + y
        y = LayerNorm(LN_EPS, self.dtype, name="ln_2")(x)
        return x + MLPBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train)  # type: ignore[no-any-return]


class EncoderLayers(nn.Module):
    """torchvision's ``encoder.layers = Sequential(encoder_layer_0, encoder_layer_1, ...)``."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_layers):
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout,
                self.attention_dropout,
                self.dtype,
                self.attention_impl,
                name=f"encoder_layer_{i}",
            )(x, train)
        return x


class Encoder(nn.Module):
    """``ln(layers(dropout(x + pos_embedding)))``; ``pos_embedding`` is ``[1, T, D]`` (float32)."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        _, t, d = x.shape
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, t, d), jnp.float32)
        x = x + pos.astype(self.dtype)
        x = nn.Dropout(self.dropout, deterministic=not train, rng_collection=RNG_COLLECTION)(x)
        x = EncoderLayers(
            self.num_layers,
            self.num_heads,
            self.mlp_dim,
            self.dropout,
            self.attention_dropout,
            self.dtype,
            self.attention_impl,
            name="layers",
        )(x, train)
        return LayerNorm(LN_EPS, self.dtype, name="ln")(x)  # type: ignore[no-any-return]


class Heads(nn.Module):
    """torchvision's ``heads = Sequential(OrderedDict(head=Linear(D, K)))``, zero-initialised as there."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        zeros = nn.initializers.zeros
        return dense(self.num_classes, self.dtype, "head", zeros, zeros)(x)  # type: ignore[no-any-return]


class VisionTransformer(nn.Module):
    """A torchvision Vision Transformer (``torchvision.models.VisionTransformer`` without a conv stem or a
    representation layer, as every torchvision ViT variant).

    ``__call__(x, train=False, return_features=False)`` takes NHWC images ``[N, image_size, image_size, 3]`` and
    returns logits ``[N, num_classes]``, or with ``return_features=True`` a dict of ``tokens`` (the final normed
    sequence ``[N, 1 + g*g, D]``, class token first), ``last_map`` (the patch tokens as a map ``[N, g, g, D]``,
    g = image_size / patch_size), ``pre_logits`` (the class token ``[N, D]``) and ``logits``. ``num_classes=0``
    builds a backbone without ``heads``: its output is ``pre_logits``. Dropout and attention dropout (0 in every
    torchvision variant) draw from the ``"dropout"`` rng in train mode.
    """

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    dropout: float = 0.0
    attention_dropout: float = 0.0
    num_classes: int = 1000
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None  # jax.nn.dot_product_attention's implementation (None: JAX chooses)

    head_path: ClassVar[str] = "heads/head"
    no_decay: ClassVar[str] = r"(?:^|/)(?:bias|in_proj_bias|scale)$|^class_token$|^encoder/pos_embedding$"
    decay_norms: ClassVar[bool] = False  # norms, biases, embeddings: no weight decay

    @property
    def num_features(self) -> int:
        return int(self.hidden_dim)

    @property
    def input_size(self) -> int:
        """The input side this transformer is built for (its patch grid and position embedding)."""
        return int(self.image_size)

    @property
    def layer_patterns(self) -> tuple[str, ...]:
        """Parameter paths per layer from the input up: the embeddings, then each encoder block (the final norm
        and the head are the top, unmatched)."""
        embed = r"^(?:conv_proj/|class_token$|encoder/pos_embedding$)"
        return (embed, *(f"^encoder/layers/encoder_layer_{i}/" for i in range(self.num_layers)))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> Any:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"VisionTransformer expects NHWC images [N, H, W, 3], got shape {tuple(x.shape)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            raise ValueError(
                f"this VisionTransformer is built for {self.image_size}x{self.image_size} images, got "
                f"{x.shape[1]}x{x.shape[2]}; resize the model first (its position embedding interpolated): "
                f"jaxtl.models.at_image_size(module, variables, {x.shape[1]}), or pretrained(...).at_image_size("
                f"{x.shape[1]})"
            )
        check_rng(self, train, {"dropout": self.dropout, "attention_dropout": self.attention_dropout})
        n = x.shape[0]
        g = self.image_size // self.patch_size
        tokens = PatchEmbed(self.hidden_dim, self.patch_size, self.dtype, name="conv_proj")(x)
        cls = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim), jnp.float32)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.hidden_dim))
        seq = jnp.concatenate([cls, tokens], axis=1)
        seq = Encoder(
            self.num_layers,
            self.num_heads,
            self.mlp_dim,
            self.dropout,
            self.attention_dropout,
            self.dtype,
            self.attention_impl,
            name="encoder",
        )(seq, train)
        feats: dict[str, jax.Array] = {
            "tokens": seq,
            "last_map": seq[:, 1:].reshape(n, g, g, self.hidden_dim),
            "pre_logits": seq[:, 0],
        }
        out = seq[:, 0]
        if self.num_classes:
            out = Heads(self.num_classes, self.dtype, name="heads")(out)
        feats["logits"] = out
        return feats if return_features else out


# --- position embedding at another resolution -------------------------------------------------------------------


def _cubic(x: float, a: float = -0.75) -> float:
    """torch's cubic convolution kernel (A = -0.75), for ``|x| < 2``."""
    x = abs(x)
    if x <= 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a


def interpolation_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """``[out_size, in_size]`` weights of torch's 1-D ``interpolate(mode, align_corners=True)`` (float64), border
    taps clamped as torch clamps them."""
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation_mode must be 'bicubic' or 'bilinear', got {mode!r}")
    m = np.zeros((out_size, in_size), np.float64)
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    for o in range(out_size):
        src = scale * o
        i = math.floor(src)
        t = src - i
        if mode == "bilinear":
            m[o, i] += 1.0 - t
            m[o, min(i + 1, in_size - 1)] += t
        else:
            for tap, w in zip(range(i - 1, i + 3), (_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
                m[o, min(max(tap, 0), in_size - 1)] += w
    return m


def interpolate_embeddings(
    image_size: int,
    patch_size: int,
    variables: Mapping[str, Any],
    interpolation_mode: str = "bicubic",
    reset_heads: bool = False,
) -> dict[str, Any]:
    """torchvision's ``interpolate_embeddings`` on Flax variables: the ``encoder/pos_embedding`` ``[1, 1 + g*g, D]``
    resized to the ``(image_size / patch_size)`` grid of a model built at ``image_size`` (class token position kept,
    the grid interpolated with ``interpolation_mode``, align_corners=True); ``reset_heads`` drops ``heads``.
    Unchanged (the same arrays) when the grid already fits."""
    params = dict(variables["params"])
    encoder = dict(params["encoder"])
    pos = np.asarray(encoder["pos_embedding"])
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise ValueError(f"unexpected position embedding shape {pos.shape}, expected [1, T, D]")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
    new_g = image_size // patch_size
    old = pos.shape[1] - 1
    g = math.isqrt(old)
    if g * g != old:
        raise ValueError(f"the position embedding's {old} patch positions are not a square grid")
    out = {**variables}
    if g != new_g:
        grid = pos[0, 1:].astype(np.float64).reshape(g, g, -1)
        mat = interpolation_matrix(g, new_g, interpolation_mode)
        new_grid = np.einsum("oi,ijd,pj->opd", mat, grid, mat).reshape(new_g * new_g, -1)
        new_pos = np.concatenate([pos[0, :1], new_grid.astype(pos.dtype)], axis=0)[None]
        encoder["pos_embedding"] = jnp.asarray(new_pos)
        params["encoder"] = encoder
        if reset_heads:
            params.pop("heads", None)
        out["params"] = params
    return out


def resize(
    module: VisionTransformer, variables: Mapping[str, Any], image_size: int, interpolation_mode: str = "bicubic"
) -> tuple[VisionTransformer, dict[str, Any]]:
    """``module`` rebuilt for ``image_size`` inputs and ``variables`` with the position embedding interpolated
    (:func:`interpolate_embeddings`), e.g. a 224-px ``vit_b_16`` fine-tuned at 384."""
    new = interpolate_embeddings(image_size, module.patch_size, variables, interpolation_mode)
    return module.clone(image_size=image_size), new
