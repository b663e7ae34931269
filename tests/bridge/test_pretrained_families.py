"""pretrained() for the ViT and ConvNeXt families: every weights enum's card from ``weights.transforms()``, loads from
a file placed in torch's hub cache (offline), and one clear error when named weights are nowhere."""

from __future__ import annotations

import urllib.error

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jaxtl  # noqa: E402
from jaxtl.bridge import (  # noqa: E402
    BridgeError,
    WeightsUnavailableError,
    cached_weights_file,
    from_torchvision,
    pretrained,
    resolve_name,
)
from jaxtl.bridge.hub import card_from_weights  # noqa: E402

FAMILIES = [*jaxtl.models.list_models("vit"), *jaxtl.models.list_models("convnext")]


def _enums(arch: str) -> list:
    return list(torchvision.models.get_model_weights(arch))


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_weights_card_is_what_transforms_says(arch: str) -> None:
    for w in _enums(arch):
        t = w.transforms()
        card = card_from_weights(w, arch)
        pre = card.preprocessing
        got = (pre.crop_size, pre.resize_size, pre.interpolation, pre.mean, pre.std)
        want = (t.crop_size[0], t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))
        assert got == want, (arch, w.name)
        assert card.num_classes == 1000 and list(card.class_names) == w.meta["categories"]
        assert card.source == w.url and card.extra["weights"] == f"{type(w).__name__}.{w.name}"
        assert resolve_name(arch, w.name).url == w.url
    # The registry's default card is the eval transform of the architecture's default-size (224) weights.
    default = next(w for w in _enums(arch) if w.transforms().crop_size[0] == 224)
    assert jaxtl.ModelCard.for_arch(arch, 1000).preprocessing == card_from_weights(default, arch).preprocessing


def test_the_sizes_the_issue_names() -> None:
    def pre(arch: str, name: str):
        return card_from_weights(resolve_name(arch, name).torchvision_enum(), arch).preprocessing

    swag = pre("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert (swag.crop_size, swag.resize_size, swag.interpolation) == (384, 384, "bicubic")
    assert pre("vit_l_16", "IMAGENET1K_V1").resize_size == 242
    assert {pre(a, "DEFAULT").resize_size for a in jaxtl.models.list_models("convnext")} == {230, 232, 236}
    assert resolve_name("vit_h_14", "DEFAULT").name == "IMAGENET1K_SWAG_E2E_V1"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A TORCH_HOME holding random-init convnext_tiny (IMAGENET1K_V1) and vit_b_16 at 384 px (its SWAG E2E weights,
    float16 to halve the file) under the official file names; downloads off; an empty jaxtl weights cache."""
    root = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("JAXTL_WEIGHTS_CACHE", str(root / "jaxtl_cache"))
        mp.setenv("JAXTL_OFFLINE", "1")
        torch.manual_seed(0)
        models = {
            "convnext_tiny": torchvision.models.convnext_tiny(weights=None).eval(),
            "vit_b_16": torchvision.models.vit_b_16(weights=None, image_size=384).half().float().eval(),
        }
        for arch, name in (("convnext_tiny", "IMAGENET1K_V1"), ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")):
            path = cached_weights_file(resolve_name(arch, name))
            path.parent.mkdir(parents=True, exist_ok=True)
            sd = models[arch].state_dict()
            torch.save({k: v.half() for k, v in sd.items()} if arch == "vit_b_16" else sd, path)
        yield models


def test_convnext_from_the_hub_cache_then_the_jaxtl_cache(hub) -> None:
    first = pretrained("convnext_tiny", weights="IMAGENET1K_V1")
    module, variables, card = first
    assert module.num_classes == 1000 and card.arch == "convnext_tiny" and first.report.cached is None
    assert (card.preprocessing.resize_size, card.preprocessing.crop_size) == (236, 224)
    assert card.source == torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1.url
    direct = from_torchvision(hub["convnext_tiny"])
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, direct.variables))
    again = pretrained(weights="ConvNeXt_Tiny_Weights.DEFAULT", num_classes=5, seed=1)
    assert again.report.cached and again.card.num_classes == 5 and again.card.kind == "classifier"
    assert again.variables["params"]["classifier"]["2"]["kernel"].shape == (768, 5)
    expected = from_torchvision(hub["convnext_tiny"], num_classes=5, seed=1).variables
    assert jax.tree.all(jax.tree.map(np.array_equal, again.variables, expected))


def test_vit_swag_e2e_is_built_at_384_with_its_card(hub) -> None:
    loaded = pretrained("vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1", num_classes=0, use_cache=False)
    module, variables, card = loaded
    assert module.image_size == 384 and module.num_classes == 0 and "heads" not in variables["params"]
    pre = card.preprocessing
    assert (pre.crop_size, pre.resize_size, pre.interpolation, card.kind) == (384, 384, "bicubic", "backbone")
    assert variables["params"]["encoder"]["pos_embedding"].shape == (1, 577, 768)
    assert loaded.report.cast_from == {"float16": len(hub["vit_b_16"].state_dict())}
    smaller = loaded.at_image_size(224)
    assert smaller.module.image_size == 224 and smaller.card.preprocessing.crop_size == 224
    assert smaller.variables["params"]["encoder"]["pos_embedding"].shape == (1, 197, 768)


def test_named_weights_nowhere_is_one_clear_error(tmp_path, monkeypatch) -> None:
    # No network: torch.hub's download fails as urllib fails offline. One error naming the file and the URL,
    # not chained to urllib's (an OSError too, so the CLI reports it in one line).
    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("JAXTL_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as e:
        pretrained("resnet50", weights="IMAGENET1K_V2", progress=False)
    err = e.value
    path = tmp_path / "th" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert isinstance(err, BridgeError) and isinstance(err, OSError)
    assert err.__cause__ is None and err.__suppress_context__
    assert str(path) in str(err) and "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in str(err)
    assert "Network is unreachable" in str(err) and "\n" not in str(err)
    assert (err.path, err.url) == (str(path), "https://download.pytorch.org/models/resnet50-11ad3fa6.pth")
    monkeypatch.setenv("JAXTL_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="downloads are off"):
        pretrained("vit_l_16", weights="IMAGENET1K_V1")


def test_use_cache_takes_a_folder(hub, tmp_path) -> None:
    folder = tmp_path / "mine"
    first = pretrained("convnext_tiny", num_classes=0, use_cache=folder)
    second = pretrained("convnext_tiny", num_classes=0, use_cache=folder)
    assert first.report.cached is None and second.report.cached.startswith(str(folder))
    assert pretrained("convnext_tiny", num_classes=0, use_cache=False).report.cached is None
