"""Listing rules of the sources: torchvision ImageFolder's order and classes, symlinks without loops, special
files skipped, empty classes named; CSV lists; ArrayRecord packs (same batches as the folder)."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from jaxtl.data import load_image_folder, open_source, pack_image_folder
from jaxtl.data.sources import (
    PACK_INDEX,
    decode_record,
    encode_record,
    list_arrayrecord,
    list_image_folder,
    read_csv_list,
)


def _img(path, value: int = 0, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    arr[0, 0] = (value * 7) % 256  # not a flat image: a JPEG still decodes deterministically
    Image.fromarray(arr).save(path)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    _img(root / "zebra" / "b.png", 1)
    _img(root / "zebra" / "A.JPG", 2)
    _img(root / "zebra" / "sub" / "c.jpeg", 3)
    _img(root / "zebra" / "sub b" / "d.bmp", 4)
    _img(root / "ant" / "x.webp", 5)
    _img(root / "ant" / "y.tif", 6)
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "ant" / "pic.gif").write_bytes(b"GIF89a")  # not a torchvision extension: ignored
    return root


def test_folder_listing_is_torchvisions_image_folder(tree):
    datasets = pytest.importorskip("torchvision.datasets")
    ref = datasets.ImageFolder(str(tree))
    ours = list_image_folder(tree)
    assert list(ours.class_names) == ref.classes
    assert list(zip(list(ours.paths), ours.labels.tolist())) == [(p, t) for p, t in ref.samples]


def test_hidden_files_and_folders_are_skipped(tree):
    _img(tree / "ant" / "._x.jpg", 0)
    _img(tree / ".ipynb_checkpoints" / "z.png", 0)
    _img(tree / "ant" / ".cache" / "q.png", 0)
    ours = list_image_folder(tree)
    assert ours.class_names == ("ant", "zebra")
    assert not any("/." in p for p in ours.paths)


def test_symlink_loops_list_each_file_once_with_its_own_label(tree):
    (tree / "ant" / "loop").symlink_to(tree / "ant", target_is_directory=True)  # a loop inside a class
    (tree / "ant" / "root").symlink_to(tree, target_is_directory=True)  # back to the root: other classes
    (tree / "zebra" / "sub" / "up").symlink_to(tree / "zebra", target_is_directory=True)
    (tree / "zebra" / "ants").symlink_to(tree / "ant", target_is_directory=True)  # another class folder
    ours = list_image_folder(tree)
    names = sorted(os.path.basename(p) for p in ours.paths)
    assert names == ["A.JPG", "b.png", "c.jpeg", "d.bmp", "x.webp", "y.tif"]
    label = {os.path.basename(p): int(t) for p, t in zip(ours.paths, ours.labels)}
    assert label == {"x.webp": 0, "y.tif": 0, "A.JPG": 1, "b.png": 1, "c.jpeg": 1, "d.bmp": 1}
    ds = load_image_folder(tree, size=8, resize=8)  # the in-memory loader lists by the same rules
    np.testing.assert_array_equal(ds.labels, ours.labels)


def test_symlinked_class_folder_and_files_outside_the_root_are_followed(tree, tmp_path):
    _img(tmp_path / "elsewhere" / "e1.png", 9)
    (tree / "cow").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tree / "ant" / "link.png").symlink_to(tmp_path / "elsewhere" / "e1.png")
    (tree / "ant" / "dangling.png").symlink_to(tmp_path / "missing.png")
    ours = list_image_folder(tree)
    assert ours.class_names == ("ant", "cow", "zebra")
    by_name = {os.path.basename(p): int(t) for p, t in zip(ours.paths, ours.labels)}
    assert by_name["e1.png"] == 1 and by_name["link.png"] == 0 and "dangling.png" not in by_name


def test_fifo_named_like_an_image_is_skipped_without_blocking(tree):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tree / "ant" / "x.png")
    result: dict[str, object] = {}

    def run():
        result["listing"] = list_image_folder(tree)
        result["dataset"] = load_image_folder(tree, size=8, resize=8)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=60)
    if t.is_alive():  # unblock the reader so the test process can exit, then fail
        with open(tree / "ant" / "x.png", "wb"):
            pass
        pytest.fail("listing or loading blocked on a FIFO")
    assert not any(p.endswith("x.png") for p in result["listing"].paths)  # type: ignore[attr-defined]
    assert len(result["dataset"]) == 6  # type: ignore[arg-type]


def test_empty_class_folder_is_an_error_naming_it(tree):
    (tree / "empty_cls").mkdir()
    (tree / "empty_cls" / "readme.txt").write_text("x")
    for load in (
        list_image_folder,
        lambda r: load_image_folder(r, size=8),
        lambda r: open_source(f"folder:{r}", image_size=8),
    ):
        with pytest.raises(ValueError, match=r"class folder .*empty_cls.* has no image files"):
            load(tree)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"nope.*does not exist"):
        list_image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    _img(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match=r"flat.*no class subfolders"):
        list_image_folder(tmp_path / "flat")
    with pytest.raises(ValueError, match="not a directory"):
        list_image_folder(tmp_path / "flat" / "a.png")


def test_class_names_fix_the_label_order(tree):
    ours = list_image_folder(tree, class_names=["zebra", "yak", "ant"])
    assert ours.class_names == ("zebra", "yak", "ant")
    assert sorted(set(ours.labels.tolist())) == [0, 2]
    with pytest.raises(ValueError, match=r"\['zebra'\].*not in class_names"):
        list_image_folder(tree, class_names=["ant"])


def test_csv_list_paths_labels_and_errors(tmp_path):
    _img(tmp_path / "d" / "a.png", 1)
    _img(tmp_path / "d" / "b.png", 2)
    _img(tmp_path / "c.png", 3)
    (tmp_path / "ints.csv").write_text("path,label\nd/a.png,2\nd/b.png,0\n\n" + f"{tmp_path / 'c.png'},2\n")
    ints = read_csv_list(tmp_path / "ints.csv")
    assert list(ints.paths) == [str(tmp_path / "d" / "a.png"), str(tmp_path / "d" / "b.png"), str(tmp_path / "c.png")]
    assert ints.labels.tolist() == [2, 0, 2] and ints.class_names == ("0", "1", "2")
    (tmp_path / "names.csv").write_text("d/a.png,dog\nd/b.png,cat\nc.png,dog\n")
    names = read_csv_list(tmp_path / "names.csv")
    assert names.class_names == ("cat", "dog") and names.labels.tolist() == [1, 0, 1]

    for text, match in [
        ("path,label\nd/a.png,0\nd/missing.png,1\n", r"line 3: .*missing\.png.* does not exist"),
        ("d/a.png,0,extra\n", "line 1: expected 2 fields"),
        ("d/a.png,-1\n", "line 1: label -1 is negative"),
        ("d,0\n", "line 1: .* is not a regular file"),
        ("path,label\n", "lists no images"),
        ("d/a.png,\n", "line 1: empty path or label"),
    ]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(ValueError, match=r"bad\.csv.*" + match if "line" in match else match):
            read_csv_list(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"nope\.csv"):
        read_csv_list(tmp_path / "nope.csv")


def test_records_round_trip_and_reject_foreign_bytes():
    rec = encode_record(b"\xff\xd8jpeg", 7, "cls/ü.jpg")
    assert decode_record(rec) == (b"\xff\xd8jpeg", 7, "cls/ü.jpg")
    for bad in [b"", b"JXT1", b"XXXX" + rec[4:], rec[:18]]:  # empty, short, foreign magic, name cut off
        with pytest.raises(ValueError):
            decode_record(bad)


def test_pack_then_stream_gives_the_folders_batches(tree, tmp_path):
    out = tmp_path / "pack"
    result = pack_image_folder(tree, out, num_shards=3)
    assert result.num_records == 6 and len(result.shards) == 3 and result.class_names == ("ant", "zebra")
    listing = list_arrayrecord(out)
    np.testing.assert_array_equal(listing.labels, list_image_folder(tree).labels)
    kwargs = {"image_size": 8, "augment": "rrc", "workers": 0}
    folder = open_source(f"folder:{tree}", **kwargs)
    packed = open_source(f"arrayrecord:{out}", **kwargs)
    assert packed.class_names == folder.class_names and len(packed) == len(folder)
    for train, drop in [(True, True), (False, False)]:
        a = list(folder.batches(4, seed=3, epoch=1, train=train, drop_remainder=drop))
        b = list(packed.batches(4, seed=3, epoch=1, train=train, drop_remainder=drop))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
    # A glob of some shards: those shards' records and labels only.
    part = list_arrayrecord(str(out / "data-0000[02]-*.array_record"))
    assert len(part.files) == 2 and len(part.labels) == 4


def test_pack_refuses_foreign_output_and_overwrites_only_its_own(tree, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="not a jaxtl pack"):
        pack_image_folder(tree, foreign)
    out = tmp_path / "pack"
    pack_image_folder(tree, out, num_shards=2)
    (out / "notes.txt").write_text("also the user's")
    with pytest.raises(ValueError, match="already holds a pack"):
        pack_image_folder(tree, out)
    pack_image_folder(tree, out, num_shards=1, overwrite=True)
    assert sorted(os.listdir(out)) == sorted(
        [PACK_INDEX, "data-00000-of-00001.array_record", "labels.npy", "notes.txt"]
    )


def test_arrayrecord_errors_name_the_pattern(tree, tmp_path):
    with pytest.raises(ValueError, match="matches no files"):
        list_arrayrecord(str(tmp_path / "none-*.array_record"))
    out = tmp_path / "pack"
    pack_image_folder(tree, out, num_shards=2)
    index = json.loads((out / PACK_INDEX).read_text())
    index["shards"][0]["num_records"] += 1
    index["shards"][1]["first"] += 1
    (out / PACK_INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"points past|hold .* records"):
        list_arrayrecord(out)
    os.remove(out / PACK_INDEX)
    with pytest.raises(ValueError, match=f"no {PACK_INDEX}"):
        list_arrayrecord(out)
    with pytest.raises(ValueError, match=r"data spec 'arrayrecord:.*pack'.*no jaxtl_pack\.json"):
        open_source(f"arrayrecord:{out}", image_size=8)


def test_class_names_map_csv_and_pack_labels_by_name(tree, tmp_path):
    (tmp_path / "n.csv").write_text(f"{tree / 'ant' / 'x.webp'},ant\n{tree / 'zebra' / 'b.png'},zebra\n")
    src = open_source(f"csv:{tmp_path / 'n.csv'}", image_size=8, class_names=["zebra", "yak", "ant"], workers=0)
    assert src.class_names == ("zebra", "yak", "ant") and src.labels.tolist() == [2, 0]
    (tmp_path / "i.csv").write_text(f"{tree / 'ant' / 'x.webp'},1\n")  # integers index the given names directly
    src = open_source(f"csv:{tmp_path / 'i.csv'}", image_size=8, class_names=["zebra", "yak", "ant"], workers=0)
    assert src.labels.tolist() == [1] and src.num_classes == 3
    pack_image_folder(tree, tmp_path / "pack")
    src = open_source(f"arrayrecord:{tmp_path / 'pack'}", image_size=8, class_names=["zebra", "ant"], workers=0)
    np.testing.assert_array_equal(src.labels, 1 - list_image_folder(tree).labels)
    with pytest.raises(ValueError, match=r"class\(es\) \['ant'\] are not among"):
        open_source(f"arrayrecord:{tmp_path / 'pack'}", image_size=8, class_names=["zebra"])
    unl = open_source(f"folder:{tree}", image_size=8, labeled=False, workers=0)
    assert unl.labels is None and "labels" not in next(iter(unl.batches(2)))


def test_cli_pack_writes_a_pack_and_refuses_to_clobber(tree, tmp_path, capsys):
    from jaxtl.cli import main

    out = tmp_path / "packed"
    assert main(["pack", str(tree), str(out), "--num-shards", "2"]) == 0
    assert f"packed 6 images of 2 classes from {tree}" in capsys.readouterr().out
    assert len(list_arrayrecord(out).files) == 2
    assert main(["pack", str(tree), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxtl: error:") and "already holds a pack" in err and "\n" not in err
    assert main(["pack", str(tree), str(out), "--overwrite"]) == 0


def test_digest_identifies_the_listing_without_reading_images(tmp_path):
    # Part of a run's fingerprint: other files with the same labels, a split, or a pack differ; the same listing
    # (even after its files were rewritten in place) does not.
    for root in ("a", "b"):
        for c in ("x", "y"):
            for i in range(3):
                _img(tmp_path / root / c / f"{root}{i}.png", value=i)
    a = open_source(f"folder:{tmp_path / 'a'}", image_size=8, workers=0)
    b = open_source(f"folder:{tmp_path / 'b'}", image_size=8, workers=0)
    assert a.labels.tolist() == b.labels.tolist() and a.digest() != b.digest()
    assert a.digest() == open_source(f"folder:{tmp_path / 'a'}", image_size=8, workers=0).digest()
    assert a.subset(np.arange(3)).digest() != a.subset(np.arange(3, 6)).digest()
    pack_image_folder(tmp_path / "a", tmp_path / "pa")
    assert open_source(f"arrayrecord:{tmp_path / 'pa'}", image_size=8, workers=0).digest() != a.digest()
