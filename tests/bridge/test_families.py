"""The bridge for the ViT and ConvNeXt families: exact round trips, architecture (and a ViT's input size) from keys
and shapes, every problem at once, heads at nested paths, the wrappers and prefixes training scripts add."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jaxtl  # noqa: E402
from jaxtl.bridge import (  # noqa: E402
    BridgeError,
    from_torchvision,
    infer_arch,
    inspect_state_dict,
    to_torchvision,
)
from jaxtl.bridge.infer import infer  # noqa: E402
from jaxtl.models import init_head  # noqa: E402


def _sd(arch: str, **kwargs) -> dict:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None, **kwargs).state_dict()


@pytest.fixture(scope="module")
def vit_sd():
    return _sd("vit_b_32", num_classes=7)


@pytest.fixture(scope="module")
def convnext_sd():
    return _sd("convnext_tiny", num_classes=7)


def _exact_roundtrip(sd: dict, arch: str) -> dict:
    module, variables = from_torchvision(sd)
    assert module.num_classes == 7
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(variables)} == {"float32"}
    back = to_torchvision(variables, arch)
    assert list(back) == list(sd), "keys or their order differ from torchvision's state_dict"
    for k, t in sd.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    return variables


def test_vit_roundtrip_bit_exact(vit_sd) -> None:
    variables = _exact_roundtrip(vit_sd, "vit_b_32")
    assert variables["params"]["heads"]["head"]["kernel"].shape == (768, 7)
    assert "batch_stats" not in variables
    model = torchvision.models.vit_b_32(weights=None, num_classes=7)
    model.load_state_dict(to_torchvision(variables, "vit_b_32"), strict=True)


def test_convnext_roundtrip_bit_exact(convnext_sd) -> None:
    variables = _exact_roundtrip(convnext_sd, "convnext_tiny")
    assert variables["params"]["classifier"]["2"]["kernel"].shape == (768, 7)
    assert variables["params"]["features"]["1"]["0"]["layer_scale"].shape == (96,)  # torch: [96, 1, 1]


def test_every_variant_and_input_size_is_recognised() -> None:
    # Shapes are all inference reads: torchvision on the meta device allocates nothing (vit_h_14: 632M params).
    cases = [(a, 224) for a in jaxtl.models.list_models("vit")] + [("vit_b_16", 384), ("vit_l_16", 512)]
    cases += [("vit_h_14", 518), *((a, None) for a in jaxtl.models.list_models("convnext"))]
    for arch, size in cases:
        with torch.device("meta"):
            kw = {"image_size": size} if size else {}
            sd = getattr(torchvision.models, arch)(weights=None, **kw).state_dict()
        got, overrides = infer(sd)
        assert got == arch
        assert overrides == ({"image_size": size} if size not in (None, 224) else {}), (arch, size)


def test_a_vit_at_384_converts_with_its_input_size() -> None:
    sd = _sd("vit_b_16", image_size=384)
    module, variables = from_torchvision(sd, num_classes=0)
    assert module.image_size == 384 and module.num_classes == 0 and "heads" not in variables["params"]
    conv = from_torchvision(sd, arch="vit_b_16")
    assert conv.module.image_size == 384 and conv.card.preprocessing.crop_size == 384
    back = to_torchvision(conv.variables, "vit_b_16")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_every_problem_reported_at_once(vit_sd) -> None:
    sd = dict(vit_sd)
    del sd["encoder.layers.encoder_layer_3.ln_2.bias"]
    sd["encoder.layers.encoder_layer_5.mlp.0.weight"] = torch.zeros(3072, 700)
    sd["encoder.extra.weight"] = torch.zeros(3)
    sd["class_token"] = torch.full((1, 1, 768), float("nan"))
    with pytest.raises(BridgeError) as e:
        from_torchvision(sd)
    msg = str(e.value)
    assert "(4 problems)" in msg
    assert "missing key 'encoder.layers.encoder_layer_3.ln_2.bias'" in msg
    assert "unexpected key 'encoder.extra.weight'" in msg
    assert "shape of 'encoder.layers.encoder_layer_5.mlp.0.weight' is [3072, 700], vit_b_32 needs [3072, 768]" in msg
    assert "'class_token' has 768 NaN/inf value(s)" in msg
    rep = inspect_state_dict(sd)
    assert rep.arch == "vit_b_32" and rep.head == "heads/head" and rep.fc_shape == [7, 768] and len(rep.problems) == 4


def test_explicit_wrong_arch_hints_the_real_one(convnext_sd) -> None:
    with pytest.raises(BridgeError, match="looks like convnext_tiny, not convnext_small"):
        from_torchvision(convnext_sd, arch="convnext_small")
    with pytest.raises(BridgeError, match="looks like convnext_tiny, not vit_b_16"):
        from_torchvision(convnext_sd, arch="vit_b_16")


def test_unknown_state_dict_names_the_families() -> None:
    with pytest.raises(BridgeError) as e:
        infer_arch({"encoder.weight": np.zeros((3, 3), np.float32)})
    msg = str(e.value)
    assert "not a torchvision ResNet" not in msg
    for family in ("resnet", "vit", "convnext"):
        assert f"{family}:" in msg
    assert "'class_token' + 'conv_proj.weight'" in msg and "'features.1.0.layer_scale'" in msg


def test_new_heads_at_nested_paths_follow_the_head_rule(vit_sd, convnext_sd) -> None:
    # The head rule (jaxtl.models.init_head): as the architecture initialises it, from PRNGKey(seed): a ViT's is
    # zero (torchvision's), ConvNeXt's a truncated normal; the same arrays as every other route's new head.
    v1 = from_torchvision(vit_sd, num_classes=3, seed=5)
    head = v1.variables["params"]["heads"]["head"]
    assert head["kernel"].shape == (768, 3) and v1.report.fc_reinitialized and v1.report.seed == 5
    assert not np.asarray(head["kernel"]).any() and not np.asarray(head["bias"]).any()
    assert v1.report.dropped == ["heads.head.weight", "heads.head.bias"]
    c1 = from_torchvision(convnext_sd, num_classes=3, seed=5)
    want = init_head(jaxtl.create("convnext_tiny", num_classes=3), 3, 5)
    for k in ("kernel", "bias"):
        np.testing.assert_array_equal(c1.variables["params"]["classifier"]["2"][k], want[k])
    other = from_torchvision(convnext_sd, num_classes=3, seed=6).variables["params"]["classifier"]["2"]["kernel"]
    assert not np.array_equal(other, want["kernel"])
    backbone = from_torchvision(convnext_sd, num_classes=0)
    assert backbone.module.num_classes == 0 and backbone.card.kind == "backbone"
    assert set(backbone.variables["params"]["classifier"]) == {"0"}  # the head's LayerNorm is the backbone's
    with pytest.raises(BridgeError, match="missing variable 'params/classifier/0/scale'"):
        bad = {"params": {**backbone.variables["params"], "classifier": {}}}
        to_torchvision(bad, "convnext_tiny")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DataParallel / DDP
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3},  # Lightning
        lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}, "model_ema": dict(sd)},  # compile + EMA
    ],
    ids=["ddp", "lightning", "compile_ema"],
)
def test_wrappers_and_prefixes(convnext_sd, vit_sd, wrap) -> None:
    for sd, arch in ((convnext_sd, "convnext_tiny"), (vit_sd, "vit_b_32")):
        conv = from_torchvision(wrap(sd))
        assert conv.report.arch == arch and conv.report.prefix is not None and conv.report.prefix_detected
        np.testing.assert_array_equal(
            np.asarray(jax.tree.leaves(conv.variables)[0]), np.asarray(jax.tree.leaves(from_torchvision(sd)[1])[0])
        )


def test_a_jaxtl_flax_safetensors_of_a_convnext_round_trips(convnext_sd, tmp_path) -> None:
    from jaxtl.bridge import save_flax_safetensors

    conv = from_torchvision(convnext_sd)
    save_flax_safetensors(conv.variables, tmp_path / "c.safetensors", card=conv.card)
    again = from_torchvision(tmp_path / "c.safetensors")
    assert again.report.layout == "jaxtl-flax" and again.card == conv.card and "batch_stats" not in again.variables
    assert jax.tree.all(jax.tree.map(np.array_equal, again.variables, conv.variables))
