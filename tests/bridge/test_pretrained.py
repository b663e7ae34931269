"""pretrained(): torchvision weights by name through torch's hub cache, offline; the converted-variables cache; the
model card from the weights; jaxtl's eval transform + logits equal torchvision's ``weights.transforms()`` + model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jaxtl  # noqa: E402
from jaxtl.bridge import (  # noqa: E402
    BridgeError,
    cached_weights_file,
    from_torchvision,
    pretrained,
    resolve_name,
)
from jaxtl.bridge.hub import TORCHVISION_WEIGHTS  # noqa: E402
from jaxtl.predict import preprocess  # noqa: E402

W18 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1


def randomize_bn(model, seed: int = 1) -> None:
    """Non-trivial eval-mode BatchNorm: random running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a random-init resnet18 under the official IMAGENET1K_V1 file name, an
    empty jaxtl weights cache, downloads off; yields (torch model in eval mode, its file)."""
    root = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("JAXTL_WEIGHTS_CACHE", str(root / "jaxtl_cache"))
        mp.setenv("JAXTL_OFFLINE", "1")
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        randomize_bn(model)
        path = cached_weights_file(resolve_name("resnet18", "DEFAULT"))
        assert str(path).startswith(str(root / "torch" / "hub" / "checkpoints"))
        path.parent.mkdir(parents=True)
        torch.save(model.state_dict(), path)
        yield model, path


def test_table_matches_torchvision() -> None:
    for arch, (enum_name, files, default) in TORCHVISION_WEIGHTS.items():
        enum = getattr(torchvision.models, enum_name)
        assert enum is torchvision.models.get_model_weights(arch)
        assert {w.name: w.url.rsplit("/", 1)[1] for w in enum} == files, arch
        assert enum.DEFAULT.name == default, arch
        for name in [*files, "DEFAULT"]:
            assert resolve_name(arch, name).url == enum[name].url
    assert set(TORCHVISION_WEIGHTS) == set(jaxtl.models.list_models(torchvision=True))


def test_name_forms_and_errors() -> None:
    w = resolve_name(None, "ResNet50_Weights.DEFAULT")
    assert (w.arch, w.name, w.qualname) == ("resnet50", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2")
    assert resolve_name(None, "resnet50.IMAGENET1K_V1").url.endswith("resnet50-0676ba61.pth")
    assert (
        resolve_name(None, "resnet101")
        == resolve_name("resnet101", "DEFAULT")
        == resolve_name(None, "resnet101.DEFAULT")
    )
    with pytest.raises(BridgeError, match=r"ResNet18_Weights has no weights 'IMAGENET1K_V2'; choose one of: "):
        resolve_name("resnet18", "IMAGENET1K_V2")
    with pytest.raises(BridgeError, match="need an architecture"):
        pretrained(weights="IMAGENET1K_V1")
    with pytest.raises(BridgeError, match="belong to resnet50, not resnet18"):
        resolve_name("resnet18", "resnet50.DEFAULT")
    with pytest.raises(BridgeError, match="no such file"):
        pretrained(weights="missing/weights.pth")


def test_offline_without_the_file_names_url_and_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("JAXTL_OFFLINE", "1")
    expected = tmp_path / "th" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(BridgeError) as e:
        pretrained("resnet50", weights="DEFAULT")
    msg = str(e.value)
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg and str(expected) in msg
    assert "downloads are off" in msg


def test_failed_download_names_url_and_path(tmp_path) -> None:
    # A fresh process whose proxy is a closed local port: torch.hub's download fails at once, with or without
    # network, and nothing is left in the cache.
    code = (
        "from jaxtl.bridge import pretrained, BridgeError\n"
        "try:\n    pretrained('resnet34', weights='DEFAULT', progress=False)\n"
        "except BridgeError as e:\n"
        "    print('ERROR', e)\n"
        "    print('ALONE', isinstance(e, OSError), e.__cause__ is None and e.__suppress_context__)\n"
    )
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "th"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "JAXTL_OFFLINE": "",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "th" / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert out.stdout.startswith("ERROR cannot download ResNet34_Weights.IMAGENET1K_V1 from https://download"), out
    assert f"put it at {path}" in out.stdout
    # One error, not the last line of urllib's chained traceback (an OSError too: the CLI's one-line class).
    assert "ALONE True True" in out.stdout
    assert not path.exists()


def test_loads_from_hub_cache_with_card_then_from_jaxtl_cache_without_torch(hub) -> None:
    model, _ = hub
    module, variables, card = pretrained("resnet18", weights="IMAGENET1K_V1")
    assert module.num_classes == 1000 and card.arch == "resnet18" and card.num_classes == 1000
    t = W18.transforms()
    pre = card.preprocessing
    assert (pre.resize_size, pre.crop_size, pre.interpolation) == (t.resize_size[0], t.crop_size[0], "bilinear")
    assert list(pre.mean) == list(t.mean) and list(pre.std) == list(t.std)
    assert list(card.class_names) == W18.meta["categories"]
    assert card.source == W18.url and card.extra["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    direct = from_torchvision(model.state_dict())
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, direct.variables))

    # Second load, in a fresh process where importing torch or torchvision fails: from the jaxtl cache.
    code = (
        "import sys, json\n"
        "sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import numpy as np\n"
        "from jaxtl.bridge import pretrained\n"
        "m, v, c = pretrained('resnet18', weights='DEFAULT', num_classes=3, seed=5)\n"
        "w = pretrained(weights='ResNet18_Weights.IMAGENET1K_V1')\n"
        "print(json.dumps({'cached': w.report.cached, 'n': m.num_classes, 'kind': c.kind, 'names': len(c.class_names),"
        " 'resize': c.preprocessing.resize_size, 'conv1': float(np.asarray(w.variables['params']['conv1']['kernel'])"
        ".sum()), 'head': list(np.asarray(v['params']['fc']['bias']).shape)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cached"] and got["cached"].startswith(os.environ["JAXTL_WEIGHTS_CACHE"])
    assert (got["n"], got["kind"], got["names"], got["resize"], got["head"]) == (3, "classifier", 0, 256, [3])
    assert got["conv1"] == pytest.approx(float(np.asarray(variables["params"]["conv1"]["kernel"]).sum()), rel=1e-6)
    # The new head from the cache is the one a direct conversion makes from the same seed.
    _, v3 = from_torchvision(model.state_dict(), num_classes=3, seed=5)
    p3 = pretrained("resnet18", weights="DEFAULT", num_classes=3, seed=5)
    assert p3.report.cached and p3.report.fc_reinitialized and p3.card.num_classes == 3
    assert jax.tree.all(jax.tree.map(np.array_equal, p3.variables, v3))


def test_cache_follows_the_source_file_and_survives_damage(hub, tmp_path, caplog) -> None:
    _, path = hub
    first = pretrained("resnet18", weights="DEFAULT")
    second = pretrained("resnet18", weights="DEFAULT")
    assert second.report.cached and jax.tree.all(jax.tree.map(np.array_equal, first.variables, second.variables))
    entry = second.report.cached
    with open(entry, "r+b") as f:  # truncate the cache entry: converted again, with a warning
        f.truncate(1000)
    third = pretrained("resnet18", weights="DEFAULT")
    assert third.report.cached is None and "damaged weights cache entry" in caplog.text
    assert jax.tree.all(jax.tree.map(np.array_equal, first.variables, third.variables))
    fresh = pretrained("resnet18", weights="DEFAULT", use_cache=False)
    assert fresh.report.cached is None
    # A file path is cached too, keyed by the file: another file (or a rewritten one) is another entry.
    copy = tmp_path / "mine.pth"
    copy.write_bytes(path.read_bytes())
    a = pretrained(weights=copy, num_classes=0)
    b = pretrained(weights=copy, num_classes=0)
    assert a.report.cached is None and b.report.cached and b.card.kind == "backbone" and b.module.num_classes == 0
    assert b.card.source == str(copy) and b.card.preprocessing.resize_size == 256


def test_eval_transform_and_logits_equal_torchvision(hub, tmp_path) -> None:
    model, _ = hub
    module, variables, card = pretrained(weights=W18)
    rng = np.random.default_rng(0)
    img_path = tmp_path / "test.png"
    Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)).save(img_path)
    img = Image.open(img_path).convert("RGB")
    ref_x = W18.transforms()(img)  # [3, 224, 224]
    ours = preprocess(img_path, card.preprocessing)
    assert ours.shape == (224, 224, 3)
    np.testing.assert_allclose(ours, ref_x.permute(1, 2, 0).numpy(), atol=1e-6)
    with torch.inference_mode():
        ref = model(ref_x[None]).numpy()
    got = np.asarray(module.apply(variables, ours[None], train=False))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_a_jaxtl_safetensors_keeps_its_card(hub, tmp_path) -> None:
    from jaxtl.bridge import save_flax_safetensors

    _, variables, card = pretrained("resnet18", weights="DEFAULT")
    save_flax_safetensors(variables, tmp_path / "mine.safetensors", card=card)
    again = pretrained(weights=tmp_path / "mine.safetensors", use_cache=False)
    assert again.report.layout == "jaxtl-flax"
    assert again.card.class_names == card.class_names and again.card.source == card.source
    assert again.card.preprocessing == card.preprocessing
    assert jax.tree.all(jax.tree.map(np.array_equal, again.variables, variables))
    conv = from_torchvision(tmp_path / "mine.safetensors", num_classes=4)
    assert conv.card.num_classes == 4 and conv.card.class_names == () and conv.card.source == card.source
