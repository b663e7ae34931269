"""The streaming Source: order by position (epoch_indices + process_slice), bit-identical batches for any number of
grain workers and processes, resume by start_batch, bad files replaced or masked with one warning per epoch."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxtl.data import ArrayDataset, ImageSource, SkippedFilesWarning, Source, open_source
from jaxtl.data.batching import iterate_batches
from jaxtl.data.transforms import decode_image, example_rng
from jaxtl.models.registry import IMAGENET_MEAN, IMAGENET_STD

N = 22  # 2 full batches of 8 and a ragged one of 6


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """N solid PNGs whose green channel is their listing index (class = index // 8, files sorted)."""
    root = tmp_path_factory.mktemp("coded")
    for i in range(N):
        d = root / f"c{i // 8}"
        d.mkdir(exist_ok=True)
        Image.new("RGB", (10 + i % 5, 12), (200, i, 50)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """N JPEGs of varied sizes with texture, so crops and flips change pixels."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N):
        d = root / f"c{i % 3}"
        d.mkdir(exist_ok=True)
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i:03d}.jpg", quality=90)
    return root


def _collect(src, bs=8, **kw) -> list[dict[str, np.ndarray]]:
    return list(src.batches(bs, **kw))


def _assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_order_labels_and_padding_are_those_of_the_in_memory_batches(coded):
    src = open_source(f"folder:{coded}", image_size=8, resize_size=8, workers=0)
    assert isinstance(src, Source) and isinstance(src, ImageSource)
    assert len(src) == N and src.num_classes == 3 and src.class_names == ("c0", "c1", "c2")
    assert src.image_shape == (8, 8, 3) and src.normalization == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    np.testing.assert_array_equal(src.labels, np.arange(N) // 8)
    # The in-memory reference: images hold the index, so both yield the same index per row.
    ref = ArrayDataset(np.arange(N, dtype=np.float32).reshape(N, 1, 1, 1), np.arange(N) // 8, 3)
    for shuffle in (True, False):
        for drop in (True, False):
            for p_count in (1, 2):
                for p in range(p_count):
                    kw = dict(seed=5, epoch=2, shuffle=shuffle, drop_remainder=drop, process_index=p)
                    ours = _collect(src, process_count=p_count, train=False, **kw)
                    want = list(iterate_batches(ref, 8, process_count=p_count, **kw))
                    assert len(ours) == len(want) == (2 if drop else 3)
                    for o, w in zip(ours, want):
                        assert o["images"].dtype == np.uint8 and o["images"].shape == (8 // p_count, 8, 8, 3)
                        assert o["labels"].dtype == np.int32
                        np.testing.assert_array_equal(o["images"][:, 4, 4, 1], w["images"][:, 0, 0, 0])
                        np.testing.assert_array_equal(o["labels"], w["labels"])
                        assert ("mask" in o) == (not drop)
                        if not drop:
                            assert o["mask"].dtype == np.float32
                            np.testing.assert_array_equal(o["mask"], w["mask"])


def test_bit_identical_for_0_1_2_workers(photos, tmp_path):
    # A zero-byte file among them: its replacement (masked here) travels through the workers too.
    (photos / "c1" / "zz_empty.jpg").write_bytes(b"")
    try:
        runs = []
        for workers in (0, 1, 2):
            src = open_source(f"folder:{photos}", image_size=16, augment="rrc", workers=workers)
            with pytest.warns(SkippedFilesWarning, match="zz_empty.jpg") as rec:
                # A resumed epoch, then the next one from the same (kept) worker processes.
                run = _collect(src, seed=1, epoch=3, drop_remainder=False, start_batch=1)
                run += _collect(src, seed=1, epoch=4, drop_remainder=False)
            assert len([w for w in rec if issubclass(w.category, SkippedFilesWarning)]) == 2
            src.close()
            runs.append(run)
        _assert_same(runs[0], runs[1])
        _assert_same(runs[0], runs[2])
        assert sum(int((b["mask"] == 0).sum()) for b in runs[0]) >= 1
    finally:
        (photos / "c1" / "zz_empty.jpg").unlink()


@pytest.mark.parametrize("drop", [True, False])
def test_two_processes_concatenated_equal_one(photos, drop):
    src = open_source(f"folder:{photos}", image_size=12, augment="rrc", workers=0)
    one = _collect(src, seed=2, epoch=1, drop_remainder=drop)
    halves = [_collect(src, seed=2, epoch=1, drop_remainder=drop, process_index=p, process_count=2) for p in (0, 1)]
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)]
    _assert_same(one, joined)


def test_resume_from_start_batch_and_draws_per_epoch(photos):
    src = open_source(f"folder:{photos}", image_size=12, augment="rrc", workers=0)
    full = _collect(src, seed=4, epoch=0, drop_remainder=False)
    _assert_same(full[1:], _collect(src, seed=4, epoch=0, drop_remainder=False, start_batch=1))
    assert _collect(src, seed=4, epoch=0, start_batch=2) == []
    with pytest.raises(ValueError, match="start_batch=3 outside"):
        _collect(src, seed=4, epoch=0, start_batch=3)
    again = _collect(src, seed=4, epoch=0, drop_remainder=False)
    _assert_same(full, again)
    # Another epoch: another order and other crops; unshuffled, the same examples get other crops.
    a = _collect(src, seed=4, epoch=0, shuffle=False)
    b = _collect(src, seed=4, epoch=1, shuffle=False)
    np.testing.assert_array_equal(a[0]["labels"], b[0]["labels"])
    assert not np.array_equal(a[0]["images"], b[0]["images"])
    # train=False: the eval transform, no draws (the same for every epoch and seed).
    _assert_same(
        _collect(src, seed=4, epoch=0, shuffle=False, train=False),
        _collect(src, seed=9, epoch=7, shuffle=False, train=False),
    )


def test_next_epoch_continues_the_stream_with_the_same_batches(photos):
    src = open_source(f"folder:{photos}", image_size=12, augment="rrc", workers=0)
    fresh = open_source(f"folder:{photos}", image_size=12, augment="rrc", workers=0)
    _collect(src, seed=1, epoch=0)
    stream = src._stream
    _assert_same(_collect(src, seed=1, epoch=1), _collect(fresh, seed=1, epoch=1))
    assert src._stream is stream and stream is not None  # the same pipeline went on into epoch 1
    # Abandoned mid-epoch, or other options: a new pipeline, the same batches.
    it = src.batches(8, seed=1, epoch=2)
    next(it)
    it.close()
    _assert_same(_collect(src, seed=1, epoch=3), _collect(fresh, seed=1, epoch=3))
    assert src._stream is not stream
    _assert_same(_collect(src, seed=1, epoch=3, train=False), _collect(fresh, seed=1, epoch=3, train=False))
    # Two epochs read at once (the second gets a private pipeline): both right.
    a, b = src.batches(8, seed=1, epoch=5), src.batches(8, seed=1, epoch=6)
    pairs = list(zip(a, b))
    _assert_same([x for x, _ in pairs], _collect(fresh, seed=1, epoch=5))
    _assert_same([y for _, y in pairs], _collect(fresh, seed=1, epoch=6))
    src.close()
    assert src._stream is None
    # Evaluation passes (unshuffled, no draws) are alike for every epoch: one stream serves them all.
    first = _collect(src, drop_remainder=False, shuffle=False, train=False)
    stream = src._stream
    _assert_same(first, _collect(src, drop_remainder=False, shuffle=False, train=False))
    _assert_same(first, _collect(src, drop_remainder=False, shuffle=False, train=False, epoch=7))
    assert src._stream is stream


def _broken_folder(root):
    rng = np.random.default_rng(1)
    for i in range(6):
        d = root / "a"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "a" / "1.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    (root / "a" / "2.png").write_bytes(b"")  # zero bytes
    (root / "a" / "4.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())  # corrupt
    return root


def test_bad_files_are_replaced_in_training_with_one_warning(tmp_path):
    root = _broken_folder(tmp_path / "broken")
    src = open_source(f"folder:{root}", image_size=8, augment="rrc", workers=0)
    with pytest.warns(SkippedFilesWarning) as rec:
        batches = _collect(src, bs=6, seed=0, epoch=0, shuffle=False)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "epoch 0: 3 unreadable image(s) replaced by the next readable image" in msg
    assert all(f"{n}.png" in msg for n in (1, 2, 4))
    assert src.bad_files == {str(root / "a" / f"{n}.png") for n in (1, 2, 4)}
    (batch,) = batches
    assert "mask" not in batch
    # Row i holds example i; a bad row i holds the next readable example with i's own draws (1, 2 -> 3; 4 -> 5).
    for i, j in [(0, 0), (1, 3), (2, 3), (3, 3), (4, 5), (5, 5)]:
        img = decode_image(str(root / "a" / f"{j}.png"))
        want = src.transform(img, example_rng(0, 0, i), train=True)
        np.testing.assert_array_equal(batch["images"][i], want, err_msg=f"row {i}")
    # Another epoch warns again (once), since each batches() call is one epoch.
    with pytest.warns(SkippedFilesWarning, match="epoch 1: 3 unreadable"):
        _collect(src, bs=6, seed=0, epoch=1)


def test_bad_files_are_masked_in_evaluation(tmp_path):
    root = _broken_folder(tmp_path / "broken")
    src = open_source(f"folder:{root}", image_size=8, workers=0)
    with pytest.warns(SkippedFilesWarning, match="3 unreadable image.* masked out"):
        (batch,) = _collect(src, bs=8, shuffle=False, drop_remainder=False, train=False)
    np.testing.assert_array_equal(batch["mask"], [1, 0, 0, 1, 0, 1, 0, 0])
    assert not batch["images"][[1, 2, 4, 6, 7]].any()


def test_all_unreadable_in_training_is_an_error_naming_a_file(tmp_path):
    (tmp_path / "r" / "a").mkdir(parents=True)
    (tmp_path / "r" / "a" / "x.png").write_bytes(b"")
    (tmp_path / "r" / "a" / "y.png").write_bytes(b"junk")
    src = open_source(f"folder:{tmp_path / 'r'}", image_size=8, workers=0)
    with pytest.raises(ValueError, match=r"none of the 2 images could be read .*\.png"), warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        _collect(src, bs=2)


def test_subset_unlabeled_and_options(photos):
    src = open_source(f"folder:{photos}", image_size=12, augment="rrc", workers=0)
    sub = src.subset(np.array([3, 0, 7]))
    assert len(sub) == 3 and sub.num_classes == src.num_classes
    np.testing.assert_array_equal(sub.labels, src.labels[[3, 0, 7]])
    full = _collect(src, bs=1, shuffle=False, train=False)
    part = _collect(sub, bs=1, shuffle=False, train=False)
    for k, i in enumerate([3, 0, 7]):
        np.testing.assert_array_equal(part[k]["images"], full[i]["images"])
    unl = src.unlabeled()
    assert unl.labels is None
    assert set(next(iter(unl.batches(4))).keys()) == {"images"}
    small = src.with_options(image_size=8, augment="none")
    assert small.image_shape == (8, 8, 3) and small.transform.resize_size == 9
    grey = open_source(f"folder:{photos}", image_size=8, channels=1, workers=0)
    assert grey.image_shape == (8, 8, 1) and len(grey.normalization[0]) == 1
    assert next(iter(grey.batches(2)))["images"].shape == (2, 8, 8, 1)


def test_open_source_in_memory_specs_and_errors(tmp_path, photos):
    digits = open_source("digits", image_size=8, channels=1)
    assert isinstance(digits, ArrayDataset) and digits.images.shape == (1797, 8, 8, 1)
    assert digits.images.min() < 0  # normalised with the (grey) mean/std
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 6, 6, 3), np.uint8), labels=np.arange(4))
    npz = open_source(f"npz:{tmp_path / 'd.npz'}", image_size=6, mean=(0.5,) * 3, std=(0.5,) * 3)
    np.testing.assert_allclose(npz.images, -1.0)
    for spec, kwargs, match in [
        (f"npz:{tmp_path / 'd.npz'}", {"image_size": 8}, r"d\.npz.*\(6, 6, 3\) per example, expected \(8, 8, 3\)"),
        ("digits", {"image_size": 8, "augment": "rrc"}, "needs decoded originals"),
        (f"folder:{tmp_path / 'missing'}", {"image_size": 8}, r"data spec 'folder:.*missing'.*does not exist"),
        (f"csv:{tmp_path / 'x.csv'}", {"image_size": 8}, r"x\.csv.*does not exist"),
        ("imagenet", {"image_size": 8}, "'imagenet' is not a data spec"),
        ("folder:", {"image_size": 8}, "is not a data spec"),
        (f"folder:{photos}", {"image_size": 8, "augment": "mixup"}, "augment must be one of"),
        (f"folder:{photos}", {"image_size": 8, "mean": (0.5,), "std": (0.5,)}, "mean/std have 1/1 entries"),
        (f"folder:{photos}", {"image_size": 8, "resize_size": 4}, "resize size"),
    ]:
        with pytest.raises(ValueError, match=match):
            open_source(spec, **kwargs)


def test_csv_spec_streams_the_listed_files(photos, tmp_path):
    paths = sorted(photos.rglob("*.jpg"))[:5]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(paths)))
    src = open_source(f"csv:{tmp_path / 'list.csv'}", image_size=8, workers=0)
    assert len(src) == 5 and src.class_names == ("0", "1")
    (batch,) = _collect(src, bs=5, shuffle=False, train=False)
    want = src.transform(decode_image(str(paths[2])), None, train=False)
    np.testing.assert_array_equal(batch["images"][2], want)


def test_default_workers_leave_a_core_for_the_training_loop(monkeypatch):
    import os

    from jaxtl.data import default_workers

    for cores, want in [(1, 0), (2, 1), (8, 7), (64, 16)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: set(range(c)), raising=False)
        assert default_workers() == want
