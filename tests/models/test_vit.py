"""jaxtl's Vision Transformer against torchvision's, weights moved by the bridge (random weights, no downloads).

Numerics run on a small torchvision ``VisionTransformer`` (32 px, patch 8, 2 layers, width 64) and on ``vit_b_32``
at 224; every registered variant is checked on parameter names, shapes and order only. Tolerances are relative to
the largest magnitude of the compared tensor: float32 1e-4 (outputs) and 1e-4 (gradients, measured ~1e-6);
bfloat16 compute 3e-2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models import vision_transformer as tv_vit  # noqa: E402

import jaxtl  # noqa: E402
from jaxtl.bridge import from_torchvision  # noqa: E402
from jaxtl.bridge.check import entries_of, expected, variables_for  # noqa: E402
from jaxtl.models import VisionTransformer, at_image_size, interpolate_embeddings  # noqa: E402

SMALL = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its init (zero heads, unit norms and zero biases would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.2 if name.endswith(("bias", "class_token")) or ".ln" in name else 0.05
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def assert_close_rel(got, want, rel: float, what: str) -> None:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert scale > 0, f"{what}: reference is all zeros, the comparison would be vacuous"
    assert err <= rel * scale, f"{what}: max|diff| {err:.3g} > {rel:g} * max|ref| {scale:.3g}"


def nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = perturb(tv_vit.VisionTransformer(**SMALL, num_classes=10), seed=1)
    module = VisionTransformer(**SMALL, num_classes=10)
    variables = variables_for(module, model)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    return model, module, variables, x


def torch_pre_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's forward up to the head's input: the class token after the encoder."""
    h = model._process_input(x)
    h = torch.cat([model.class_token.expand(h.shape[0], -1, -1), h], dim=1)
    return model.encoder(h)[:, 0]


def test_small_eval_logits_features_and_backbone(small) -> None:
    model, module, variables, x = small
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
        pre = torch_pre_logits(model, torch.from_numpy(x)).numpy()
    feats = jax.jit(functools.partial(module.apply, return_features=True))(variables, nhwc(x))
    assert_close_rel(feats["logits"], want, 1e-4, "small ViT logits")
    assert_close_rel(feats["pre_logits"], pre, 1e-4, "small ViT pre_logits")
    assert feats["tokens"].shape == (3, 17, 64) and feats["last_map"].shape == (3, 4, 4, 64)
    backbone = module.clone(num_classes=0)
    pooled = jax.jit(backbone.apply)(jaxtl.models.strip_head(variables, module), nhwc(x))
    np.testing.assert_allclose(pooled, feats["pre_logits"], rtol=1e-5, atol=1e-6)  # another program: rounding only


def test_small_train_mode_outputs_and_gradients(small) -> None:
    model, module, variables, x = small
    model.train()  # dropout 0: deterministic, but torch takes its training code paths (no fused attention)
    w = np.random.default_rng(1).standard_normal((3, 10), dtype=np.float32)
    model.zero_grad()
    out = model(torch.from_numpy(x))
    (out * torch.from_numpy(w)).sum().backward()

    def loss(params):
        logits = module.apply({"params": params}, nhwc(x), train=True)
        return jnp.sum(logits * w), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert_close_rel(logits, out.detach().numpy(), 1e-4, "train logits")
    named = dict(model.named_parameters())
    flat = {tuple(str(k.key) for k in kp): g for kp, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    for e in entries_of(module):
        got = e.rule.to_torch(np.asarray(flat[e.path]))
        assert_close_rel(got, named[e.torch_key].grad.numpy(), 1e-4, f"d loss / d {e.torch_key}")
    assert len(flat) == len(named)


def test_vit_b_32_at_224_matches_torchvision() -> None:
    torch.manual_seed(0)
    model = perturb(torchvision.models.vit_b_32(weights=None), seed=2).eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
        pre = torch_pre_logits(model, torch.from_numpy(x)).numpy()
    module, variables = from_torchvision(model)
    del model
    feats = jax.jit(functools.partial(module.apply, return_features=True))(variables, nhwc(x))
    assert_close_rel(feats["pre_logits"], pre, 1e-4, "vit_b_32 pre_logits")
    assert_close_rel(feats["logits"], want, 1e-4, "vit_b_32 logits")


@pytest.mark.parametrize("arch", jaxtl.models.list_models("vit"))
def test_every_variant_has_torchvisions_names_shapes_and_order(arch: str) -> None:
    # torchvision built on the meta device: names and shapes without allocating vit_h_14's 632M parameters.
    sizes = {"vit_b_16": 384, "vit_l_16": 512, "vit_h_14": 518}  # the SWAG end-to-end weights' sizes too
    for size in (224, sizes.get(arch, 224)):
        with torch.device("meta"):
            sd = getattr(torchvision.models, arch)(weights=None, image_size=size).state_dict()
        entries = expected(arch, 1000, {"image_size": size} if size != 224 else {})
        assert [e.torch_key for e in entries] == list(sd)
        assert {e.torch_key: e.torch_shape for e in entries} == {k: tuple(v.shape) for k, v in sd.items()}
    spec = jaxtl.models.get_spec(arch)
    assert spec.num_features == sd["heads.head.weight"].shape[1] and spec.head_path == "heads/head"


def test_interpolate_embeddings_matches_torchvision(small) -> None:
    model, _, variables, _ = small
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for size, mode in ((48, "bicubic"), (48, "bilinear"), (16, "bicubic"), (56, "bicubic")):
        ref = tv_vit.interpolate_embeddings(size, 8, dict(sd), interpolation_mode=mode)
        got = interpolate_embeddings(size, 8, variables, interpolation_mode=mode)
        want = ref["encoder.pos_embedding"].numpy()
        np.testing.assert_allclose(got["params"]["encoder"]["pos_embedding"], want, rtol=1e-6, atol=1e-6)
    same = interpolate_embeddings(32, 8, variables)
    assert same["params"]["encoder"]["pos_embedding"] is variables["params"]["encoder"]["pos_embedding"]
    with pytest.raises(ValueError, match="bicubic"):
        interpolate_embeddings(48, 8, variables, interpolation_mode="nearest")


def test_model_at_another_resolution_matches_torchvision(small) -> None:
    model, module, variables, _ = small
    big_module, big_vars = at_image_size(module, variables, 48)
    assert big_module.image_size == 48 and big_module.patch_size == 8
    torch_big = tv_vit.VisionTransformer(**{**SMALL, "image_size": 48}, num_classes=10).eval()
    torch_big.load_state_dict(tv_vit.interpolate_embeddings(48, 8, dict(model.state_dict())))
    x = np.random.default_rng(3).standard_normal((2, 3, 48, 48), dtype=np.float32)
    with torch.no_grad():
        want = torch_big(torch.from_numpy(x)).numpy()
    assert_close_rel(jax.jit(big_module.apply)(big_vars, nhwc(x)), want, 1e-4, "48-px logits")
    with pytest.raises(ValueError, match=r"built for 32x32 images, got 48x48;.*at_image_size\(module, variables, 48\)"):
        module.apply(variables, nhwc(x))
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        jaxtl.create("vit_b_16", image_size=200)


def test_bfloat16_compute_float32_norms_and_softmax(small) -> None:
    model, module, variables, x = small
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    bf16 = module.clone(dtype=jnp.bfloat16)
    logits = jax.jit(bf16.apply)(variables, nhwc(x))
    assert logits.dtype == jnp.bfloat16
    assert_close_rel(logits, want, 3e-2, "bfloat16 logits")
    # LayerNorm statistics in float32: a bfloat16 input far from zero normalises to what float64 gives, to bf16's
    # output rounding (2^-8 relative).
    ln = jaxtl.models.layers.LayerNorm(dtype=jnp.bfloat16)
    y = 16.0 + 0.125 * np.arange(64, dtype=np.float64)[None]  # exact in bfloat16
    out = ln.apply(ln.init(jax.random.key(0), y), jnp.asarray(y, jnp.bfloat16))
    ref = (y - y.mean()) / np.sqrt(y.var() + 1e-6)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=2.0**-8 * np.abs(ref).max())


def test_dropout_draws_from_the_dropout_rng(small) -> None:
    _, module, variables, x = small
    drop = module.clone(dropout=0.5, attention_dropout=0.5)
    run = jax.jit(lambda key: drop.apply(variables, nhwc(x), train=True, rngs={"dropout": key}))
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(jax.jit(drop.apply)(variables, nhwc(x)), jax.jit(module.apply)(variables, nhwc(x)))
    with pytest.raises(ValueError, match=r"train mode with .* pass apply\(\.\.\., rngs=\{'dropout': key\}\)"):
        drop.apply(variables, nhwc(x), train=True)
