"""The family description: every registered architecture declares the Classifier protocol, and what it declares
(head path, feature width, no-decay rule, layers) holds on its real parameter tree; heads at nested paths."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import jaxtl
from jaxtl.models import (
    Classifier,
    ConvNeXt,
    ModelCard,
    VisionTransformer,
    at_image_size,
    create,
    get_head,
    get_spec,
    head_classes,
    head_name,
    head_path,
    list_models,
    new_head,
    replace_head,
    set_head,
    strip_head,
)

ONE_PER_FAMILY = ["resnet50", "vit_b_16", "convnext_tiny", "convnet_small"]


def _param_paths(arch: str, num_classes: int = 10) -> list[str]:
    module = create(arch, num_classes=num_classes)
    size = get_spec(arch).input_size
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return list(traverse_util.flatten_dict(shapes["params"], sep="/"))


def test_every_architecture_is_a_classifier_with_its_description() -> None:
    assert jaxtl.models.families() == ["resnet", "vit", "convnext", "convnet"]
    assert jaxtl.models.families(torchvision=True) == ["resnet", "vit", "convnext"]
    assert list_models(torchvision=False) == ["convnet_small"]
    for arch in list_models():
        spec = get_spec(arch)
        module = create(arch, num_classes=0)
        assert isinstance(module, Classifier), arch
        assert spec.head_path == module.head_path and spec.num_features == module.num_features
        assert spec.no_decay == module.no_decay and re.compile(spec.no_decay)
        assert module.decay_norms == (spec.family in ("resnet", "convnet")), arch
    blocks = {"vit_l_16": 24, "vit_h_14": 32, "convnext_base": 36, "resnet152": 3 + 8 + 36 + 3}
    for arch, n in blocks.items():
        assert len(get_spec(arch).layer_patterns) == n + 1, arch  # the stem/embeddings, then each block


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_the_description_holds_on_the_parameter_tree(arch: str) -> None:
    spec = get_spec(arch)
    paths = _param_paths(arch)
    head = spec.head_path + "/"
    assert {p for p in paths if p.startswith(head)} == {head + "kernel", head + "bias"}
    assert set(_param_paths(arch, num_classes=0)) == {p for p in paths if not p.startswith(head)}
    layers = [re.compile(p) for p in spec.layer_patterns]
    for i, rx in enumerate(layers):
        hits = [p for p in paths if rx.search(p)]
        assert hits, f"{arch}: layer {i} ({rx.pattern}) matches no parameter"
        assert not [p for p in hits if any(o.search(p) for o in layers if o is not rx)], "layers overlap"
    top = [p for p in paths if not any(rx.search(p) for rx in layers)]
    assert head + "kernel" in top and all(not p.startswith(("layer", "encoder/layers", "features/1/")) for p in top)
    no_decay = re.compile(spec.no_decay)
    for p in paths:
        leaf = p.rsplit("/", 1)[-1]
        expect = leaf not in ("kernel", "in_proj_kernel")
        assert bool(no_decay.search(p)) == expect, f"{arch}: {p} no-decay should be {expect}"


def test_heads_at_nested_paths() -> None:
    vit = create("vit_b_16", num_classes=3)
    params = {"encoder": {"ln": {"scale": np.ones(4)}}, "heads": {"head": new_head(4, 3, 0)}}
    variables = {"params": params, "cache": {"x": 1}}
    assert head_path(vit) == head_path("heads/head") == ("heads", "head") and head_name(vit) == "heads/head"
    assert head_classes(variables, vit) == 3 and get_head(variables, "heads/head") is params["heads"]["head"]
    stripped = strip_head(variables, vit)
    assert stripped == {"params": {"encoder": params["encoder"]}} and head_classes(stripped, vit) == 0
    small = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=4, mlp_dim=8)
    replaced = replace_head(variables, 5, 1, head=small)
    assert replaced["params"]["heads"]["head"]["kernel"].shape == (4, 5)
    assert not np.asarray(replaced["params"]["heads"]["head"]["kernel"]).any()  # the head rule: a ViT's is zero
    assert replaced["params"]["encoder"]["ln"]["scale"] is params["encoder"]["ln"]["scale"]
    assert strip_head(replace_head(variables, 0, 1, head="heads/head"), "heads/head") == stripped
    convnext = {"params": {"classifier": {"0": {"scale": np.ones(4)}, "2": new_head(4, 2, 0)}}}
    assert strip_head(convnext, "classifier/2")["params"] == {
        "classifier": {"0": convnext["params"]["classifier"]["0"]}
    }
    put = set_head(strip_head(convnext, "classifier/2"), new_head(4, 6, 2), "classifier/2")
    assert head_classes(put, "classifier/2") == 6 and set(put["params"]["classifier"]) == {"0", "2"}
    with pytest.raises(TypeError, match="needs head= the model"):
        replace_head(variables, 5, 1, head="heads/head")
    with pytest.raises(ValueError, match="non-empty"):
        head_path("heads//head")


def test_head_name_of_a_module_without_the_protocol_is_fc() -> None:
    class Plain(nn.Module):
        num_classes: int = 2

        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(self.num_classes, name="fc")(x)

    assert not isinstance(Plain(), Classifier) and head_name(Plain()) == "fc" and head_name() == "fc"
    assert head_name(create("convnext_tiny")) == "classifier/2" and head_name(create("resnet18")) == "fc"


def test_cards_and_modules_for_the_new_families() -> None:
    card = ModelCard.for_arch("convnext_small", 4)
    assert (card.preprocessing.crop_size, card.preprocessing.resize_size) == (224, 230)
    vit = ModelCard.for_arch("vit_b_16", 0, image_size=384)
    assert (vit.preprocessing.crop_size, vit.preprocessing.resize_size, vit.kind) == (384, 439, "backbone")
    module = vit.replace(dtype="bfloat16").build_module()
    assert module.image_size == 384 and module.num_classes == 0 and module.dtype == jnp.bfloat16
    gray = ModelCard.for_arch("convnet_small", 2, channels=1).preprocessing
    assert gray.channels == 1 and gray.mean == (0.5,) and gray.resize_size == 37
    assert ModelCard.for_arch("resnet18", 2, image_size=32).build_module().num_classes == 2
    resnet = create("resnet18")
    assert at_image_size(resnet, {"params": {}}, 96) == (resnet, {"params": {}})
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        create("vit_b_16", image_size=0)
    with pytest.raises(ValueError, match="num_classes"):
        create("convnext_tiny", num_classes=-1)


def test_a_new_head_over_a_vit_or_convnext_backbone() -> None:
    # What fine-tuning a bridged backbone does (recipes.build_classifier): the backbone's arrays, a head at the
    # family's path, initialised as the module initialises it (a ViT's is zero, as torchvision's).
    from jaxtl.models import classifier_from_autoencoder

    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8)
    cnx = ConvNeXt(block_setting=((4, None, 2),))
    for module, size in ((vit.clone(num_classes=0), 16), (cnx.clone(num_classes=0), 32)):
        backbone = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
        ae_like = {"params": {"encoder": backbone["params"]}}
        clf, variables = classifier_from_autoencoder(ae_like, module, 5, jax.random.key(1))
        assert clf.num_classes == 5 and head_classes(variables, clf) == 5
        assert strip_head(variables, clf)["params"] == backbone["params"]
        assert jax.eval_shape(clf.apply, variables, jnp.ones((2, size, size, 3))).shape == (2, 5)
        kernel = np.asarray(get_head(variables, clf)["kernel"])
        assert kernel.any() != (clf.head_path == "heads/head")  # a ViT head starts at zero, as torchvision's
