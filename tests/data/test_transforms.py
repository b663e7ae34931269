"""torchvision parity of the worker-side transforms: crop+resize pixels, eval Resize+CenterCrop, and the
RandomResizedCrop sampling distribution; decoding of 16-bit and float images by their real range."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jaxtl.data.transforms import (
    ImageTransform,
    decode_image,
    example_rng,
    random_resized_crop_params,
    resize_center_crop,
    resized_crop,
)

tv2 = pytest.importorskip("torchvision.transforms.v2")
F = pytest.importorskip("torchvision.transforms.v2.functional")


def _image(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth content plus noise, so resampling errors would show (pure noise hides them in averages).
    yy, xx = np.mgrid[0:h, 0:w]
    base = (127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0))[..., None] + rng.normal(0, 20, (h, w, 3))
    arr = np.clip(base, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(("h", "w"), [(37, 53), (64, 48), (20, 20)])
def test_resized_crop_equals_torchvision_exactly(mode, h, w):
    # Exact, not within one level: jaxtl makes the same two Pillow calls (crop, then resize with BILINEAR, which
    # Pillow always antialiases) that torchvision's PIL kernel makes, so the bytes cannot differ.
    img = _image(h, w, mode)
    rng = np.random.default_rng(1)
    boxes = [(0, 0, h, w), (1, 2, 5, 3), (h - 4, w - 4, 4, 4)]
    boxes += [random_resized_crop_params(h, w, rng) for _ in range(20)]
    for size in (8, 16, 31):
        for top, left, bh, bw in boxes:
            ours = np.asarray(resized_crop(img, (top, left, bh, bw), size))
            ref = np.asarray(F.resized_crop(img, top, left, bh, bw, [size, size], antialias=True))
            np.testing.assert_array_equal(ours, ref, err_msg=f"box {(top, left, bh, bw)} size {size}")


def test_resize_with_box_is_not_the_same_pixel_path():
    # Why the crop happens first: resize(box=...) samples pixels outside the box at its edges.
    img = _image(40, 40)
    crop_then_resize = np.asarray(resized_crop(img, (5, 7, 20, 18), 12))
    box = np.asarray(img.resize((12, 12), Image.Resampling.BILINEAR, box=(7, 5, 25, 25)))
    assert not np.array_equal(crop_then_resize, box)


@pytest.mark.parametrize(("h", "w"), [(30, 50), (50, 30), (40, 40), (17, 90)])
@pytest.mark.parametrize(("size", "resize"), [(16, 18), (16, 16), (24, 27)])
def test_eval_transform_equals_resize_center_crop(h, w, size, resize):
    img = _image(h, w)
    ref = tv2.Compose([tv2.Resize(resize), tv2.CenterCrop(size)])(img)
    np.testing.assert_array_equal(np.asarray(resize_center_crop(img, size, resize)), np.asarray(ref))
    t = ImageTransform(size, resize, augment="rrc")
    np.testing.assert_array_equal(t(img, None, train=False), np.asarray(ref))


@pytest.mark.parametrize(("h", "w"), [(2, 600), (700, 3)])
def test_extreme_aspect_ratios_resample_only_the_crop(h, w):
    # Resize(8) of a 2 x 600 strip is 8 x 2400 (a 1 x 20M pixel file would be gigabytes): jaxtl resamples only the
    # crop, from the whole image at the same scale; equal to torchvision's resize-then-crop within one level.
    img = _image(h, w)
    ref = np.asarray(tv2.Compose([tv2.Resize(8), tv2.CenterCrop(6)])(img)).astype(int)
    ours = np.asarray(resize_center_crop(img, 6, 8)).astype(int)
    assert ours.shape == ref.shape == (6, 6, 3)
    assert np.abs(ours - ref).max() <= 1


def _torchvision_draws(h: int, w: int, n: int) -> np.ndarray:
    import torch
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    return np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], np.float64)


def _ours(h: int, w: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.array([random_resized_crop_params(h, w, rng) for _ in range(n)], np.float64)


# (h, w, the fallback box after 10 failed attempts): the whole image when its ratio is within [3/4, 4/3], else
# the centred crop clamped to it. A tall narrow image hits the fallback often, a 4:3 one rarely.
@pytest.mark.parametrize(("h", "w", "fallback"), [(120, 160, (0, 0, 120, 160)), (200, 24, (84, 0, 32, 24))])
def test_random_resized_crop_distribution_matches_torchvision(h, w, fallback):
    from scipy import stats

    n = 10_000
    ours, ref = _ours(h, w, n), _torchvision_draws(h, w, n)
    qs = np.linspace(0.1, 0.9, 9)
    for name, f in {
        "area": lambda b: b[:, 2] * b[:, 3] / (h * w),
        "aspect": lambda b: b[:, 3] / b[:, 2],
        "top": lambda b: b[:, 0] / h,
        "left": lambda b: b[:, 1] / w,
    }.items():
        a, b = f(ours), f(ref)
        # Every quantile of ours sits where torchvision's CDF has the same level, up to sampling error: the largest
        # CDF gap over all values (the two-sample KS statistic, exact for these partly discrete variables) is
        # below its p=0.001 bound 1.95 * sqrt(2 / n) = 0.028 for n = 10k.
        gap = stats.ks_2samp(a, b).statistic
        assert gap < 1.95 * np.sqrt(2 / n), (name, gap)
        # And the deciles themselves: each of ours lies between torchvision's quantiles at level q -/+ that bound.
        lo, hi = np.quantile(b, np.clip(qs - 0.028, 0, 1)), np.quantile(b, np.clip(qs + 0.028, 0, 1))
        q_ours = np.quantile(a, qs)
        assert np.all((lo <= q_ours) & (q_ours <= hi)), (name, q_ours, lo, hi)
    hit_ours = np.mean(np.all(ours == np.array(fallback), axis=1))
    hit_ref = np.mean(np.all(ref == np.array(fallback), axis=1))
    assert abs(hit_ours - hit_ref) < 4 * np.sqrt(max(hit_ref, 0.01) / n), (hit_ours, hit_ref)


def test_fallback_crop_is_torchvision_clamped_centre():
    # An image too wide for any sampled box: after 10 attempts, the centre crop clamped to the max ratio.
    class Huge:
        def uniform(self, lo, hi):
            return hi * 10 if lo > 0 else 0.0  # area far above the image: every attempt fails

        def integers(self, lo, hi):
            raise AssertionError("no box fits")

    assert random_resized_crop_params(20, 200, Huge()) == (0, 86, 20, 27)  # type: ignore[arg-type]
    assert random_resized_crop_params(200, 20, Huge()) == (86, 0, 27, 20)  # type: ignore[arg-type]
    assert random_resized_crop_params(40, 45, Huge()) == (0, 0, 40, 45)  # type: ignore[arg-type]


def test_train_transform_draws_from_example_rng_only():
    img = _image(48, 64)
    t = ImageTransform(16, 18, augment="rrc")
    a = t(img, example_rng(3, 1, 7), train=True)
    np.testing.assert_array_equal(a, t(img, example_rng(3, 1, 7), train=True))
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    others = [t(img, example_rng(3, e, i), train=True) for e, i in [(2, 7), (1, 8), (1, 9)]]
    assert all(not np.array_equal(a, o) for o in others)
    # Flip: about half of the examples, and a flipped example is the mirror of the unflipped crop.
    flip = ImageTransform(16, 18, augment="flip")
    outs = [flip(img, example_rng(0, 0, i), train=True) for i in range(200)]
    centre = flip(img, None, train=False)
    flipped = [np.array_equal(o, centre[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, centre) for f, o in zip(flipped, outs))
    assert 70 < sum(flipped) < 130
    none = ImageTransform(16, 18, augment="none")
    np.testing.assert_array_equal(none(img, example_rng(0, 0, 0), train=True), centre)


def test_transform_options_are_validated():
    for kwargs, match in [
        ({"size": 0, "resize_size": 4}, "image size"),
        ({"size": 8, "resize_size": 4}, "resize size"),
        ({"size": 8, "resize_size": 8, "augment": "mixup"}, "augment"),
        ({"size": 8, "resize_size": 8, "scale": (0.5, 0.1)}, "scale"),
        ({"size": 8, "resize_size": 8, "ratio": (0.0, 1.0)}, "ratio"),
    ]:
        with pytest.raises(ValueError, match=match):
            ImageTransform(**kwargs)  # type: ignore[arg-type]


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_16bit_and_float_images_are_scaled_by_their_real_range():
    # Pillow's convert("RGB") (torchvision's loader) clips these: mid-grey 16-bit -> 255, float 0.5 -> 0.
    grey16 = _encoded(Image.fromarray(np.full((6, 5), 32768, np.uint16)), "PNG")
    assert np.asarray(Image.open(io.BytesIO(grey16)).convert("RGB")).max() == 255
    np.testing.assert_array_equal(np.asarray(decode_image(grey16)), 128)
    ramp = np.linspace(0, 65535, 30).astype(np.uint16).reshape(5, 6)
    got = np.asarray(decode_image(_encoded(Image.fromarray(ramp), "PNG"), "L")).astype(int)
    np.testing.assert_array_equal(got, np.round(ramp / 65535 * 255).astype(int))

    half = _encoded(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF")
    assert np.asarray(Image.open(io.BytesIO(half)).convert("RGB")).max() == 0
    np.testing.assert_array_equal(np.asarray(decode_image(half)), 128)
    # Float data outside [0, 1] (e.g. 0..1000): scaled by its own min and max.
    wide = np.array([[0.0, 250.0], [500.0, 1000.0]], np.float32)
    got = np.asarray(decode_image(_encoded(Image.fromarray(wide), "TIFF"), "L"))
    np.testing.assert_array_equal(got, [[0, 64], [128, 255]])
    nan = _encoded(Image.fromarray(np.full((2, 2), np.nan, np.float32)), "TIFF")
    with pytest.raises(ValueError, match="non-finite"):
        decode_image(nan)


def test_8bit_decoding_is_torchvisions_convert_rgb():
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8), "RGBA")
    pal = _image(9, 8).convert("P")
    gray = _image(6, 6, "L")
    for img, fmt in [(rgba, "PNG"), (pal, "PNG"), (gray, "PNG"), (_image(6, 9), "JPEG"), (_image(5, 5), "BMP")]:
        data = _encoded(img, fmt)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(decode_image(data)), ref)
    for bad in [b"", b"\x89PNG\r\n\x1a\n", _encoded(_image(8, 8), "PNG")[:60]]:
        with pytest.raises((OSError, ValueError, SyntaxError)):
            decode_image(bad)
