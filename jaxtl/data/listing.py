"""Where images come from: an image folder (torchvision ``ImageFolder`` rules, or a flat folder of unlabeled
images), a file list (a CSV of ``path,label`` or ``path`` rows, a ``.txt`` of paths), or ArrayRecord files written
by :func:`jaxtl.data.pack.pack_image_folder`.

Each becomes an :class:`ImageList` or :class:`ArrayRecordList`: labels ``[N]`` (None for unlabeled lists) and class
names known up front (no pixel is decoded to list a dataset), plus a picklable *reader* that the data workers use
to fetch one example's encoded bytes by index. Listing problems (a missing folder, an empty class, a bad CSV row,
an index that does not match its shards) raise :class:`~jaxtl.errors.DataError` (a ValueError) naming the
path, before any training starts.

A folder's layout is read from its top level: sub-folders and no image files are **class folders**
(``DIR/<class>/**/<image>``, labeled); image files and no sub-folders are a **flat** folder (``DIR/<image>``,
unlabeled: pretraining only, a labeled request is an error saying fine-tuning needs class folders); both at once
is an error naming both. Files of a flat folder are those directly in it.

Class folder listing rules (those of torchvision's ``ImageFolder``, plus the ones it lacks):

- classes are the sorted names of ``root``'s sub-folders; files are those ending in :data:`IMG_EXTENSIONS`
  (case-insensitive), in torchvision's order: directories sorted by path, file names sorted within each;
- symlinks are followed, but every real directory (device, inode) is visited once: a loop or a second link to a
  folder lists its files once, and a link back to the root or to another class folder is not entered (its files
  keep their own class);
- only regular files are listed: FIFOs, sockets and devices named like images are skipped (they would block);
- names starting with ``.`` (hidden files and folders, e.g. macOS ``._x.jpg`` or ``.ipynb_checkpoints``) are
  skipped, where torchvision would list them;
- a class folder without image files is an error naming it (as in torchvision; unlabeled listings allow it).

Every listed file also gets a *name*: its path relative to the folder (``cat/sub/x.jpg``), or for a file list the
path as the list writes it (normalised). Names, not the spelling of the root, identify examples
(:mod:`jaxtl.data.identity`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxtl.data.arrayrecord import (  # the ArrayRecord half of the listings, importable from here as before
    PACK_INDEX,
    ArrayRecordList,
    ArrayRecordReader,
    decode_record,
    encode_record,
    list_arrayrecord,
)
from jaxtl.errors import DataError

__all__ = [
    "IMG_EXTENSIONS",
    "PACK_INDEX",
    "ArrayRecordList",
    "ArrayRecordReader",
    "FileReader",
    "ImageList",
    "PathTable",
    "SubsetReader",
    "decode_record",
    "encode_record",
    "image_list",
    "list_arrayrecord",
    "list_image_folder",
    "read_csv_list",
]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``: the file endings an image folder lists (compared lower-case)."""


class PathTable:
    """An immutable list of ``N`` path strings kept as one utf-8 byte blob plus offsets ``[N + 1]``.

    Cheap to hold and to pickle into worker processes (two numpy arrays, no per-string Python objects).
    """

    def __init__(self, paths: Iterable[str]) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), np.uint8).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        lo, hi = self._offsets[i], self._offsets[i + 1]
        return os.fsdecode(self._blob[lo:hi].tobytes())

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))


@dataclasses.dataclass(frozen=True)
class ImageList:
    """Image files and their labels: ``paths`` (N), ``optional_labels`` int32 ``[N]`` in
    ``[0, len(class_names))`` or None (an unlabeled list), ``names`` (N) the root-relative names that identify the
    files (default: the paths)."""

    paths: PathTable
    optional_labels: np.ndarray | None
    class_names: tuple[str, ...]
    origin: str  # what was listed (a folder, a CSV file), for messages
    names: PathTable | None = None

    @property
    def labeled(self) -> bool:
        return self.optional_labels is not None

    @property
    def labels(self) -> np.ndarray:
        """The labels ``[N]``; ValueError for an unlabeled list (see :attr:`labeled`)."""
        if self.optional_labels is None:
            raise DataError(f"{self.origin} has no labels")
        return self.optional_labels

    def reader(self) -> FileReader:
        return FileReader(self.paths, self.names)


def _scan(top: str, visited: set[tuple[int, int]]) -> list[tuple[str, list[str]]]:
    """``(dirpath, sorted image file names)`` of every directory under ``top``, each real directory once."""
    out: list[tuple[str, list[str]]] = []
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as e:
            raise DataError(f"folder {d!r} could not be listed: {e.strerror or e}") from e
        files = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():  # follows symlinks
                    st = entry.stat()
                    key = (st.st_dev, st.st_ino)
                    if key not in visited:
                        visited.add(key)
                        stack.append(entry.path)
                # is_file() is true for regular files only: FIFOs, sockets, devices are skipped here.
                elif entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS):
                    files.append(entry.name)
            except OSError:  # a dangling symlink, a permission problem: not a readable image file
                continue
        out.append((d, sorted(files)))
    out.sort(key=lambda t: t[0])  # torchvision: sorted(os.walk(...)), i.e. by directory path
    return out


def list_image_folder(
    root: str | os.PathLike[str], class_names: Sequence[str] | None = None, *, labeled: bool = True
) -> ImageList:
    """The images of ``root/<class>/**`` and their labels, by torchvision ``ImageFolder``'s rules (module doc); with
    ``labeled=False`` also a flat folder's images (``root/<image>``, labels None).

    Labels follow the sorted sub-folder names, or ``class_names`` when given (then every sub-folder must be one of
    them; classes without a folder are allowed). Raises ValueError naming the folder for a missing root, a root
    with neither images nor class folders, a flat folder asked for labels, a root holding both images and
    folders, or (labeled) a class folder without image files.
    """
    root_s = os.fspath(root)
    if not os.path.exists(root_s):
        raise DataError(f"image folder {root_s!r} does not exist")
    if not os.path.isdir(root_s):
        raise DataError(f"image folder {root_s!r} is not a directory")
    try:
        with os.scandir(root_s) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as e:
        raise DataError(f"image folder {root_s!r} could not be listed: {e.strerror or e}") from e
    folders = sorted(e.name for e in entries if _is_dir(e))
    images = sorted(e.name for e in entries if _is_image_file(e))
    if images and folders:
        raise DataError(
            f"image folder {root_s!r} holds both image files ({_some(images)}) and sub-folders ({_some(folders)}): "
            f"put every image in a class folder, {root_s}/<class>/<image>, for fine-tuning, or every image "
            f"directly in {root_s} for unlabeled pretraining"
        )
    prefix = os.path.join(root_s, "")
    if images:
        if labeled:
            raise DataError(
                f"image folder {root_s!r} holds {len(images)} image(s) but no class sub-folders: labeled data "
                f"(fine-tuning, evaluation) needs {root_s}/<class>/<image>, one sub-folder per class; a flat folder "
                "serves unlabeled pretraining only"
            )
        flat = PathTable(prefix + f for f in images)
        return ImageList(flat, None, (), f"image folder {root_s!r}", PathTable(images))
    if not folders:
        raise DataError(
            f"image folder {root_s!r} has no images and no class sub-folders (expected {root_s}/<class>/<image>, "
            f"or for unlabeled pretraining {root_s}/<image>; extensions {', '.join(IMG_EXTENSIONS)})"
        )
    if class_names is None:
        names = list(folders)
    else:
        names = list(class_names)
        if len(set(names)) != len(names):
            raise DataError(f"class_names has duplicates: {names}")
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise DataError(f"folder(s) {unknown} in {root_s!r} are not in class_names {names}")
    label_of = {n: i for i, n in enumerate(names)}

    # The root and every class folder count as visited up front, so a link back into them is never followed:
    # otherwise class a's link to the root would list class b's images again, labelled a.
    visited = {_dev_ino(root_s)} | {_dev_ino(os.path.join(root_s, f)) for f in folders}
    paths: list[str] = []
    labels: list[int] = []
    for folder in folders:
        class_dir = os.path.join(root_s, folder)
        count = 0
        for dirpath, files in _scan(class_dir, visited):
            paths.extend(os.path.join(dirpath, f) for f in files)
            count += len(files)
        if count == 0 and labeled:
            raise DataError(
                f"class folder {class_dir!r} has no image files (extensions {', '.join(IMG_EXTENSIONS)}); "
                "remove it or add images"
            )
        labels.extend([label_of[folder]] * count)
    if not paths:
        raise DataError(f"image folder {root_s!r}: its class folders hold no image files")
    # Every path is root + os.sep + ...: _scan joins entry names onto the class folder's path.
    rel = PathTable(p[len(prefix) :].replace(os.sep, "/") for p in paths)
    return ImageList(PathTable(paths), np.asarray(labels, np.int32), tuple(names), f"image folder {root_s!r}", rel)


def _some(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _is_image_file(entry: os.DirEntry[str]) -> bool:
    try:  # is_file() follows symlinks and is true for regular files only (no FIFOs, sockets, devices)
        return entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS)
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _dev_ino(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _labels_from(raw: Sequence[str | int], where: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer labels (class names ``"0".."K-1"``) or class-name labels (sorted unique names, as folders)."""
    ints: list[int] = []
    for value in raw:
        try:
            ints.append(int(value))
        except (TypeError, ValueError):
            break
    else:
        for value, w in zip(ints, where):
            if value < 0:
                raise DataError(f"{w}: label {value} is negative")
            if value >= 2**31:
                raise DataError(f"{w}: label {value} does not fit int32")
        k = max(ints) + 1
        return np.asarray(ints, np.int32), tuple(str(i) for i in range(k))
    names = sorted({str(v) for v in raw})
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[str(v)] for v in raw], np.int32), tuple(names)


def image_list(
    items: Sequence[tuple[str | os.PathLike[str], int | str | None]],
    *,
    root: str | os.PathLike[str] | None = None,
    origin: str = "image list",
    where: Sequence[str] | None = None,
) -> ImageList:
    """An :class:`ImageList` from ``(path, label)`` pairs; relative paths are taken from ``root`` (default cwd).

    Labels are all integers ``>= 0`` (``num_classes = max + 1``, names ``"0"..``), all class names (sorted, as
    folders are), or all None (an unlabeled list). Every path must be an existing regular file: ValueError naming
    it (and its ``where`` entry, e.g. a CSV line) otherwise. Each file's name (its identity) is the path as given,
    normalised.
    """
    if not items:
        raise DataError(f"{origin} is empty")
    where = list(where) if where is not None else [f"{origin}, item {i}" for i in range(len(items))]
    paths, names = [], []
    for (p, _), w in zip(items, where):
        given = os.fspath(p)
        full = os.path.join(os.fspath(root), given) if root is not None else given
        try:
            mode = os.stat(full).st_mode
        except OSError as e:
            raise DataError(f"{w}: {full!r} does not exist or cannot be read ({e.strerror or e})") from e
        if not stat.S_ISREG(mode):
            raise DataError(f"{w}: {full!r} is not a regular file")
        paths.append(full)
        names.append(os.path.normpath(given).replace(os.sep, "/"))
    raw = [label for _, label in items]
    if all(label is None for label in raw):
        return ImageList(PathTable(paths), None, (), origin, PathTable(names))
    missing = [w for label, w in zip(raw, where) if label is None]
    if missing:
        raise DataError(f"{missing[0]}: no label, where other items have one")
    labels, class_names = _labels_from(raw, where)  # type: ignore[arg-type]
    return ImageList(PathTable(paths), labels, class_names, origin, PathTable(names))


def read_csv_list(path: str | os.PathLike[str], *, labeled: bool = True) -> ImageList:
    """An :class:`ImageList` from a file list: a CSV of ``path,label`` rows (an optional ``path,label`` header),
    or, unlabeled (``labeled=False``: pretraining), a CSV of ``path`` rows (optional ``path`` header) or a ``.txt``
    file of one path per line (commas are part of the path; surrounding blanks are not).

    Relative paths are relative to the list's folder. Labels as in :func:`image_list`. Errors name the file and
    line; a labeled request on a list without labels says what fine-tuning needs.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError(f"file list {p!r} does not exist or is not a file")
    kind = "txt file" if p.lower().endswith(".txt") else "csv file"
    items: list[tuple[str, str | None]] = []
    where: list[str] = []
    width = 0
    try:
        with open(p, newline="", encoding="utf-8") as f:
            if kind == "txt file":
                rows: Iterable[list[str]] = ([line.rstrip("\r\n")] for line in f)
            else:
                rows = csv.reader(f)
            for lineno, row in enumerate(rows, start=1):
                if not row or all(not c.strip() for c in row):
                    continue
                fields = [c.strip() for c in row]
                if not items and [c.lower() for c in fields] in (["path", "label"], ["path"]):
                    continue  # the header
                if len(fields) not in (1, 2) or (width and len(fields) != width):
                    expected = f"{width} field(s) as the rows above" if width else "2 fields (path,label) or 1 (path)"
                    raise DataError(f"{kind} {p!r}, line {lineno}: expected {expected}, got {len(fields)} fields")
                width = len(fields)
                if not all(fields):
                    raise DataError(f"{kind} {p!r}, line {lineno}: empty path or label")
                items.append((fields[0], fields[1] if width == 2 else None))
                where.append(f"{kind} {p!r}, line {lineno}")
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{kind} {p!r} could not be read as utf-8 {kind[:3].upper()}: {e}") from e
    if not items:
        raise DataError(f"{kind} {p!r} lists no images (expected path,label rows, or path rows for pretraining)")
    if labeled and width == 1:
        raise DataError(
            f"{kind} {p!r} lists paths without labels: labeled data (fine-tuning, evaluation) needs a CSV of "
            "path,label rows; a list of paths serves unlabeled pretraining only"
        )
    root = os.path.dirname(os.path.abspath(p))
    return image_list(items, root=root, origin=f"{kind} {p!r}", where=where)


class FileReader:
    """Reads example ``i``'s encoded bytes from its file; picklable (the paths travel as a :class:`PathTable`).

    ``names`` are the files' root-relative names (their identity, :mod:`jaxtl.data.identity`); default the paths.
    """

    def __init__(self, paths: PathTable, names: PathTable | None = None) -> None:
        if names is not None and len(names) != len(paths):
            raise DataError(f"{len(names)} names for {len(paths)} paths")
        self.paths = paths
        self.names = paths if names is None else names

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        """The file's path, for messages."""
        return self.paths[i]

    def read(self, i: int) -> bytes:
        """The file's bytes; OSError if it is gone, unreadable or no longer a regular file (never blocks on a FIFO)."""
        fd = os.open(self.paths[i], os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{self.paths[i]!r} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)


class SubsetReader:
    """A reader over ``indices`` of another reader (a split of a streaming source)."""

    def __init__(self, base: Any, indices: np.ndarray) -> None:
        self.base = base
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, i: int) -> str:
        return str(self.base.name(int(self.indices[i])))

    def read(self, i: int) -> bytes:
        return bytes(self.base.read(int(self.indices[i])))
