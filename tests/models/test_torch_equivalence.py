"""jaxtl's ResNets against torchvision's, with weights moved by the bridge (random weights, no downloads).

Tolerances are relative to the largest magnitude of the compared tensor: float32 eval 1e-4; float32 train 1e-4 for
outputs and running statistics, 1e-3 for the fc gradient; bfloat16 compute 2e-2 (measured ~5e-3).
The conv1 gradient of a train-mode ResNet-50 on a tiny batch is ill-conditioned (torch's own float32 gradient is
~1% off its float64 one), so there jaxtl must be as accurate as torch float32:
error vs torch float64 <= 2 x torch float32's error + 1e-5 x max|grad|.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jaxtl  # noqa: E402
from jaxtl.bridge import from_torchvision  # noqa: E402

ARCHS = jaxtl.models.list_models("resnet")
# (image size, batch): resnet50 at its native size; the deepest/widest ones small, as building and compiling dominate.
CASES = {"resnet50": (224, 2)}
BIG = {"resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def randomized_torch_model(arch: str, seed: int = 0, num_classes: int = 1000) -> torch.nn.Module:
    """torchvision ``arch`` with BatchNorm affine params and running stats set to seeded non-trivial values."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
        model.fc.bias.copy_(torch.randn(num_classes, generator=g) * 0.1)
    return model


def torch_stages(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """torchvision's forward, step by step, with the per-stage maps in NHWC."""
    out: dict[str, np.ndarray] = {}
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out["stem"] = h
    for name in STAGES[1:]:
        h = getattr(model, name)(h)
        out[name] = h
    out["logits"] = model.fc(torch.flatten(model.avgpool(h), 1))
    return {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).detach().numpy() for k, v in out.items()}


def assert_close_rel(got, want, rel: float, what: str) -> None:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert scale > 0, f"{what}: reference is all zeros, the comparison would be vacuous"
    assert err <= rel * scale, f"{what}: max|diff| {err:.3g} > {rel:g} * max|ref| {scale:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_logits_and_stages_match_torchvision(arch: str) -> None:
    size, batch = CASES.get(arch, (32, 1) if arch in BIG else (64, 2))
    model = randomized_torch_model(arch).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32))
    with torch.no_grad():
        want = torch_stages(model, x)
    module, variables = from_torchvision(model)
    del model
    feats = jax.jit(functools.partial(module.apply, train=False, return_features=True))(
        variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    )
    # Stages first, so a failure says where the two diverge.
    for name in (*STAGES, "logits"):
        assert_close_rel(feats[name], want[name], 1e-4, f"{arch} {name}")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_train_mode_outputs_stats_and_grads_match_torchvision(arch: str) -> None:
    model = randomized_torch_model(arch, seed=1).train()
    model64 = copy.deepcopy(model).double()
    module, variables = from_torchvision(model)  # before torch's forward changes its running stats
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 64, 64), dtype=np.float32)
    w = rng.standard_normal((4, 1000), dtype=np.float32)

    logits_t = model(torch.from_numpy(x))
    (logits_t * torch.from_numpy(w)).sum().backward()
    (model64(torch.from_numpy(x).double()) * torch.from_numpy(w).double()).sum().backward()

    def loss_fn(params, batch_stats, xb):
        logits, upd = module.apply(
            {"params": params, "batch_stats": batch_stats}, xb, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(logits * w), (logits, upd["batch_stats"])

    (_, (logits, new_stats)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], variables["batch_stats"], jnp.asarray(x.transpose(0, 2, 3, 1))
    )
    assert_close_rel(logits, logits_t.detach().numpy(), 1e-4, f"{arch} train logits")

    from jaxtl.bridge import to_torchvision

    updated = to_torchvision({"params": variables["params"], "batch_stats": new_stats}, arch)
    ref = model.state_dict()
    n_stats = 0
    for key, t in ref.items():
        if key.endswith(("running_mean", "running_var")):
            assert_close_rel(updated[key].numpy(), t.numpy(), 1e-4, f"{arch} {key} after one train step")
            n_stats += 1
        elif key.endswith("num_batches_tracked"):
            assert int(updated[key]) == int(t), key
    assert n_stats > 0

    def hwio(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().transpose(2, 3, 1, 0)

    g64, g32, got = hwio(model64.conv1.weight.grad), hwio(model.conv1.weight.grad), np.asarray(grads["conv1"]["kernel"])
    torch_err = float(np.abs(g32 - g64).max())
    jax_err = float(np.abs(got - g64).max())
    scale = float(np.abs(g64).max())
    assert jax_err <= 2 * torch_err + 1e-5 * scale, (
        f"{arch} d loss / d conv1: error vs float64 {jax_err:.3g}, torch float32's {torch_err:.3g}, scale {scale:.3g}"
    )
    assert_close_rel(grads["fc"]["kernel"], model.fc.weight.grad.numpy().T, 1e-3, f"{arch} d loss / d fc")
    assert_close_rel(grads["fc"]["bias"], model.fc.bias.grad.numpy(), 1e-3, f"{arch} d loss / d fc bias")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_bfloat16_compute_close_to_torchvision_float32(arch: str) -> None:
    model = randomized_torch_model(arch, seed=2).eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    module, variables = from_torchvision(model, dtype=jnp.bfloat16)
    assert module.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(variables["params"]) + [
        v for v in jax.tree.leaves(variables["batch_stats"]) if v.ndim == 1
    ]:
        assert leaf.dtype == jnp.float32
    logits = jax.jit(functools.partial(module.apply, train=False))(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert logits.dtype == jnp.bfloat16
    assert_close_rel(logits, want, 2e-2, f"{arch} bfloat16 logits")
