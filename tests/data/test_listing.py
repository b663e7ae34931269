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
from jaxtl.data.listing import (
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
    with pytest.raises(ValueError, match=r"flat.*no class sub-folders.*needs .*flat/<class>/<image>"):
        list_image_folder(tmp_path / "flat")
    with pytest.raises(ValueError, match="not a directory"):
        list_image_folder(tmp_path / "flat" / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    for labeled in (True, False):
        with pytest.raises(ValueError, match=r"empty.*no images and no class sub-folders"):
            list_image_folder(tmp_path / "empty", labeled=labeled)


def test_flat_folder_is_unlabeled_data_for_pretraining(tmp_path):
    flat = tmp_path / "flat"
    for i, name in enumerate(["b.png", "a.JPG", "c.webp"]):
        _img(flat / name, i)
    (flat / "notes.txt").write_text("not an image")
    _img(flat / ".hidden.png")
    listing = list_image_folder(flat, labeled=False)
    assert not listing.labeled and listing.optional_labels is None and listing.class_names == ()
    assert list(listing.names) == ["a.JPG", "b.png", "c.webp"]
    assert list(listing.paths) == [str(flat / n) for n in ["a.JPG", "b.png", "c.webp"]]
    src = open_source(f"folder:{flat}", image_size=8, workers=0, labeled=False)
    assert len(src) == 3 and src.labels is None and src.num_classes == 0
    (batch,) = list(src.batches(3, shuffle=False))
    assert set(batch) == {"images"} and batch["images"].shape == (3, 8, 8, 3)
    assert src.subset(np.arange(2)).labels is None and src.with_options(image_size=6).labels is None
    # Fine-tuning asks for labels: the message says what layout it needs (through the data spec too).
    with pytest.raises(ValueError, match=r"data spec 'folder:.*flat'.*no class sub-folders.*<class>/<image>"):
        open_source(f"folder:{flat}", image_size=8)


def test_class_folders_serve_pretraining_too_and_mixed_roots_are_refused(tree):
    src = open_source(f"folder:{tree}", image_size=8, workers=0, labeled=False)
    assert len(src) == 6 and src.labels is None
    (tree / "empty_cls").mkdir()  # an empty class matters only to labeled data
    assert len(list_image_folder(tree, labeled=False).paths) == 6
    _img(tree / "stray.png")
    for labeled in (True, False):
        with pytest.raises(
            ValueError, match=r"both image files \(stray\.png\) and sub-folders \(ant, empty_cls, zebra\)"
        ):
            list_image_folder(tree, labeled=labeled)


def test_file_lists_without_labels(tmp_path):
    _img(tmp_path / "d" / "a.png", 1)
    _img(tmp_path / "d" / "b,c.png", 2)  # a comma in the name: quoted in the CSV, verbatim in the .txt
    (tmp_path / "list.txt").write_text("d/a.png\n\n  d/b,c.png  \n")
    (tmp_path / "list.csv").write_text('path\nd/a.png\n"d/b,c.png"\n')
    for name in ("list.txt", "list.csv"):
        listing = read_csv_list(tmp_path / name, labeled=False)
        assert not listing.labeled and list(listing.names) == ["d/a.png", "d/b,c.png"]
        assert list(listing.paths) == [str(tmp_path / "d" / "a.png"), str(tmp_path / "d" / "b,c.png")]
        src = open_source(f"csv:{tmp_path / name}", image_size=8, workers=0, labeled=False)
        assert src.labels is None and len(list(src.batches(2))) == 1
        with pytest.raises(ValueError, match=rf"{name}.*paths without labels.*path,label rows"):
            open_source(f"csv:{tmp_path / name}", image_size=8)
    (tmp_path / "labeled.csv").write_text("d/a.png,0\n./d/a.png,1\n")
    both = read_csv_list(tmp_path / "labeled.csv", labeled=False)  # labels kept; the source drops them
    assert both.labels.tolist() == [0, 1] and list(both.names) == ["d/a.png", "d/a.png"]
    (tmp_path / "mixed.csv").write_text("d/a.png\nd/a.png,1\n")
    with pytest.raises(ValueError, match=r"mixed\.csv.*line 2: expected 1 field\(s\) as the rows above, got 2"):
        read_csv_list(tmp_path / "mixed.csv", labeled=False)


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
    # jaxtl.outputs decides what a pack may replace: exactly a pack it recorded writing, with overwrite.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(OSError, match="already exists"):
        pack_image_folder(tree, foreign)
    with pytest.raises(OSError, match="not exactly what jaxtl wrote"):
        pack_image_folder(tree, foreign, overwrite=True)
    assert os.listdir(foreign) == ["keep.txt"]
    out = tmp_path / "pack"
    pack_image_folder(tree, out, num_shards=2)
    with pytest.raises(OSError, match="already exists"):
        pack_image_folder(tree, out)
    pack_image_folder(tree, out, num_shards=1, overwrite=True)
    assert len(list_arrayrecord(out).files) == 1
    (out / "notes.txt").write_text("the user's")  # no longer exactly the pack: never replaced
    with pytest.raises(OSError, match="not exactly what jaxtl wrote"):
        pack_image_folder(tree, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "the user's"


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
    assert err.startswith("jaxtl: error:") and "already exists" in err and "--overwrite" in err and "\n" not in err
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


def test_a_bare_path_gets_the_spec_it_would_be(tree, tmp_path, monkeypatch):
    from jaxtl.data import DATA_SPECS

    monkeypatch.chdir(tree.parent)
    (tmp_path / "list.csv").write_text("x.png,0\n")
    np.savez(tmp_path / "d.npz", images=np.zeros((1, 2, 2, 3), np.uint8))
    pack_image_folder(tree, tmp_path / "packed")
    (tmp_path / "photo.jpg").write_bytes(b"")
    for given, suggestion in [
        ("imgs", "it is a folder: write folder:imgs"),
        ("imgs/", "it is a folder: write folder:imgs/"),
        (str(tmp_path / "list.csv"), f"it is a file list: write csv:{tmp_path / 'list.csv'}"),
        (str(tmp_path / "d.npz"), f"it is an npz file: write npz:{tmp_path / 'd.npz'}"),
        (str(tmp_path / "packed"), f"it is a pack: write arrayrecord:{tmp_path / 'packed'}"),
        (str(tmp_path / "packed" / "*.array_record"), "it is a pack: write arrayrecord:"),
        (str(tmp_path / "photo.jpg"), "it is a file, and data is a folder of images (folder:DIR)"),
        ("no_such_thing", "expected digits | folder:DIR"),
    ]:
        with pytest.raises(ValueError, match=r"is not a data spec") as e:
            open_source(given, image_size=8)
        assert suggestion in str(e.value) and DATA_SPECS in str(e.value) and "\n" not in str(e.value), given
