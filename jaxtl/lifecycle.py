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

Standalone outputs (``jaxtl convert OUT``, ``jaxtl pack OUT``) go through :func:`jaxtl.outputs.write_outputs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jaxtl.errors import OutputError
from jaxtl.outputs import file_digests, is_disk_full, os_error_message, remove_path, replace_path, sibling, write_atomic

__all__ = [
    "Run",
    "RunInterrupted",
    "RunMismatchError",
    "WorkdirError",
    "WorkdirLock",
    "check_workdir",
    "describe_changes",
    "stop_on_signals",
]

T = TypeVar("T")
RUN_RECORD = "run.json"
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
    once); the handlers in place before are restored after. Off the main thread (signals cannot be caught there)
    the list simply stays empty. A signal the process was told to ignore (``SIG_IGN``: a shell's background job
    ignores SIGINT, ``nohup`` SIGHUP) stays ignored, as Python itself leaves an ignored SIGINT alone; one whose
    handler was set outside Python (``getsignal`` gives None) is left as it is, since it could not be restored."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    taken = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) not in (signal.SIG_IGN, None)]
    old = {s: signal.signal(s, handler) for s in taken}
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
        remove_path(probe)
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
            remove_path(tmp)
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

    def watch(self, items: Iterable[T], during: str) -> Iterator[T]:
        """``items``, checking between them for a signal (:meth:`check_stop`): long work with nothing to save
        (feature extraction) stops cleanly after the current item."""
        for item in items:
            self.check_stop(during)
            yield item
        self.check_stop(during)

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
        tmp = sibling(target, "tmp")
        self._temporaries.add(tmp)
        try:
            yield tmp
            digests = file_digests(tmp)
            replace_path(tmp, target)
        except OSError as e:
            raise WorkdirError(os_error_message(f"cannot write {target}", e, self.workdir)) from None
        except Exception as e:
            if is_disk_full(e):
                raise WorkdirError(
                    os_error_message(f"cannot write {target}", OSError(errno.ENOSPC, "No space left on device"), target)
                ) from None
            raise
        finally:
            remove_path(tmp)
            self._temporaries.discard(tmp)
        if self.main:
            self.record.setdefault("outputs", {})[name] = digests
            self._save_record()
