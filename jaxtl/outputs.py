"""Outputs written atomically and known by their record: what every writing route uses to put a file or a folder
in place (a temporary name beside the target, then a rename), and to decide whether an existing path may be
replaced (only when it is exactly what a jaxtl command recorded writing there, SHA-256 by SHA-256).

:func:`write_outputs` serves standalone outputs (``jaxtl convert OUT``, ``jaxtl pack OUT``, ``save_variables``):
every output is prepared under a temporary name first, checked for room and permission before the work, and
committed together (a failure puts back what was there). A folder output carries its record,
``jaxtl-outputs.json``; a file output is listed in the record of a folder written with it. Outputs inside a work
directory are the :class:`~jaxtl.lifecycle.Run`'s, recorded in its ``run.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxtl.errors import ConfigError, OutputError

__all__ = [
    "OUTPUTS_RECORD",
    "Output",
    "file_digests",
    "os_error_message",
    "replace_path",
    "write_atomic",
    "write_outputs",
]

OUTPUTS_RECORD = "jaxtl-outputs.json"


def os_error_message(what: str, e: OSError, where: Path) -> str:
    """``"<what>: <reason> (<free> MiB free on <where>)"``, one line; the free space only for a full disk."""
    text = f"{what}: {e.strerror or e}"
    if getattr(e, "errno", None) == errno.ENOSPC:
        with contextlib.suppress(OSError):
            text += f" ({shutil.disk_usage(where).free / 2**20:.1f} MiB free on {where}); free some space and run again"
    elif getattr(e, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += f"; choose a writable location or fix the permissions of {where}"
    return text


def is_disk_full(e: BaseException) -> bool:
    # tensorstore (Orbax) reports a full disk as its own error type with a long text.
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e) or "ENOSPC" in str(e)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``path`` (a folder), or ``{"": sha256}`` of a file."""
    path = Path(path)
    if path.is_file():
        return {"": _sha256(path)}
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            out[p.relative_to(path).as_posix()] = _sha256(p)
    return dict(sorted(out.items()))


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:8]}"


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (readers see the old or the new file)."""
    path = Path(path)
    tmp = sibling(path, "tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        remove_path(tmp)
        raise


def replace_path(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``; an existing target is moved aside first and put back if the rename fails."""
    if not target.exists():
        tmp.rename(target)
        return
    old = sibling(target, "old")
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    remove_path(old)


@dataclasses.dataclass(frozen=True)
class Output:
    """One path a command writes: ``kind`` ``"dir"`` or ``"file"``; ``what`` names it in messages (``"OUT"``)."""

    path: Path
    kind: str = "dir"
    what: str = "output"


def _recorded_files(folder: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((folder / OUTPUTS_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("files"), dict) else None


def _ours(out: Output, records: Sequence[dict[str, Any]]) -> bool:
    """Whether the existing ``out.path`` is exactly what a jaxtl command wrote there (by its record)."""
    p = out.path
    if p.is_symlink():
        return False
    if out.kind == "dir":
        rec = _recorded_files(p) if p.is_dir() else None
        if rec is None:
            return False
        have = file_digests(p)
        have.pop(OUTPUTS_RECORD, None)
        return have == rec["files"]
    want = {str(Path(k).absolute()): v for r in records for k, v in r.get("companions", {}).items()}
    return p.is_file() and want.get(str(p.absolute())) == _sha256(p)


def write_outputs(
    outputs: Sequence[Output],
    produce: Callable[[Sequence[Path]], None],
    *,
    overwrite: bool = False,
    sources: Sequence[Path] = (),
) -> None:
    """Write every path of ``outputs`` atomically and together: ``produce`` receives one temporary path per output
    (nothing there yet) and writes them. Checked before ``produce`` runs: no output is one of ``sources``, the
    folders are writable, and an existing output is replaced only with ``overwrite`` and only when it is exactly
    what a jaxtl command recorded writing (a folder's ``jaxtl-outputs.json``, or a file listed as a companion in the
    record of a folder among ``outputs``). Folder outputs get their record (files + SHA-256) written last.
    """
    resolved_sources = {s.resolve() for s in sources if s.exists()}
    existing_records = [r for o in outputs if o.kind == "dir" and (r := _recorded_files(o.path)) is not None]
    for out in outputs:
        if out.path.exists() and out.path.resolve() in resolved_sources:
            raise ConfigError(f"{out.what} {out.path} is the input; choose another path", field=out.what)
        empty_dir = (
            out.kind == "dir" and out.path.is_dir() and not out.path.is_symlink() and not any(out.path.iterdir())
        )
        if (out.path.exists() or out.path.is_symlink()) and not empty_dir:
            if not overwrite:
                raise OutputError(
                    f"{out.what} {out.path} already exists; pass overwrite=True (--overwrite) to replace it"
                )
            if not _ours(out, existing_records):
                raise OutputError(
                    f"{out.what} {out.path} is not exactly what jaxtl wrote there (a file or folder of yours, or "
                    "changed since): refusing to replace it; choose a new path"
                )
        parent = out.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(os_error_message(f"cannot create {parent} for {out.what}", e, parent.parent)) from None
    temps = [sibling(o.path, "tmp") for o in outputs]
    committed: list[tuple[Path, Path | None]] = []
    try:
        for t in temps:  # proves each folder writable before the work
            t.touch()
            t.unlink()
        produce(temps)
        companions = {str(o.path.absolute()): _sha256(t) for o, t in zip(outputs, temps) if o.kind == "file"}
        for o, t in zip(outputs, temps):
            if o.kind == "dir":
                rec = {"format": "jaxtl-outputs", "files": file_digests(t), "companions": companions}
                (t / OUTPUTS_RECORD).write_text(json.dumps(rec, indent=2))
        for o, t in zip(outputs, temps):
            old = None
            if o.path.exists():
                old = sibling(o.path, "old")
                o.path.rename(old)
            committed.append((o.path, old))
            t.rename(o.path)
    except BaseException as e:
        for path, old in reversed(committed):  # put back what was there
            if old is not None or path.exists():
                remove_path(path)
            if old is not None:
                old.rename(path)
        for t in temps:
            remove_path(t)
        if isinstance(e, OSError) or is_disk_full(e):
            where = next((o.path for o in outputs), Path("."))
            err = e if isinstance(e, OSError) else OSError(errno.ENOSPC, "No space left on device")
            raise OutputError(os_error_message(f"cannot write {where}", err, where.parent)) from None
        raise
    for _, old in committed:
        if old is not None:
            remove_path(old)
