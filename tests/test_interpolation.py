"""The model card's interpolation, applied exactly as torchvision's ``weights.transforms()`` applies it to a PIL
image: the SWAG weights' bicubic resize (and nearest, and the default bilinear) gives torchvision's tensor in
``jaxtl.predict.preprocess`` and the same uint8 pixels in the data pipeline's eval transform."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxtl.data.transforms import ImageTransform, resize_center_crop, resized_crop
from jaxtl.models import Preprocessing
from jaxtl.predict import preprocess

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as tvf  # noqa: E402
from torchvision.transforms._presets import ImageClassification  # noqa: E402  (what weights.transforms() is)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    # Smooth structure plus noise: a filter's taps show in every pixel.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:97, 0:131]
    base = np.stack([np.sin(x / 7.0) * 90, np.cos(y / 5.0) * 90, (x + y) % 64 * 2.0], -1) + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_preprocess_equals_weights_transforms(image, interpolation) -> None:
    pre = Preprocessing(crop_size=56, resize_size=64, interpolation=interpolation)
    ours = preprocess(image, pre)
    tv = ImageClassification(crop_size=56, resize_size=64, interpolation=InterpolationMode(interpolation))
    theirs = tv(image).permute(1, 2, 0).numpy()
    assert ours.shape == theirs.shape == (56, 56, 3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    if interpolation != "bilinear":  # the filter really changes the pixels
        other = preprocess(image, Preprocessing(crop_size=56, resize_size=64))
        assert np.abs(other - ours).max() > 0.05


def test_the_pipelines_transforms_take_the_interpolation(image) -> None:
    eval_tf = ImageTransform(40, 48, interpolation="bicubic")
    got = eval_tf(image, None, train=False)
    tv = tvf.center_crop(tvf.resize(image, [48], InterpolationMode.BICUBIC, antialias=True), [40])
    np.testing.assert_array_equal(got, np.asarray(tv))
    np.testing.assert_array_equal(got, np.asarray(resize_center_crop(image, 40, 48, "bicubic")))
    box = (5, 9, 60, 70)
    ours = resized_crop(image, box, 32, "bicubic")
    theirs = tvf.resized_crop(image, *box, [32, 32], InterpolationMode.BICUBIC, antialias=True)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ImageTransform(40, 48, interpolation="lanczos")


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_a_folder_streams_with_the_cards_interpolation(tmp_path, image, interpolation) -> None:
    """The route every recipe takes (``open_data`` with the model's card): the streamed eval batch holds
    torchvision's Resize(card's filter) + CenterCrop pixels, and a fine-tuning transform keeps the filter."""
    from jaxtl.models import ModelCard
    from jaxtl.recipes.config import Input
    from jaxtl.recipes.data import open_data

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / "x.png")
    card = ModelCard("resnet18", 2, Preprocessing(crop_size=40, resize_size=48, interpolation=interpolation))
    src = open_data(f"folder:{tmp_path}", card, Input(workers=0))
    assert src.transform.interpolation == interpolation
    assert src.with_options(augment="rrc", image_size=32).transform.interpolation == interpolation
    batch = next(iter(src.batches(2, shuffle=False, drop_remainder=False, train=False)))
    mode = InterpolationMode(interpolation)
    want = np.asarray(tvf.center_crop(tvf.resize(image, [48], mode, antialias=True), [40]))
    np.testing.assert_array_equal(batch["images"][0], want)
    np.testing.assert_array_equal(batch["images"][1], want)
