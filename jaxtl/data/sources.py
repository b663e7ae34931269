"""Where images come from: an image folder (torchvision ``ImageFolder`` rules), a list of ``(path, label)`` (a CSV),
or ArrayRecord files written by :func:`jaxtl.data.pack.pack_image_folder`.

Each becomes an :class:`ImageList` or :class:`ArrayRecordList`: labels ``[N]`` and class names known up front (no
pixel is decoded to list a dataset), plus a picklable *reader* that the data workers use to fetch one example's
encoded bytes by index. Listing problems (a missing folder, an empty class, a bad CSV row, an index that does not
match its shards) are ValueErrors naming the path, raised before any training starts.

Folder listing rules (those of torchvision's ``ImageFolder``, plus the ones it lacks):

- classes are the sorted names of ``root``'s sub-folders; files are those ending in :data:`IMG_EXTENSIONS`
  (case-insensitive), in torchvision's order: directories sorted by path, file names sorted within each;
- symlinks are followed, but every real directory (device, inode) is visited once: a loop or a second link to a
  folder lists its files once, and a link back to the root or to another class folder is not entered (its files
  keep their own class);
- only regular files are listed: FIFOs, sockets and devices named like images are skipped (they would block);
- names starting with ``.`` (hidden files and folders, e.g. macOS ``._x.jpg`` or ``.ipynb_checkpoints``) are
  skipped, where torchvision would list them;
- a class folder without image files is an error naming it (as in torchvision), and so is a root without classes.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import stat
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "IMG_EXTENSIONS",
    "PACK_INDEX",
    "ArrayRecordList",
    "ArrayRecordReader",
    "FileReader",
    "ImageList",
    "PathTable",
    "decode_record",
    "encode_record",
    "image_list",
    "list_arrayrecord",
    "list_image_folder",
    "read_csv_list",
]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``: the file endings an image folder lists (compared lower-case)."""

PACK_INDEX = "jaxtl_pack.json"
"""The index a pack directory holds beside its ``.array_record`` shards: class names, shards, record counts."""

_RECORD_MAGIC = b"JXT1"
_RECORD_HEAD = struct.Struct("<4sqI")  # magic, label, length of the utf-8 name


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
    """Image files and their labels: ``paths`` (N), ``labels`` int32 ``[N]`` in ``[0, len(class_names))``."""

    paths: PathTable
    labels: np.ndarray
    class_names: tuple[str, ...]
    origin: str  # what was listed (a folder, a CSV file), for messages

    def reader(self) -> FileReader:
        return FileReader(self.paths)


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
            raise ValueError(f"folder {d!r} could not be listed: {e.strerror or e}") from e
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


def list_image_folder(root: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> ImageList:
    """The images of ``root/<class>/**`` and their labels, by torchvision ``ImageFolder``'s rules (module doc).

    Labels follow the sorted sub-folder names, or ``class_names`` when given (then every sub-folder must be one of
    them; classes without a folder are allowed). Raises ValueError naming the folder for a missing root, a root
    without class folders, or a class folder without image files.
    """
    root_s = os.fspath(root)
    if not os.path.exists(root_s):
        raise ValueError(f"image folder {root_s!r} does not exist")
    if not os.path.isdir(root_s):
        raise ValueError(f"image folder {root_s!r} is not a directory")
    try:
        with os.scandir(root_s) as it:
            folders = sorted(e.name for e in it if not e.name.startswith(".") and _is_dir(e))
    except OSError as e:
        raise ValueError(f"image folder {root_s!r} could not be listed: {e.strerror or e}") from e
    if not folders:
        raise ValueError(f"image folder {root_s!r} has no class subfolders (expected root/<class>/<image>)")
    if class_names is None:
        names = list(folders)
    else:
        names = list(class_names)
        if len(set(names)) != len(names):
            raise ValueError(f"class_names has duplicates: {names}")
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise ValueError(f"folder(s) {unknown} in {root_s!r} are not in class_names {names}")
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
        if count == 0:
            raise ValueError(
                f"class folder {class_dir!r} has no image files (extensions {', '.join(IMG_EXTENSIONS)}); "
                "remove it or add images"
            )
        labels.extend([label_of[folder]] * count)
    return ImageList(PathTable(paths), np.asarray(labels, np.int32), tuple(names), f"image folder {root_s!r}")


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
                raise ValueError(f"{w}: label {value} is negative")
            if value >= 2**31:
                raise ValueError(f"{w}: label {value} does not fit int32")
        k = max(ints) + 1
        return np.asarray(ints, np.int32), tuple(str(i) for i in range(k))
    names = sorted({str(v) for v in raw})
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[str(v)] for v in raw], np.int32), tuple(names)


def image_list(
    items: Sequence[tuple[str | os.PathLike[str], int | str]],
    *,
    root: str | os.PathLike[str] | None = None,
    origin: str = "image list",
    where: Sequence[str] | None = None,
) -> ImageList:
    """An :class:`ImageList` from ``(path, label)`` pairs; relative paths are taken from ``root`` (default cwd).

    Labels are all integers ``>= 0`` (``num_classes = max + 1``, names ``"0"..``) or all class names (sorted, as
    folders are). Every path must be an existing regular file: ValueError naming it (and its ``where`` entry,
    e.g. a CSV line) otherwise.
    """
    if not items:
        raise ValueError(f"{origin} is empty")
    where = list(where) if where is not None else [f"{origin}, item {i}" for i in range(len(items))]
    paths = []
    for (p, _), w in zip(items, where):
        full = os.path.join(os.fspath(root), os.fspath(p)) if root is not None else os.fspath(p)
        try:
            mode = os.stat(full).st_mode
        except OSError as e:
            raise ValueError(f"{w}: {full!r} does not exist or cannot be read ({e.strerror or e})") from e
        if not stat.S_ISREG(mode):
            raise ValueError(f"{w}: {full!r} is not a regular file")
        paths.append(full)
    labels, names = _labels_from([label for _, label in items], where)
    return ImageList(PathTable(paths), labels, names, origin)


def read_csv_list(path: str | os.PathLike[str]) -> ImageList:
    """An :class:`ImageList` from a CSV of ``path,label`` rows (an optional ``path,label`` header line).

    Relative paths are relative to the CSV file's folder. Labels as in :func:`image_list`. Errors name the file
    and line.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"csv file {p!r} does not exist or is not a file")
    items: list[tuple[str, str]] = []
    where: list[str] = []
    try:
        with open(p, newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise ValueError(f"csv file {p!r}, line {lineno}: expected 2 fields (path,label), got {len(row)}")
                a, b = row[0].strip(), row[1].strip()
                if not items and not where and (a.lower(), b.lower()) == ("path", "label"):
                    continue  # the header
                if not a or not b:
                    raise ValueError(f"csv file {p!r}, line {lineno}: empty path or label")
                items.append((a, b))
                where.append(f"csv file {p!r}, line {lineno}")
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"csv file {p!r} could not be read as utf-8 CSV: {e}") from e
    if not items:
        raise ValueError(f"csv file {p!r} lists no images (expected path,label rows)")
    root = os.path.dirname(os.path.abspath(p))
    return image_list(items, root=root, origin=f"csv file {p!r}", where=where)  # type: ignore[arg-type]


class FileReader:
    """Reads example ``i``'s encoded bytes from its file; picklable (the paths travel as a :class:`PathTable`)."""

    def __init__(self, paths: PathTable) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
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


# ---- ArrayRecord ---------------------------------------------------------------------------------------------------


def encode_record(image: bytes, label: int, name: str) -> bytes:
    """One ArrayRecord record: a 16-byte header (magic, int64 label, name length), the utf-8 name, the image
    file's bytes unchanged (JPEG stays JPEG: decoding and transforms are the folder source's)."""
    raw = name.encode("utf-8")
    return _RECORD_HEAD.pack(_RECORD_MAGIC, label, len(raw)) + raw + image


def decode_record(record: bytes) -> tuple[bytes, int, str]:
    """``(image bytes, label, name)`` of a record written by :func:`encode_record`; ValueError if it is not one."""
    if len(record) < _RECORD_HEAD.size:
        raise ValueError(f"record of {len(record)} bytes is too short for a jaxtl record")
    magic, label, n = _RECORD_HEAD.unpack_from(record)
    if magic != _RECORD_MAGIC or _RECORD_HEAD.size + n > len(record):
        raise ValueError("not a jaxtl image record (bad magic or name length)")
    start = _RECORD_HEAD.size
    return record[start + n :], int(label), record[start : start + n].decode("utf-8", "replace")


class ArrayRecordReader:
    """Reads example ``i`` from ArrayRecord shards (grain's ``ArrayRecordDataSource``, opened lazily per process)."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = tuple(files)
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "_source": None}  # each worker opens its own readers

    def _open(self) -> Any:
        if self._source is None:
            import grain.python as gp

            self._source = gp.ArrayRecordDataSource(list(self.files))
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def name(self, i: int) -> str:
        try:
            return f"record {i} ({decode_record(self._open()[i])[2]})"
        except Exception:
            return f"record {i} of {', '.join(self.files)}"

    def read(self, i: int) -> bytes:
        return decode_record(self._open()[i])[0]


@dataclasses.dataclass(frozen=True)
class ArrayRecordList:
    """ArrayRecord shards (in order) with their labels ``[N]`` and class names, from a pack index."""

    files: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    origin: str

    def reader(self) -> ArrayRecordReader:
        return ArrayRecordReader(self.files)


def _read_pack_index(directory: str) -> dict[str, Any]:
    index_path = os.path.join(directory, PACK_INDEX)
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f"{directory!r} has no {PACK_INDEX}; ArrayRecord data must be written by 'jaxtl pack' "
            "(it stores class names and labels beside the shards)"
        ) from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{index_path!r} could not be read: {e}") from e
    if not isinstance(index, dict) or index.get("format") != "jaxtl-arrayrecord" or index.get("version") != 1:
        raise ValueError(f"{index_path!r} is not a jaxtl pack index (format jaxtl-arrayrecord, version 1)")
    try:
        shards = [(str(s["file"]), int(s["num_records"]), int(s["first"])) for s in index["shards"]]
        names = tuple(str(n) for n in index["class_names"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{index_path!r}: malformed shard list or class names ({e})") from e
    index["_shards"] = shards
    index["_names"] = names
    return index


def list_arrayrecord(pattern: str | os.PathLike[str]) -> ArrayRecordList:
    """The shards a pack directory (or a glob of its ``.array_record`` files) holds, with labels and class names.

    ``pattern`` is a directory written by :func:`jaxtl.data.pack.pack_image_folder` (all its shards), or a glob of
    shard files in one such directory (a subset, in sorted order). Raises ValueError naming the pattern when
    nothing matches, the index is missing or malformed, or a shard is not in the index or has another length.
    """
    pat = os.fspath(pattern)
    if os.path.isdir(pat):
        directory = pat
        index = _read_pack_index(directory)
        chosen = [s[0] for s in index["_shards"]]
    else:
        matches = sorted(glob.glob(pat))
        if not matches:
            raise ValueError(f"ArrayRecord pattern {pat!r} matches no files")
        dirs = {os.path.dirname(os.path.abspath(m)) for m in matches}
        if len(dirs) != 1:
            raise ValueError(f"ArrayRecord pattern {pat!r} matches files in {len(dirs)} folders; use one pack folder")
        directory = dirs.pop()
        index = _read_pack_index(directory)
        chosen = [os.path.basename(m) for m in matches]
    by_file = {f: (n, first) for f, n, first in index["_shards"]}
    labels_path = os.path.join(directory, str(index.get("labels_file", "labels.npy")))
    try:
        all_labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"labels of pack {directory!r} ({labels_path!r}) could not be read: {e}") from e
    files, parts = [], []
    for f in chosen:
        if f not in by_file:
            raise ValueError(f"{os.path.join(directory, f)!r} is not a shard listed in {PACK_INDEX}")
        n, first = by_file[f]
        if first < 0 or first + n > len(all_labels):
            raise ValueError(f"{PACK_INDEX} in {directory!r}: shard {f!r} points past the {len(all_labels)} labels")
        path = os.path.join(directory, f)
        if not os.path.isfile(path):
            raise ValueError(f"shard {path!r} listed in {PACK_INDEX} does not exist")
        files.append(path)
        parts.append(all_labels[first : first + n])
    labels = np.concatenate(parts).astype(np.int64)
    names = index["_names"]
    if len(labels) == 0:
        raise ValueError(f"ArrayRecord pattern {pat!r} selects no records")
    if labels.min() < 0 or labels.max() >= len(names):
        raise ValueError(f"labels of pack {directory!r} lie outside [0, {len(names)})")
    reader = ArrayRecordReader(files)
    try:
        count = len(reader)
    except Exception as e:  # array_record raises its own error types for a damaged file
        raise ValueError(f"ArrayRecord shards {files} could not be opened: {e}") from e
    if count != len(labels):
        raise ValueError(f"ArrayRecord shards {files} hold {count} records, {PACK_INDEX} lists {len(labels)}")
    return ArrayRecordList(tuple(files), labels.astype(np.int32), names, f"ArrayRecord data {pat!r}")


class _Subset:
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
