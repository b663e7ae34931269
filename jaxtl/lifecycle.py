"""The one run lifecycle every writing route goes through: fine-tune (every mode), pretrain, evaluate with a work
directory, convert, pack, and ``fit`` with checkpoints.

A :class:`Run` owns a work directory while it is open:

- **one writer**: an exclusive ``flock`` on ``WORKDIR/.lock`` (the file names the holder);
- **writable before any work**: the directory is created, a probe file written and the free space checked when the
  run opens, not when its first output is saved;
- **one run**: ``WORKDIR/run.json`` records the run's identity (what decides its numbers, from the config); a
  run with another identity is refused with what changed, in words, unless ``allow_changes``;
- **signals**: SIGINT/SIGTERM set :attr:`Run.stop_signal`; the loop saves its state and stops with one line
  (:class:`RunInterrupted`), a second Ctrl-C interrupts at once;
- **atomic outputs it knows by its own record**: :meth:`Run.output` writes to a temporary name beside the target
  and renames it into place; ``run.json`` lists every file the run wrote with its SHA-256, and an existing target
  is replaced only when it is exactly what that record says this run wrote. A user's file is never replaced or
  deleted; temporaries are removed on failure.

Standalone outputs (``jaxtl convert OUT``, ``jaxtl pack OUT``) use :func:`write_outputs`: every output is prepared
under a temporary name first, checked for room and permission before the work, and committed together (a failure
puts back what was there). Their record is the ``jaxtl-outputs.json`` written inside an output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtl.errors import ConfigError, OutputError

__all__ = [
    "OUTPUTS_RECORD",
    "Run",
    "RunInterrupted",
    "RunMismatchError",
    "WorkdirError",
    "WorkdirLock",
    "describe_changes",
    "file_digests",
    "os_error_message",
    "stop_on_signals",
    "write_atomic",
    "write_outputs",
]

RUN_RECORD = "run.json"
OUTPUTS_RECORD = "jaxtl-outputs.json"
_FORMAT = "jaxtl-run"


class WorkdirError(OutputError):
    """The work directory cannot hold this run: not a directory, not writable, too little space, or in use."""


class RunMismatchError(OutputError):
    """The work directory holds another run; the message says what changed."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped a run cleanly. ``signum`` is the signal; ``step`` the last step done; ``checkpoint``
    the step saved (None: nothing saved); the message says what to do next. A KeyboardInterrupt, so a plain
    ``except Exception`` does not swallow it."""

    def __init__(self, signum: int, step: int, checkpoint: int | None, workdir: Path | None, during: str | None = None):
        self.signum, self.step, self.checkpoint, self.workdir = signum, step, checkpoint, workdir
        name = signal.Signals(signum).name
        if during is not None:
            text = f"{name} received during {during}: stopped; nothing to save yet, run the same command to start over"
        elif checkpoint is not None:
            text = (
                f"{name} received: stopped after step {step}; checkpoint of step {checkpoint} saved in {workdir}; "
                "run the same command again to resume"
            )
        else:
            text = f"{name} received: stopped after step {step}; nothing saved (no work directory)"
        super().__init__(text)


# --- small pieces ----------------------------------------------------------------------------------------------


def os_error_message(what: str, e: OSError, where: Path) -> str:
    """``"<what>: <reason> (<free> MiB free on <where>)"``, one line; the free space only for a full disk."""
    text = f"{what}: {e.strerror or e}"
    if getattr(e, "errno", None) == errno.ENOSPC:
        with contextlib.suppress(OSError):
            text += f" ({shutil.disk_usage(where).free / 2**20:.1f} MiB free on {where}); free some space and run again"
    elif getattr(e, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += f"; choose a writable location or fix the permissions of {where}"
    return text


def _is_disk_full(e: BaseException) -> bool:
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:8]}"


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (readers see the old or the new file)."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        _remove(tmp)
        raise


def _process_index() -> int:
    import jax

    return int(jax.process_index())


def _sync(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# --- signals ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM append to the yielded list instead of killing the process (a second SIGINT interrupts at
    once). Off the main thread (signals cannot be caught there) the list simply stays empty."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- the work directory ----------------------------------------------------------------------------------------


class WorkdirLock:
    """An exclusive ``flock`` on ``workdir/.lock`` while a run writes the directory; the file names the holder
    (host, pid, start time) so a second writer's error says who holds it. Released on close or process exit."""

    def __init__(self, workdir: Path):
        import fcntl

        self.path = Path(workdir) / ".lock"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkdirError(os_error_message(f"cannot lock work directory {workdir}", e, Path(workdir))) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = self.path.read_text().strip()
            os.close(self._fd)
            raise WorkdirError(
                f"work directory {workdir} is in use by another run ({holder or 'holder unknown'}); wait for it to "
                "finish or choose another work directory"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%F %T')}".encode())

    def close(self) -> None:
        import fcntl

        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def check_workdir(workdir: str | os.PathLike[str], need_bytes: int = 0) -> Path:
    """Create ``workdir``, prove it writable (a probe file) with ``need_bytes`` free; :class:`WorkdirError` if not."""
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"work directory {path} exists and is not a directory; choose another work directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(os_error_message(f"cannot create work directory {path}", e, path.parent)) from None
    probe = path / f".jaxtl-write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        with probe.open("wb") as f:
            f.write(b"jaxtl")
        probe.unlink()
    except OSError as e:
        _remove(probe)
        raise WorkdirError(os_error_message(f"work directory {path} is not writable", e, path)) from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise WorkdirError(
            f"work directory {path} has {free / 2**20:.1f} MiB free; this run needs about {need_bytes / 2**20:.1f} "
            "MiB; free some space or choose another work directory"
        )
    return path


def describe_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], words: Mapping[str, str] | None = None
) -> list[str]:
    """One phrase per identity field that differs, e.g. ``"the learning rate changed (0.001 -> 0.01)"``; ``words``
    names fields in plain words (``{"optimizer.lr": "the learning rate"}``), else the field's own name is used."""
    words = words or {}
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            continue
        name = words.get(key, key)
        ta, tb = json.dumps(a, default=str), json.dumps(b, default=str)
        out.append(f"{name} changed ({ta} -> {tb})" if len(ta) + len(tb) < 120 else f"{name} changed")
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


@dataclasses.dataclass
class Run:
    """A run that owns ``workdir`` while open (``with Run(...) as run:``); see the module docstring.

    ``identity`` (JSON-able) is what decides the run's numbers; ``words`` names its fields for messages.
    ``writes`` are the names the run will write in ``workdir`` (``"checkpoints"``, ``"classifier"``...): a fresh
    run refuses a folder that already holds one of them that no run recorded. ``need_bytes``: free space checked
    up front. Multi-process (``jax.distributed``): every process opens the run on the shared folder; process 0
    locks and writes the records.
    """

    workdir: Path
    identity: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    words: Mapping[str, str] = dataclasses.field(default_factory=dict)
    writes: Sequence[str] = ()
    allow_changes: bool = False
    need_bytes: int = 0
    kind: str = "run"

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self._lock: WorkdirLock | None = None
        self._signals: contextlib.ExitStack | None = None
        self._received: list[int] = []
        self._temporaries: set[Path] = set()
        self.record: dict[str, Any] = {}
        self.resumed = False
        self.main = True

    # -- opening and closing --

    def __enter__(self) -> Run:
        self.main = _process_index() == 0
        check_workdir(self.workdir, self.need_bytes)
        stack = contextlib.ExitStack()
        try:
            if self.main:
                self._lock = WorkdirLock(self.workdir)
                stack.callback(self._release)
                self._open_record()
            _sync("jaxtl_run_open")
            self._received = stack.enter_context(stop_on_signals())
        except BaseException:
            stack.close()
            raise
        self._signals = stack
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp in list(self._temporaries):
            _remove(tmp)
        self._temporaries.clear()
        if self._signals is not None:
            self._signals.close()
            self._signals = None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _open_record(self) -> None:
        path = self.workdir / RUN_RECORD
        new = _jsonable(dict(self.identity))
        if path.exists():
            try:
                old_record = json.loads(path.read_text())
                old = old_record["identity"] if "identity" in old_record else old_record["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise RunMismatchError(
                    f"{path} is damaged ({type(e).__name__}: {e}); move it away to start afresh"
                ) from None
            changes = describe_changes(old, new, self.words)
            if changes and not self.allow_changes:
                raise RunMismatchError(
                    f"work directory {self.workdir} holds another run: {'; '.join(changes)}. Use another work "
                    "directory, or allow changes (--allow-changed-run) to continue it anyway"
                )
            if changes:
                warnings.warn(f"continuing {self.workdir} with a changed run: {'; '.join(changes)}", stacklevel=4)
            self.record = old_record if isinstance(old_record, dict) else {}
            self.record.pop("fingerprint", None)
            self.resumed = True
        else:
            taken = [n for n in self.writes if (self.workdir / n).exists()]
            if taken:
                raise WorkdirError(
                    f"work directory {self.workdir} already holds {', '.join(taken)} but no {RUN_RECORD}: not written "
                    "by a jaxtl run; choose an empty or new work directory"
                )
        self.record.update({"format": _FORMAT, "version": 1, "kind": self.kind, "identity": new})
        self.record.setdefault("outputs", {})
        self._save_record()

    def _save_record(self) -> None:
        try:
            write_atomic(self.workdir / RUN_RECORD, json.dumps(self.record, indent=2, sort_keys=True))
        except OSError as e:
            raise WorkdirError(os_error_message(f"cannot write {self.workdir / RUN_RECORD}", e, self.workdir)) from None

    def close(self) -> None:
        """What leaving the ``with`` block does: temporaries removed, signal handlers restored, lock released."""
        self.__exit__(None, None, None)

    # -- state shared with the loop --

    @property
    def stop_signal(self) -> int | None:
        """The first SIGINT/SIGTERM received while the run was open, or None."""
        return self._received[0] if self._received else None

    def check_stop(self, during: str) -> None:
        """Raise :class:`RunInterrupted` when a signal arrived (for work with nothing to save, e.g. extraction)."""
        if self._received:
            raise RunInterrupted(self._received[0], 0, None, self.workdir, during=during)

    def note(self, key: str, value: Any) -> None:
        """Keep a JSON-able fact in ``run.json`` (e.g. the held-out split); process 0 writes it."""
        if self.main:
            self.record[key] = _jsonable(value)
            self._save_record()

    # -- outputs --

    def owns(self, name: str) -> bool:
        """True when ``workdir/name`` is free, or holds exactly what this run's record says it wrote there."""
        target = self.workdir / name
        if not target.exists() and not target.is_symlink():
            return True
        wrote = self.record.get("outputs", {}).get(name)
        if wrote is None or target.is_symlink():
            return False
        try:
            return file_digests(target) == wrote
        except OSError:
            return False

    def check_output(self, name: str) -> None:
        """Before the work: :class:`WorkdirError` unless ``workdir/name`` can be written by this run."""
        if not self.owns(name):
            raise WorkdirError(
                f"{self.workdir / name} exists and is not what this run wrote there (a file of yours, or changed "
                "since); move it away or choose another work directory"
            )

    @contextlib.contextmanager
    def output(self, name: str) -> Iterator[Path]:
        """Write ``workdir/name`` atomically: yields a temporary path (nothing exists there yet) to write a file or a
        folder at; on success it replaces the target (only one this run wrote) and is recorded with its SHA-256s.
        A failure removes the temporary and keeps the previous output; a full disk is one line naming the path."""
        target = self.workdir / name
        self.check_output(name)
        tmp = _sibling(target, "tmp")
        self._temporaries.add(tmp)
        try:
            yield tmp
            digests = file_digests(tmp)
            _replace(tmp, target)
        except OSError as e:
            raise WorkdirError(os_error_message(f"cannot write {target}", e, self.workdir)) from None
        except Exception as e:
            if _is_disk_full(e):
                raise WorkdirError(
                    os_error_message(f"cannot write {target}", OSError(errno.ENOSPC, "No space left on device"), target)
                ) from None
            raise
        finally:
            _remove(tmp)
            self._temporaries.discard(tmp)
        if self.main:
            self.record.setdefault("outputs", {})[name] = digests
            self._save_record()


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``; an existing target is moved aside first and put back if the rename fails."""
    if not target.exists():
        tmp.rename(target)
        return
    old = _sibling(target, "old")
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    _remove(old)


# --- standalone outputs (convert, pack) ---------------------------------------------------------------------------


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
    temps = [_sibling(o.path, "tmp") for o in outputs]
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
                old = _sibling(o.path, "old")
                o.path.rename(old)
            committed.append((o.path, old))
            t.rename(o.path)
    except BaseException as e:
        for path, old in reversed(committed):  # put back what was there
            if old is not None or path.exists():
                _remove(path)
            if old is not None:
                old.rename(path)
        for t in temps:
            _remove(t)
        if isinstance(e, OSError) or _is_disk_full(e):
            where = next((o.path for o in outputs), Path("."))
            err = e if isinstance(e, OSError) else OSError(errno.ENOSPC, "No space left on device")
            raise OutputError(os_error_message(f"cannot write {where}", err, where.parent)) from None
        raise
    for _, old in committed:
        if old is not None:
            _remove(old)
