"""Data identity: a source's digest and its examples' names and content keys follow the data, not the spelling of
its path (relative, absolute, through a symlink, with a trailing slash, after the root was renamed), and change
when the data does. The digest reads no image."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxtl.data import ArrayDataset, open_source, pack_image_folder
from jaxtl.data.identity import KEY_CHARS
from jaxtl.data.listing import FileReader


def _img(path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "data"
    for i, name in enumerate(["cat/a.png", "cat/sub/b.png", "dog/c.png", "dog/d.png"]):
        _img(r / name, i)
    return r


def _folder(spec_path, **kwargs):
    return open_source(f"folder:{spec_path}", image_size=8, workers=0, **kwargs)


def test_folder_digest_follows_the_data_not_the_path(root, tmp_path, monkeypatch):
    def no_reading(self, i):
        raise AssertionError("the digest must not read images")

    monkeypatch.setattr(FileReader, "read", no_reading)
    digest = _folder(root).digest()
    assert len(digest) == KEY_CHARS and int(digest, 16) >= 0
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for spelling in ("data", "./data/", f"{root}/", str(tmp_path / "link"), "link/"):
        assert _folder(spelling).digest() == digest, spelling
    os.rename(root, tmp_path / "renamed")
    assert _folder(tmp_path / "renamed").digest() == digest
    monkeypatch.undo()

    moved = tmp_path / "renamed"
    changes = []
    (moved / "dog" / "d.png").write_bytes((moved / "dog" / "d.png").read_bytes() + b"\0")  # other bytes, size
    changes.append(_folder(moved).digest())
    _img(moved / "dog" / "e.png", 9)  # a file added
    changes.append(_folder(moved).digest())
    (moved / "dog" / "e.png").unlink()
    (moved / "dog" / "c.png").rename(moved / "cat" / "c.png")  # moved to another class
    changes.append(_folder(moved).digest())
    (moved / "cat" / "c.png").unlink()  # removed
    changes.append(_folder(moved).digest())
    assert len({digest, *changes}) == 5


def test_digest_covers_labels_subsets_and_labeled_but_not_options(root):
    src = _folder(root)
    assert src.with_options(image_size=6, augment="rrc", workers=1).digest() == src.digest()
    assert src.unlabeled().digest() != src.digest()
    assert src.subset(np.arange(2)).digest() != src.subset(np.arange(2, 4)).digest()
    assert src.subset(np.arange(4)).digest() == src.digest()  # a subset of everything, in order, is the data
    assert src.subset(np.arange(1, 3)).subset(np.arange(1, 2)).digest() == src.subset(np.array([2])).digest()


def test_file_list_digest_and_names_ignore_how_the_list_is_spelled(root, tmp_path, monkeypatch):
    (root / "list.csv").write_text("cat/a.png,cat\n./dog/c.png,dog\n")
    monkeypatch.chdir(tmp_path)
    a = open_source("csv:data/list.csv", image_size=8, workers=0)
    b = open_source(f"csv:{root / 'list.csv'}", image_size=8, workers=0)
    assert a.digest() == b.digest() and a.example_names() == ["cat/a.png", "dog/c.png"]
    assert a.content_keys([0, 1]) == _folder(root).content_keys([0, 2])


def test_example_names_and_content_keys(root, tmp_path):
    src = _folder(root)
    names = ["cat/a.png", "cat/sub/b.png", "dog/c.png", "dog/d.png"]
    assert src.example_names() == names and src.example_names([3, 1]) == ["dog/d.png", "cat/sub/b.png"]
    assert src.subset(np.array([2, 0])).example_names() == ["dog/c.png", "cat/a.png"]
    expected = [hashlib.sha256((root / n).read_bytes()).hexdigest()[:KEY_CHARS] for n in names]
    assert src.content_keys(range(4)) == expected
    assert src.subset(np.array([3])).content_keys([0]) == [expected[3]]
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    assert _folder(f"{tmp_path / 'link'}/").content_keys([1]) == [expected[1]]

    # Only the examples asked are read: a missing file matters only when asked for, and is named.
    (root / "cat" / "a.png").unlink()
    assert src.content_keys([2, 3]) == expected[2:]
    with pytest.raises(ValueError, match=r"example 0 .*cat/a\.png.* could not be read"):
        src.content_keys([0])
    # Same size, other bytes: the key changes (the digest, which reads nothing, does not see it).
    path = root / "dog" / "c.png"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert src.content_keys([2]) != [expected[2]]


def test_pack_identity_survives_renaming_and_matches_the_folders_keys(root, tmp_path):
    folder = _folder(root)
    pack_image_folder(root, tmp_path / "pack", num_shards=2)
    packed = open_source(f"arrayrecord:{tmp_path / 'pack'}", image_size=8, workers=0)
    digest = packed.digest()
    assert digest != folder.digest()
    os.rename(tmp_path / "pack", tmp_path / "pack2")
    packed = open_source(f"arrayrecord:{tmp_path / 'pack2'}/", image_size=8, workers=0)
    assert packed.digest() == digest
    assert packed.example_names() == folder.example_names()
    assert packed.content_keys([0, 3]) == folder.content_keys([0, 3])  # a record's key is its image's
    assert packed.subset(np.array([1])).digest() != packed.subset(np.array([2])).digest()
    shutil.copy(tmp_path / "pack2" / "labels.npy", tmp_path / "labels.npy")
    labels = np.load(tmp_path / "labels.npy")
    np.save(tmp_path / "pack2" / "labels.npy", labels[::-1].copy())  # same records, other labels
    assert open_source(f"arrayrecord:{tmp_path / 'pack2'}", image_size=8, workers=0).digest() != digest


def test_in_memory_identity_hashes_pixels_and_labels():
    rng = np.random.default_rng(0)
    images = rng.random((5, 4, 4, 1)).astype(np.float32)
    ds = ArrayDataset(images, np.array([0, 1, 0, 1, 1]), 2)
    same = ArrayDataset(images.copy(), np.array([0, 1, 0, 1, 1]), 2)
    assert ds.digest() == same.digest() and len(ds.digest()) == KEY_CHARS
    assert ds.example_names() is None
    keys = ds.content_keys([0, 4])
    assert keys == [hashlib.sha256(images[i].tobytes()).hexdigest()[:KEY_CHARS] for i in (0, 4)]
    assert ds.subset(np.array([4])).content_keys([0]) == keys[1:]
    other = images.copy()
    other[2, 1, 1, 0] += 1.0
    assert ArrayDataset(other, ds.labels, 2).digest() != ds.digest()
    assert ArrayDataset(images, np.array([1, 1, 0, 1, 1]), 2).digest() != ds.digest()
    assert ds.unlabeled().digest() != ds.digest()
    digits = open_source("digits", image_size=8, channels=1)
    assert digits.digest() == open_source("digits", image_size=8, channels=1).digest()
