"""The data loaders fed hostile files: load_image_folder skips unreadable images with one SkippedFilesWarning
(or raises ValueError when none is readable); the streaming source replaces (training) or masks (evaluation) them
with one warning; load_npz raises ValueError naming the file. Never another exception.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxtl.data import load_image_folder, load_npz, open_source
from jaxtl.data.in_memory import SkippedFilesWarning
from jaxtl.data.transforms import decode_image, example_rng

# The number of examples and the deadline come from the profile tests/conftest.py loads ("explore" searches more).
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _png(size=(6, 5), color=(200, 10, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width x height`` pixels, with a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _load_folder(root, **kwargs):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            ds = load_image_folder(root, size=4, resize=4, num_workers=1, **kwargs)
        except ValueError as e:
            return None, record, e
    return ds, record, None


HOSTILE = st.one_of(
    st.binary(max_size=64).map(lambda b: ("random", b)),
    st.floats(0.0, 0.99).map(lambda f: ("truncated", _png()[: int(len(_png()) * f)])),
    st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(lambda wh: ("bomb", png_bomb(*wh))),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=6).map(
        lambda ps: (
            "flipped",
            bytes(b ^ 0xFF if i in {p % len(_png()) for p in ps} else b for i, b in enumerate(_png())),
        )
    ),
    st.just(("zero", b"")),
)


@FUZZ
@given(bad=st.lists(HOSTILE, min_size=1, max_size=3), good=st.integers(0, 2))
def test_image_folder_skips_or_value_error(tmp_path_factory, bad, good):
    root = tmp_path_factory.mktemp("imgs")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i in range(good):
        (root / "a" / f"good{i}.png").write_bytes(_png())
    for i, (_, blob) in enumerate(bad):
        (root / ("a" if i % 2 else "b") / f"bad{i}.png").write_bytes(blob)
    ds, record, err = _load_folder(root)
    skipped = [w for w in record if issubclass(w.category, SkippedFilesWarning)]
    if ds is None:
        # No readable image at all, or a class folder left without image files (an error naming that folder).
        assert ("could be read" in str(err) and str(root) in str(err)) or "has no image files" in str(err)
        return
    assert len(ds) >= good
    assert ds.images.shape[1:] == (4, 4, 3) and np.isfinite(ds.images).all()
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    if len(ds) < good + len(bad):
        assert len(skipped) == 1 and "skipped" in str(skipped[0].message)


@FUZZ
@given(bad=st.lists(HOSTILE, min_size=1, max_size=3), good=st.integers(1, 3), train=st.booleans())
@example(bad=[("bomb", png_bomb(1, 22_447_489))], good=1, train=False)  # a 1 x 22M strip: Resize would take GBs
def test_streaming_source_replaces_or_masks_hostile_files(tmp_path_factory, bad, good, train):
    """Mid-stream, a hostile file never raises: in training it is replaced by the next readable image (with its
    own draws), in evaluation masked out; one SkippedFilesWarning names exactly the unreadable files."""
    root = tmp_path_factory.mktemp("stream")
    (root / "a").mkdir()
    for i, (_, blob) in enumerate(bad):
        (root / "a" / f"bad{i}.png").write_bytes(blob)
    for i in range(good):
        (root / "a" / f"good{i}.png").write_bytes(_png())
    src = open_source(f"folder:{root}", image_size=4, augment="rrc", workers=0)
    paths = list(src.reader.paths)
    readable = []  # decodes and goes through the eval transform
    for p in paths:
        try:
            img = decode_image(p)
            src.transform(img, None, train=False)
            readable.append(img)
        except Exception:
            readable.append(None)
    n = len(paths)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        (batch,) = list(src.batches(n, shuffle=False, drop_remainder=train, train=train))
    skipped = [w for w in record if issubclass(w.category, SkippedFilesWarning)]
    unreadable = [p for p, img in zip(paths, readable) if img is None]
    assert len(skipped) == (1 if unreadable else 0)
    if unreadable:
        assert all(p in str(skipped[0].message) for p in unreadable)
    assert batch["images"].shape == (n, 4, 4, 3) and batch["images"].dtype == np.uint8
    for i in range(n):
        if not train:
            assert batch["mask"][i] == (readable[i] is not None)
            continue
        j = next(k % n for k in range(i, i + n) if readable[k % n] is not None)
        want = src.transform(readable[j], example_rng(0, 0, i), train=True)
        np.testing.assert_array_equal(batch["images"][i], want)


def test_decompression_bomb_is_skipped_with_warning(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ok.png").write_bytes(_png())
    (tmp_path / "a" / "bomb.png").write_bytes(png_bomb(100_000, 100_000))  # 10^10 pixels claimed, ~100 bytes
    with pytest.warns(SkippedFilesWarning, match="bomb.png"):
        ds = load_image_folder(tmp_path, size=4, resize=4, num_workers=1)
    assert len(ds) == 1


def test_only_unreadable_images_is_a_value_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        with pytest.raises(ValueError, match="none of its 1 image files could be read"):
            load_image_folder(tmp_path, size=4, resize=4, num_workers=1)


def test_misplaced_labels_are_value_errors(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.png").write_bytes(_png())
    with pytest.raises(ValueError, match=r"folder\(s\) \['cat'\].*not in class_names"):
        load_image_folder(tmp_path, size=4, resize=4, class_names=["dog"])


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD_NPZ = _npz_bytes(images=np.zeros((4, 3, 3, 1), np.uint8), labels=np.arange(4))

ARRAYS = st.sampled_from(
    [
        np.zeros((4, 3, 3, 1), np.uint8),
        np.zeros((4, 3, 3), np.float32),
        np.full((4, 3, 3), np.nan, np.float32),
        np.zeros((4,), np.float64),
        np.zeros((0, 3, 3, 1), np.uint8),
        np.zeros((4, 3, 3, 1), np.complex64),
        np.array(["a", "b"]),
        np.zeros((2, 2, 2, 2, 2), np.float32),
        np.arange(4),
        np.array([-1, 0, 1, 2]),
        np.array([0.5, 1.0, 2.0, 3.0]),
        np.arange(5),
        np.array([0, 1, 2, 99]),
        np.zeros((4, 1), np.int64),
    ]
)


@FUZZ
@given(
    images=ARRAYS,
    labels=st.one_of(st.none(), ARRAYS),
    num_classes=st.one_of(st.none(), st.integers(-1, 5)),
)
def test_npz_arrays_load_or_value_error(tmp_path_factory, images, labels, num_classes):
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    path.write_bytes(_npz_bytes(**arrays))
    try:
        ds = load_npz(path, labels_key=None if labels is None else "labels", num_classes=num_classes)
    except ValueError as e:
        assert str(path) in str(e) or "num_classes" in str(e)
        return
    assert ds.images.dtype == np.float32 and ds.images.ndim == 4 and np.isfinite(ds.images).all()
    if ds.labels is not None:
        assert ds.labels.min() >= 0 and ds.labels.max() < ds.num_classes


@FUZZ
@given(
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.integers(0, 2**31), max_size=4),
    suffix=st.sampled_from([".npz", ".npy"]),
)
# Found by this test: zipfile raises NotImplementedError for a damaged compression method or zip version.
@example(cut=1.0, flips=[1476084], suffix=".npz")
@example(cut=1.0, flips=[1476086], suffix=".npz")
@example(cut=1.0, flips=[1476088], suffix=".npz")
def test_damaged_npz_files_value_error(tmp_path_factory, cut, flips, suffix):
    blob = bytearray(GOOD_NPZ[: int(len(GOOD_NPZ) * cut)])
    for pos in flips:
        if blob:
            blob[pos % len(blob)] ^= 0xA5
    path = tmp_path_factory.mktemp("npz") / f"d{suffix}"
    path.write_bytes(bytes(blob))
    try:
        load_npz(path)
    except ValueError as e:
        assert str(path) in str(e)


def test_npz_header_claiming_a_giant_array_is_a_value_error(tmp_path):
    path = tmp_path / "bomb.npz"
    path.write_bytes(GOOD_NPZ)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((4, 3, 3, 1), np.uint8))
    header["shape"] = (10**7, 10**4, 10**4, 3)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", buf.getvalue() + b"\0" * 36)
        z.writestr("labels.npy", _npy(np.arange(4)))
    with pytest.raises(ValueError, match=r"bomb\.npz.*images"):
        load_npz(path)


def test_plain_npy_is_a_value_error(tmp_path):
    path = tmp_path / "arr.npy"
    np.save(path, np.zeros((4, 3, 3, 1), np.uint8))
    with pytest.raises(ValueError, match=r"arr\.npy"):
        load_npz(path)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()
