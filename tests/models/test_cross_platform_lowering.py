"""The ResNet50 train step lowered for GPU and TPU on this CPU machine: XLA's own convolutions and pooling there,
jaxtl's CPU kernels only in a CPU lowering (the choice is made per lowering platform, not by the default backend)."""

from __future__ import annotations

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtl
from jaxtl.train import Parallel, TrainState, train_step

# Custom calls a GPU/TPU lowering may hold: shard_map's sharding annotations. Any other target (a CPU library
# kernel, a host callback) would fail to compile or run on the accelerator.
_PORTABLE_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}
_RESNET50_CONVS = 53  # stem + 16 blocks x 3 + 4 downsample convs


def _ops(text: str) -> collections.Counter[str]:
    return collections.Counter(re.findall(r"= (?:\"?)(stablehlo\.[a-z_]+)", text))


def _custom_calls(text: str) -> set[str]:
    return set(re.findall(r"stablehlo\.custom_call @([A-Za-z0-9_.]+)", text))


@functools.cache
def _traced(parallel: str, dtype: str) -> jax.stages.Traced:
    """The full ResNet50 train step under ``parallel`` traced once (32x32 images, one per device); abstract inputs."""
    par = Parallel(parallel)
    n = par.num_devices
    module = jaxtl.create("resnet50", num_classes=10, dtype=jnp.dtype(dtype))
    images = jax.ShapeDtypeStruct((n, 32, 32, 3), jnp.float32)

    shapes = jax.eval_shape(module.init, jax.random.key(0), images)
    variables = jax.tree.map(lambda a: np.ones(a.shape, a.dtype), shapes)  # values never matter here
    state = TrainState.create(module, variables, optax.sgd(0.1, momentum=0.9))
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), state)
    batch = {"images": images, "labels": jax.ShapeDtypeStruct((n,), jnp.int32)}
    step = par.map(train_step)
    if parallel == "pmap":
        # pmap takes a device axis in front of every argument; it lowers for another platform through jit.
        state = jax.tree.map(lambda a: jax.ShapeDtypeStruct((n, *a.shape), a.dtype), state)
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((n, a.shape[0] // n, *a.shape[1:]), a.dtype), batch)
        step = jax.jit(step)
    return step.trace(state, batch)


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resnet50_step_lowers_to_xla_kernels_for_gpu_and_tpu(parallel, dtype):
    traced = _traced(parallel, dtype)
    for platform in ("cuda", "tpu"):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        ops = _ops(text)
        # Every conv is XLA's, forward and backward: kernel gradients of all, input gradients of all but the stem.
        assert ops["stablehlo.convolution"] == 3 * _RESNET50_CONVS - 1, (platform, ops)
        assert ops["stablehlo.reduce_window"] == 1 and ops["stablehlo.select_and_scatter"] == 1, (platform, ops)
        assert _custom_calls(text) <= _PORTABLE_CALLS, (platform, _custom_calls(text))
        assert re.search(r"tensor<\d+x32x32x3xf32>", text)  # sanity: the step we meant
        if dtype == "bfloat16":
            assert re.search(r"stablehlo\.convolution.*bf16", text)
    # The same trace lowered for the CPU takes jaxtl's CPU kernels: the choice really is per platform.
    cpu_ops = _ops(traced.lower(lowering_platforms=("cpu",)).as_text())
    assert cpu_ops["stablehlo.reduce_window"] == 0 and cpu_ops["stablehlo.select_and_scatter"] == 0
    assert cpu_ops["stablehlo.convolution"] < 3 * _RESNET50_CONVS - 1
    assert cpu_ops["stablehlo.dot_general"] > ops["stablehlo.dot_general"]  # 1x1 convs as matmuls


_FAMILY_MODELS = {
    # (model, image size): ConvNeXt at 32 px runs its 7x7 depthwise convs on maps smaller than the kernel from the
    # second stage on, where the CPU lowering takes jaxtl's im2col; the ViT's patchify is a matmul everywhere.
    "vit": (dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64), 32),
    "convnext": (dict(block_setting=((8, 16, 1), (16, None, 1))), 32),
}


@functools.cache
def _traced_family(family: str, dtype: str) -> jax.stages.Traced:
    """A small ViT's or ConvNeXt's full train step under shard_map, traced once (abstract inputs)."""
    from jaxtl.models import ConvNeXt, VisionTransformer

    kwargs, size = _FAMILY_MODELS[family]
    cls = VisionTransformer if family == "vit" else ConvNeXt
    module = cls(**kwargs, num_classes=10, dtype=jnp.dtype(dtype))
    par = Parallel("shard_map")
    n = par.num_devices
    images = jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), images)
    variables = jax.tree.map(lambda a: np.ones(a.shape, a.dtype), shapes)
    state = TrainState.create(module, variables, optax.adamw(1e-3))
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), state)
    batch = {"images": images, "labels": jax.ShapeDtypeStruct((n,), jnp.int32)}
    return par.map(train_step).trace(state, batch)


@pytest.mark.parametrize("family", ["vit", "convnext"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vit_and_convnext_steps_lower_for_gpu_and_tpu(family, dtype):
    traced = _traced_family(family, dtype)
    for platform in ("cuda", "tpu"):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        ops = _ops(text)
        assert _custom_calls(text) <= _PORTABLE_CALLS, (platform, _custom_calls(text))
        if family == "vit":
            assert ops["stablehlo.convolution"] == 0 and ops["stablehlo.dot_general"] > 0, (platform, ops)
            # The softmax runs in float32 even in a bfloat16 model: its exponential is on f32 logits.
            assert re.search(r"stablehlo\.exponential %\S+ : tensor<(?:\d+x)+17x17xf32>", text), platform
        else:
            # stem, 2 depthwise, 1 downsampling conv: XLA's own, forward and backward (no input grad of the stem).
            assert ops["stablehlo.convolution"] == 3 * 4 - 1, (platform, ops)
        if dtype == "bfloat16":
            assert re.search(r"stablehlo\.dot_general.*bf16", text)
    if family == "convnext":
        cpu_ops = _ops(traced.lower(lowering_platforms=("cpu",)).as_text())
        assert cpu_ops["stablehlo.convolution"] < 3 * 4 - 1  # jaxtl's CPU kernels: the choice is per platform
