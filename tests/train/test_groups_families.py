"""ParamGroups from a model's family description: layer-wise learning-rate decay and no weight decay on norms,
biases, class token and position embedding, checked per leaf; head-only and fine-tune groups at nested heads."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxtl
from jaxtl.models import ConvNeXt, VisionTransformer
from jaxtl.train.groups import ParamGroups, is_backbone_frozen, param_paths

VIT = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3)
CONVNEXT = ConvNeXt(block_setting=((4, 8, 2), (8, None, 1)), num_classes=3)


def _params(module, size: int) -> dict:
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes["params"])


def _scales(groups: ParamGroups, params: dict) -> dict[str, tuple[float, float]]:
    """{path: (lr_scale, weight_decay_scale)} as the groups assign them."""
    return {
        p: (groups.groups[g].lr_scale, groups.groups[g].weight_decay_scale) for p, g in groups.assign(params).items()
    }


def _no_decay(path: str) -> bool:
    """The rule written out by hand: norms' scales, biases, the class token, the position embedding, layer scales."""
    leaf = path.rsplit("/", 1)[-1]
    return leaf in ("bias", "in_proj_bias", "scale", "layer_scale", "class_token", "pos_embedding")


def test_vit_layer_decay_per_leaf() -> None:
    params = _params(VIT, 16)
    got = _scales(ParamGroups.layer_decay(VIT, decay=0.5), params)

    def layer(path: str) -> int:  # 0: embeddings; 1, 2: encoder blocks; 3: final norm and head
        m = re.match(r"encoder/layers/encoder_layer_(\d)/", path)
        if m:
            return int(m.group(1)) + 1
        return 0 if path.startswith(("conv_proj/", "class_token", "encoder/pos_embedding")) else 3

    assert len(got) == len(param_paths(params)) == 32
    for path, (lr, wd) in got.items():
        assert lr == 0.5 ** (3 - layer(path)), path
        assert wd == (0.0 if _no_decay(path) else 1.0), path
    assert got["heads/head/kernel"] == (1.0, 1.0) and got["encoder/ln/scale"] == (1.0, 0.0)
    assert got["class_token"] == (0.125, 0.0) and got["conv_proj/kernel"] == (0.125, 1.0)


def test_convnext_layer_decay_puts_a_downsampling_layer_with_the_next_block() -> None:
    params = _params(CONVNEXT, 32)
    got = _scales(ParamGroups.layer_decay(CONVNEXT, decay=0.5, no_decay=False), params)
    # stem 0; features/1/0 -> 1, features/1/1 -> 2; features/2 (downsampling) and features/3/0 -> 3; classifier 4
    expect = {"features/0/": 4, "features/1/0/": 3, "features/1/1/": 2, "features/2/": 1, "features/3/0/": 1}
    for path, (lr, wd) in got.items():
        depth = next((d for prefix, d in expect.items() if path.startswith(prefix)), 0)
        assert lr == 0.5**depth and wd == 1.0, path
    assert got["features/1/0/layer_scale"][0] == 0.125


def test_layer_decay_scales_the_updates_and_drops_weight_decay() -> None:
    params = _params(VIT, 16)
    groups = ParamGroups.layer_decay(VIT, decay=0.5)
    lr, wd = 0.1, 0.01

    def factory(g):
        return optax.chain(optax.add_decayed_weights(wd * g.weight_decay_scale), optax.sgd(lr * g.lr_scale))

    tx = groups.optimizer(factory, params)
    grads = jax.tree.map(lambda p: np.full_like(p, 2.0), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    flat = traverse_util.flatten_dict(updates, sep="/")
    for path, (scale, wd_scale) in _scales(groups, params).items():
        np.testing.assert_allclose(flat[path], -lr * scale * (2.0 + wd * wd_scale), rtol=1e-6, err_msg=path)


def test_groups_for_a_backbone_and_for_every_family() -> None:
    backbone = VIT.clone(num_classes=0)
    got = _scales(ParamGroups.layer_decay(backbone), _params(backbone, 16))
    assert "heads/head/kernel" not in got and got["encoder/ln/bias"] == (1.0, 0.0)
    for arch in ("resnet18", "convnet_small"):
        module = jaxtl.create(arch, num_classes=0)
        size = jaxtl.models.get_spec(arch).input_size
        groups = ParamGroups.layer_decay(module)
        assert groups.assign(_params(module, size))
    resnet = _scales(ParamGroups.layer_decay("resnet18", 0.5), _params(jaxtl.create("resnet18"), 32))
    assert resnet["conv1/kernel"] == (0.5**9, 1.0) and resnet["layer4/1/bn2/scale"] == (0.5, 0.0)
    assert resnet["fc/kernel"] == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ParamGroups.layer_decay(VIT, decay=0.0)


def test_no_weight_decay_and_the_family_defaults() -> None:
    params = _params(CONVNEXT, 32)
    got = _scales(ParamGroups.no_weight_decay(CONVNEXT), params)
    assert all(v == (1.0, 0.0 if _no_decay(p) else 1.0) for p, v in got.items())
    assert ParamGroups.defaults(CONVNEXT) == ParamGroups.no_weight_decay(CONVNEXT)
    assert ParamGroups.defaults("vit_b_16") == ParamGroups.no_weight_decay("vit_b_16")
    assert ParamGroups.defaults("resnet50") == ParamGroups.all_trainable()


def test_head_only_and_finetune_at_nested_heads() -> None:
    params = _params(VIT, 16)
    head_only = ParamGroups.head_only(VIT)
    trainable = head_only.trainable_paths(params)
    assert (
        trainable
        == ("heads/head/bias", "heads/head/kernel")
        == ParamGroups.head_only("heads/head").trainable_paths(params)
    )
    assert is_backbone_frozen(trainable, param_paths(params), VIT)
    assert not is_backbone_frozen(trainable, param_paths(params))  # "fc": not this model's head
    got = _scales(ParamGroups.finetune(VIT, backbone_lr_scale=0.1), params)
    assert got["heads/head/kernel"] == (1.0, 1.0) and got["encoder/ln/scale"] == (0.1, 1.0)
    got = _scales(ParamGroups.finetune(VIT, backbone_lr_scale=0.1, no_decay=True), params)
    assert got["heads/head/bias"] == (1.0, 0.0) and got["conv_proj/kernel"] == (0.1, 1.0)
    assert got["encoder/pos_embedding"] == (0.1, 0.0)
    assert ParamGroups.finetune(VIT, no_decay=True) == ParamGroups.no_weight_decay(VIT)
    with pytest.raises(TypeError, match="needs the model"):
        ParamGroups.finetune("heads/head", no_decay=True)
    # The string forms keep working for the ResNets.
    assert ParamGroups.head_only().rules == (("^fc/", "head"),)
    assert ParamGroups.finetune("fc", 0.5).groups["backbone"].lr_scale == 0.5
