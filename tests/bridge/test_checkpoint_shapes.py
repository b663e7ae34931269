"""The checkpoints people have: each loads with torch's eval logits (within 1e-4 of the largest logit), with what
was unwrapped or stripped reported, or is refused with a BridgeError that names the fix."""

from __future__ import annotations

import argparse
import collections
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jaxtl  # noqa: E402
from jaxtl.bridge import BridgeError, from_torchvision, inspect_state_dict, save_flax_safetensors  # noqa: E402
from jaxtl.cli import main  # noqa: E402

SIZE = 32
torchvision_like_resnet18 = jaxtl.create("resnet18", num_classes=10)


@jax.jit
def _resnet18_logits(variables, x):
    return torchvision_like_resnet18.apply(variables, x, train=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)


def assert_torch_logits(conversion, model, x) -> None:
    module, variables = conversion
    assert module == torchvision_like_resnet18
    got = np.asarray(_resnet18_logits(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def _prefixed(sd, prefix):
    return collections.OrderedDict((prefix + k, v) for k, v in sd.items())


def test_reference_scripts_checkpoint_with_namespace_and_ema(model, x, tmp_path) -> None:
    sd = model.state_dict()
    ema = torch.optim.swa_utils.AveragedModel(model)  # what --model-ema saves: "module."-keys plus n_averaged
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = {
        "model": sd,
        "optimizer": opt.state_dict(),
        "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 30).state_dict(),
        "epoch": 3,
        "args": argparse.Namespace(lr=0.1, model="resnet18", output_dir="out", weights=None, epochs=90),
        "model_ema": ema.state_dict(),
    }
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    conv = from_torchvision(tmp_path / "checkpoint.pth")
    assert conv.report.entry == "model" and conv.report.alternatives == ["model_ema"]
    assert any("also holds 'model_ema'" in n for n in conv.report.notes)
    assert_torch_logits(conv, model, x)
    ema_conv = from_torchvision(tmp_path / "checkpoint.pth", entry="model_ema")
    assert ema_conv.report.prefix == "module." and ema_conv.report.prefix_detected
    assert ema_conv.report.outside_prefix == ["n_averaged"]
    assert_torch_logits(ema_conv, model, x)

    assert main(["inspect", str(tmp_path / "checkpoint.pth")]) == 0
    with pytest.raises(BridgeError, match=r"has no entry 'nope'; found: 'model' \(state dict\)"):
        from_torchvision(tmp_path / "checkpoint.pth", entry="nope")


def test_lightning_checkpoint_prefix_detected(model, x, tmp_path, capsys) -> None:
    sd = _prefixed(model.state_dict(), "model.")
    sd["criterion.weight"] = torch.ones(10)  # another attribute of the LightningModule
    ckpt = {
        "epoch": 4,
        "global_step": 100,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.3)}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.1, "arch": "resnet18"},
    }
    torch.save(ckpt, tmp_path / "epoch=4.ckpt")
    conv = from_torchvision(tmp_path / "epoch=4.ckpt")
    rep = conv.report
    assert (rep.entry, rep.prefix, rep.prefix_detected, rep.outside_prefix) == (
        "state_dict",
        "model.",
        True,
        ["criterion.weight"],
    )
    assert_torch_logits(conv, model, x)
    assert main(["inspect", str(tmp_path / "epoch=4.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "unwrapped:     entry 'state_dict'" in out
    assert "prefix:        'model.' stripped (detected)" in out
    assert "left out:      1 key(s) outside the prefix: criterion.weight" in out
    assert "architecture:  resnet18" in out and "problems:      none" in out


@pytest.mark.parametrize("wrapper", ["model_state_dict", "ema", "weights"])
def test_tutorial_and_ema_wrappers(model, x, tmp_path, wrapper) -> None:
    torch.save({wrapper: model.state_dict(), "epoch": 1, "loss": 0.5}, tmp_path / "w.pt")
    conv = from_torchvision(tmp_path / "w.pt")
    assert conv.report.entry == wrapper and conv.report.prefix is None
    assert_torch_logits(conv, model, x)


def test_torch_compile_prefix_and_explicit_prefix(model, x, tmp_path, capsys) -> None:
    conv = from_torchvision(_prefixed(model.state_dict(), "_orig_mod."))
    assert conv.report.prefix == "_orig_mod."
    assert_torch_logits(conv, model, x)

    # Two ResNets (distillation): the bridge will not guess; prefix= chooses.
    both = {**_prefixed(model.state_dict(), "teacher."), **_prefixed(model.state_dict(), "student.backbone.")}
    torch.save({"state_dict": both}, tmp_path / "distill.ckpt")
    with pytest.raises(BridgeError, match=r"several models, under the key prefixes 'teacher.', 'student.backbone.'"):
        from_torchvision(tmp_path / "distill.ckpt")
    conv = from_torchvision(tmp_path / "distill.ckpt", prefix="student.backbone")  # the trailing dot is implied
    assert conv.report.prefix == "student.backbone." and not conv.report.prefix_detected
    assert len(conv.report.outside_prefix) == len(model.state_dict())
    assert_torch_logits(conv, model, x)
    assert main(["inspect", str(tmp_path / "distill.ckpt"), "--prefix", "teacher."]) == 0
    assert "prefix:        'teacher.' stripped (given)" in capsys.readouterr().out
    with pytest.raises(BridgeError, match=r"no key starts with the prefix 'net.'; the keys start with: 'student.'"):
        from_torchvision(tmp_path / "distill.ckpt", prefix="net.")
    assert main(["convert", str(tmp_path / "distill.ckpt"), str(tmp_path / "out")]) == 2
    assert "--prefix" in capsys.readouterr().err


def test_unknown_prefix_shape_says_to_pass_prefix(model) -> None:
    # Keys under a prefix that is not a recognisable ResNet on its own (a layer is missing): refused, hint given.
    sd = {k: v for k, v in _prefixed(model.state_dict(), "enc.").items() if not k.startswith("enc.layer4")}
    report = inspect_state_dict(sd)
    assert report.prefix is None and "name it with prefix= (--prefix)" in report.problems[0]


def test_whole_pickled_model_refused_with_the_fix_unless_trusted(model, x, tmp_path) -> None:
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(BridgeError) as e:
        from_torchvision(tmp_path / "whole.pth")
    msg = str(e.value)
    assert "whole pickled model (torchvision.models.resnet.ResNet)" in msg
    assert "torch.save(model.state_dict(), 'weights.pth')" in msg
    assert "trust_pickle=True" in msg
    assert "torch.serialization.add_safe_globals" in msg, "torch's own advice is kept in full"
    assert "\x1b" not in msg, "terminal escape codes stripped"
    with pytest.warns(UserWarning, match="RUNS THE CODE PICKLED IN IT"):
        conv = from_torchvision(tmp_path / "whole.pth", trust_pickle=True)
    assert_torch_logits(conv, model, x)


def _float8():
    return torch.zeros(3, dtype=torch.float8_e4m3fn)


def _qint8():
    with warnings.catch_warnings():  # torch deprecates creating quantized tensors; people still have them
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8)


@pytest.mark.parametrize(
    "make, match",
    [(_float8, r"'w' has torch dtype torch.float8_e4m3fn.*tensor.float\(\)"), (_qint8, r"'w' is a quantized tensor")],
    ids=["float8", "qint8"],
)
def test_unreadable_tensor_dtypes_name_file_and_key(tmp_path, make, match) -> None:
    torch.save({"conv1.weight": torch.zeros(1), "w": make()}, tmp_path / "odd.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's TypedStorage deprecation when it loads a quantized tensor
        with pytest.raises(BridgeError, match=match) as e:
            from_torchvision(tmp_path / "odd.pth")
    assert str(tmp_path / "odd.pth") in str(e.value)


def test_jaxtl_flax_safetensors_is_a_source_and_inspectable(model, x, tmp_path, capsys) -> None:
    conv = from_torchvision(model.state_dict())
    save_flax_safetensors(conv.variables, tmp_path / "flax.safetensors")
    back = from_torchvision(tmp_path / "flax.safetensors")
    assert back.report.layout == "jaxtl-flax"
    assert jax.tree.all(jax.tree.map(np.array_equal, back.variables, conv.variables))
    assert_torch_logits(back, model, x)
    assert main(["inspect", str(tmp_path / "flax.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "layout:        jaxtl Flax-layout .safetensors" in out
    assert "architecture:  resnet18" in out and "head:          [10, 512] (num_classes=10)" in out
    assert "problems:      none" in out


def test_inspect_describes_what_convert_safetensors_wrote(model, tmp_path, capsys) -> None:
    torch.save({"model": _prefixed(model.state_dict(), "module.")}, tmp_path / "ddp.pth")
    argv = ["convert", str(tmp_path / "ddp.pth"), str(tmp_path / "out"), "--safetensors"]
    argv.append(str(tmp_path / "flax.safetensors"))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "unwrapped the checkpoint entry 'model'" in out and "stripped the key prefix 'module.' (detected)" in out
    assert main(["inspect", str(tmp_path / "flax.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "layout:        jaxtl Flax-layout .safetensors" in out
    assert "architecture:  resnet18" in out and "head:          [10, 512] (num_classes=10)" in out
    assert "model card:    classifier, 10 classes, source " + str(tmp_path / "ddp.pth") in out
    assert "eval input:    resize 256, crop 224, bilinear" in out
    assert "problems:      none" in out and "not a torchvision ResNet" not in out
