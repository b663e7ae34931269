"""jaxtl's ConvNeXt against torchvision's, weights moved by the bridge (random weights, no downloads).

A small torchvision ``ConvNeXt`` (four stages, widths 8-32) at 64 px carries the train-mode tests; ``convnext_tiny``
and ``convnext_small`` run at 32 px (every 7x7 depthwise conv on a map smaller than its kernel, the CPU's im2col
path); every registered variant is checked on parameter names, shapes and order. Tolerances are relative to the
largest magnitude of the compared tensor: float32 1e-4; bfloat16 compute 3e-2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models import convnext as tv_convnext  # noqa: E402

import jaxtl  # noqa: E402
from jaxtl.bridge import from_torchvision  # noqa: E402
from jaxtl.bridge.check import entries_of, expected, variables_for  # noqa: E402
from jaxtl.models import ConvNeXt  # noqa: E402
from jaxtl.models.convnext import stochastic_depth_rates  # noqa: E402
from jaxtl.models.layers import stochastic_depth  # noqa: E402

SETTING = ((8, 16, 1), (16, 24, 1), (24, 32, 2), (32, None, 1))
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


def torch_small(setting=SETTING, p: float = 0.0) -> torch.nn.Module:
    cfg = [tv_convnext.CNBlockConfig(*s) for s in setting]
    return tv_convnext.ConvNeXt(cfg, stochastic_depth_prob=p, num_classes=10)


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its init (unit norms, zero biases and a 1e-6 layer scale would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.add_((0.2 if p.ndim == 1 else 0.05) * torch.randn(p.shape, generator=g))
    return model


def torch_features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """torchvision's forward step by step: stem, each stage's map (NHWC), the head's input, the logits."""
    out: dict[str, torch.Tensor] = {}
    h = x
    stage = 0
    for i, layer in enumerate(model.features):
        h = layer(h)
        if i == 0:
            out["stem"] = h
        elif i % 2 == 1:
            stage += 1
            out[f"stage{stage}"] = h
    pre = model.classifier[1](model.classifier[0](model.avgpool(h)))
    out["pre_logits"], out["logits"] = pre, model.classifier[2](pre)
    return {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).detach().numpy() for k, v in out.items()}


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
    model = perturb(torch_small(), seed=1)
    module = ConvNeXt(block_setting=SETTING, num_classes=10)
    variables = variables_for(module, model)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    return model, module, variables, x


def test_small_eval_stages_features_and_backbone(small) -> None:
    model, module, variables, x = small
    model.eval()
    with torch.no_grad():
        want = torch_features(model, torch.from_numpy(x))
    feats = jax.jit(functools.partial(module.apply, return_features=True))(variables, nhwc(x))
    for name in (*STAGES, "pre_logits", "logits"):
        assert_close_rel(feats[name], want[name], 1e-4, f"small ConvNeXt {name}")
    backbone = module.clone(num_classes=0)
    stripped = jaxtl.models.strip_head(variables, module)
    assert "0" in stripped["params"]["classifier"] and "2" not in stripped["params"]["classifier"]
    pooled = jax.jit(backbone.apply)(stripped, nhwc(x))
    np.testing.assert_allclose(pooled, feats["pre_logits"], rtol=1e-5, atol=1e-6)


def test_small_train_mode_outputs_and_gradients(small) -> None:
    model, module, variables, x = small
    model.train()  # stochastic depth 0: torch's train mode is deterministic
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


@pytest.mark.parametrize("arch", ["convnext_tiny", "convnext_small"])
def test_variant_eval_logits_match_torchvision(arch: str) -> None:
    torch.manual_seed(0)
    model = perturb(getattr(torchvision.models, arch)(weights=None), seed=2).eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = torch_features(model, torch.from_numpy(x))
    module, variables = from_torchvision(model)
    del model
    feats = jax.jit(functools.partial(module.apply, return_features=True))(variables, nhwc(x))
    for name in ("stage4", "pre_logits", "logits"):
        assert_close_rel(feats[name], want[name], 1e-4, f"{arch} {name}")


@pytest.mark.parametrize("arch", jaxtl.models.list_models("convnext"))
def test_every_variant_has_torchvisions_names_shapes_order_and_depth_rates(arch: str) -> None:
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    sd = model.state_dict()
    entries = expected(arch, 1000)
    assert [e.torch_key for e in entries] == list(sd)
    assert {e.torch_key: e.torch_shape for e in entries} == {k: tuple(v.shape) for k, v in sd.items()}
    spec = jaxtl.models.get_spec(arch)
    assert spec.num_features == sd["classifier.2.weight"].shape[1] and spec.head_path == "classifier/2"
    torch_rates = [m.stochastic_depth.p for m in model.modules() if isinstance(m, tv_convnext.CNBlock)]
    module = jaxtl.create(arch)
    assert stochastic_depth_rates(module.block_setting, module.stochastic_depth_prob) == pytest.approx(torch_rates)


def test_stochastic_depth_is_torchvisions_row_mode() -> None:
    class Holder(jaxtl.models.layers.nn.Module):
        rate: float

        @jaxtl.models.layers.nn.compact
        def __call__(self, x, train):
            return stochastic_depth(self, x, self.rate, train)

    x = jnp.ones((4000, 2, 2, 3))
    out = Holder(0.25).apply({}, x, True, rngs={"dropout": jax.random.key(0)})
    rows = np.asarray(out).reshape(4000, -1)
    assert set(np.unique(rows)) == {0.0, np.float32(1 / 0.75)}
    assert np.all(rows.min(axis=1) == rows.max(axis=1)), "a whole example is kept or dropped"
    assert abs((rows[:, 0] == 0).mean() - 0.25) < 0.03
    np.testing.assert_array_equal(Holder(0.25).apply({}, x, False), x)  # eval: identity, no rng needed
    assert np.all(np.asarray(Holder(1.0).apply({}, x, True, rngs={"dropout": jax.random.key(1)})) == 0)


def test_train_mode_with_stochastic_depth_draws_from_the_dropout_rng(small) -> None:
    _, module, variables, x = small
    sd = module.clone(stochastic_depth_prob=0.5)
    run = jax.jit(lambda key: sd.apply(variables, nhwc(x), train=True, rngs={"dropout": key}))
    a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(jax.jit(sd.apply)(variables, nhwc(x)), jax.jit(module.apply)(variables, nhwc(x)))
    with pytest.raises(ValueError, match=r"train mode with .* pass apply\(\.\.\., rngs=\{'dropout': key\}\)"):
        sd.apply(variables, nhwc(x), train=True)


def test_bfloat16_compute_close_to_float32(small) -> None:
    model, module, variables, x = small
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    logits = jax.jit(module.clone(dtype=jnp.bfloat16).apply)(variables, nhwc(x))
    assert logits.dtype == jnp.bfloat16
    assert_close_rel(logits, want, 3e-2, "bfloat16 logits")


def test_input_checks() -> None:
    module = ConvNeXt(block_setting=SETTING, num_classes=10)
    with pytest.raises(ValueError, match="at least 32x32"):
        module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        module.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)))
