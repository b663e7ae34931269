"""torch -> Flax -> torch is exact, and the architecture is recognised, for every torchvision-convertible model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")

import jaxtl  # noqa: E402
from jaxtl.bridge import BridgeError, from_torchvision, infer_arch, load_state_dict, to_torchvision  # noqa: E402

ARCHS = jaxtl.models.list_models("resnet")


@pytest.mark.parametrize("arch", ARCHS)
def test_roundtrip_bit_exact_and_arch_inferred(arch: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=7)
    with torch.no_grad():
        for i, m in enumerate(x for x in model.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(1000 + i)
    sd = model.state_dict()
    assert infer_arch(sd) == arch

    module, variables = from_torchvision(sd)  # arch and num_classes inferred
    assert module.num_classes == 7
    assert variables["params"]["fc"]["kernel"].shape == (model.fc.in_features, 7)
    assert variables["batch_stats"]["bn1"]["num_batches_tracked"].dtype == jnp.int32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}

    back = to_torchvision(variables, arch)
    assert list(back) == list(sd), "keys or their order differ from torchvision's state_dict"
    for k, t in sd.items():
        assert back[k].dtype == t.dtype, k
        assert torch.equal(back[k], t), k
    model.load_state_dict(back, strict=True)

    # Files the way people save them (float16 to halve the test's I/O): arch from a .pth and from a .safetensors.
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    del model, sd, back, variables
    torch.save(half, tmp_path / "w.pth")
    assert infer_arch(load_state_dict(tmp_path / "w.pth")) == arch
    (tmp_path / "w.pth").unlink()
    safetensors_torch.save_file(half, tmp_path / "w.safetensors")
    loaded = load_state_dict(tmp_path / "w.safetensors")
    assert infer_arch(loaded) == arch
    assert loaded["conv1.weight"].dtype == np.float16


def _resnet18_sd():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_no_registered_arch_matches_says_what_was_seen() -> None:
    sd = {k: v for k, v in _resnet18_sd().items() if not k.startswith("layer3.1.")}
    with pytest.raises(BridgeError, match=r"no registered architecture matches.*layers=\[2, 2, 1, 2\]"):
        infer_arch(sd)
    with pytest.raises(BridgeError, match="not a state dict of a torchvision architecture jaxtl converts"):
        infer_arch({"encoder.weight": np.zeros((3, 3), np.float32)})


def test_explicit_wrong_arch_lists_problems_and_hints_the_real_one() -> None:
    with pytest.raises(BridgeError) as e:
        from_torchvision(_resnet18_sd(), arch="resnet34")
    msg = str(e.value)
    assert "looks like resnet18" in msg
    assert "missing key 'layer1.2.conv1.weight'" in msg
    with pytest.raises(BridgeError, match="convnet_small"):
        from_torchvision(_resnet18_sd(), arch="convnet_small")
