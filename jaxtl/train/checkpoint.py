"""Everything jaxtl writes to disk for a model or a run, with one error family (:class:`CheckpointError`).

**Variables** (a converted, pretrained or fine-tuned model), a directory::

    directory/
      jaxtl.json     {"format": "jaxtl-variables", "version": 2, "jaxtl_version", "card": ModelCard}
      variables/     Orbax StandardCheckpointer output of {"params": ..., "batch_stats": ...}

written to a temporary sibling that is renamed into place only when complete. Only a directory that carries a
``jaxtl.json`` is ever replaced (``overwrite=True``); anything else at that path is refused.

**Run checkpoints** (:class:`RunStore`): a work directory belongs to one run. It is locked while a run writes it;
``run.json`` holds the run's fingerprint (what decides its numbers: model, parameter groups, optimizer, batch
size, seed, data, ...), and resuming with another fingerprint is refused with the list of what differs unless
asked for. Checkpoints are Orbax (latest ``keep`` + the best by an eval metric) with a SHA-256 of their arrays;
a damaged newest checkpoint is reported, set aside in ``workdir/damaged_checkpoints/`` and the previous one used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl._trees import tree_mismatch
from jaxtl.models.card import ModelCard, ModelCardError, Preprocessing

_FORMAT = "jaxtl-variables"
_VERSION = 2
_META = "jaxtl.json"
_STATE = "variables"


class CheckpointError(ValueError):
    """A checkpoint or work directory that cannot be written or read; the message names the path."""


class CheckpointDamagedError(CheckpointError):
    """A checkpoint could not be read back, or its arrays do not match the digest written with it."""


class WorkdirError(CheckpointError, OSError):
    """The work directory cannot hold this run (not writable, too little space, or locked by another run)."""


class RunMismatchError(CheckpointError):
    """The work directory holds another run (a different fingerprint); the message lists what differs."""


# --- variables ----------------------------------------------------------------------------------------------------


def _sibling(directory: Path, tag: str) -> Path:
    return directory.parent / f".{directory.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _check_leaves(target: Path, variables: Mapping[str, Any]) -> None:
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise CheckpointError(f"cannot save {target}: variables must be a dict with 'params' (and 'batch_stats')")
    bad = [
        jax.tree_util.keystr(k)
        for k, v in jax.tree_util.tree_flatten_with_path(dict(variables))[0]
        if not (hasattr(v, "shape") and hasattr(v, "dtype"))
    ]
    if bad:
        raise CheckpointError(f"cannot save {target}: leaves that are not arrays: {', '.join(bad[:10])}")


def is_jaxtl_output(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory jaxtl wrote (it carries ``jaxtl.json`` of a jaxtl format)."""
    p = Path(path)
    try:
        meta = json.loads((p / _META).read_text())
    except (OSError, ValueError):
        return False
    return p.is_dir() and isinstance(meta, dict) and meta.get("format") == _FORMAT


def check_overwritable(path: str | os.PathLike, overwrite: bool, what: str = "output") -> None:
    """Raise :class:`CheckpointError` unless ``path`` is free, or ``overwrite`` and ``path`` is a jaxtl output.

    A user's file or folder is never replaced: only a directory carrying jaxtl's ``jaxtl.json``.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if not overwrite:
        raise CheckpointError(f"{what} {p} already exists; pass overwrite=True (--overwrite) to replace it")
    if not is_jaxtl_output(p):
        kind = "a file" if p.is_file() else "a directory without jaxtl.json"
        raise CheckpointError(
            f"{what} {p} is {kind}, not a jaxtl checkpoint: refusing to overwrite it; choose a new path"
        )


def save_variables(
    directory: str | os.PathLike,
    variables: Mapping[str, Any],
    card: ModelCard,
    *,
    overwrite: bool = False,
) -> Path:
    """Save ``variables`` (``{"params", "batch_stats"}``) with their :class:`~jaxtl.models.card.ModelCard`.

    Refuses an existing ``directory`` unless ``overwrite=True``, and even then anything that is not a jaxtl
    checkpoint. Process-local (a multi-process run saves from one process). Returns the absolute path written.
    """
    import orbax.checkpoint as ocp

    import jaxtl

    target = Path(directory).absolute()
    if not isinstance(card, ModelCard):
        raise CheckpointError(f"cannot save {target}: card must be a jaxtl.models.ModelCard, got {type(card).__name__}")
    check_overwritable(target, overwrite, "checkpoint")
    jaxtl.models.get_spec(card.arch)  # unknown arch: a KeyError naming the choices, before anything is written
    meta = {"format": _FORMAT, "version": _VERSION, "jaxtl_version": jaxtl.__version__, "card": card.to_dict()}
    try:
        meta_text = json.dumps(meta, indent=2)
    except TypeError as e:
        raise CheckpointError(f"the model card's extra fields for {target} are not JSON-serialisable: {e}") from e
    _check_leaves(target, variables)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    # The synchronous checkpointer (an async one may still write into `tmp` after a failure was raised), and
    # process-local: Orbax's default all-process barrier would wait forever for processes that do not save.
    here = jax.process_index()
    local = ocp.options.MultiprocessingOptions(primary_host=here, active_processes={here})
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler(), multiprocessing_options=local)
    try:
        tmp.mkdir()
        ckptr.save(tmp / _STATE, dict(variables))
        (tmp / _META).write_text(meta_text)
        if target.exists():
            old = _sibling(target, "old")
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)  # put the previous checkpoint back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except OSError as e:
        raise WorkdirError(_os_message(f"cannot write checkpoint {target}", e, target.parent)) from e
    finally:
        with contextlib.suppress(Exception):
            ckptr.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _legacy_card(meta: dict[str, Any], where: str) -> ModelCard:
    # Version 1 (jaxtl 0.1): {"arch", "num_classes", "metadata": {normalization, image_size, channels, ...}}.
    info = meta.get("metadata") or {}
    fields: dict[str, Any] = {"channels": int(info.get("channels", 3))}
    if info.get("image_size"):
        fields["image_size"] = int(info["image_size"])
    card = ModelCard.for_arch(meta["arch"], int(meta["num_classes"]), **fields)
    norm = info.get("normalization")
    pre = card.preprocessing
    if norm:
        pre = Preprocessing.from_dict({**pre.to_dict(), "mean": norm["mean"], "std": norm["std"]}, where)
    names = tuple(info.get("class_names") or ())
    kind = info.get("kind") or card.kind
    dtype = info.get("dtype") or "float32"
    extra = {k: v for k, v in info.items() if k not in ("normalization", "image_size", "channels", "class_names")}
    return card.replace(preprocessing=pre, class_names=names, kind=kind, dtype=dtype, extra=extra)


def read_card(directory: str | os.PathLike) -> ModelCard:
    """The :class:`~jaxtl.models.card.ModelCard` of a checkpoint directory; :class:`CheckpointError` naming the
    file and field when it is missing or damaged (an edited ``jaxtl.json`` included)."""
    d = Path(directory).absolute()
    if not d.is_dir():
        raise CheckpointError(f"no checkpoint directory at {d}")
    where = str(d / _META)
    try:
        meta = json.loads((d / _META).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{d} is not a jaxtl checkpoint: {_META} is missing") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{where} is damaged: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{where} is not a jaxtl variables description (format {_FORMAT!r})")
    try:
        if "card" in meta:
            card = ModelCard.from_dict(meta["card"], where)
        elif "arch" in meta and "num_classes" in meta:
            card = _legacy_card(meta, where)
        else:
            raise CheckpointError(f"{where} holds no model card")
        from jaxtl.models import get_spec

        get_spec(card.arch)
    except (ModelCardError, TypeError, ValueError) as e:
        raise CheckpointError(str(e) if where in str(e) else f"{where}: {e}") from None
    except KeyError as e:
        raise CheckpointError(f"{where}: {e.args[0]}") from None
    return card


def _check_structure(d: Path, module: nn.Module, variables: dict[str, Any], channels: int) -> None:
    abstract = jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, 64, 64, channels), jnp.float32),
    )
    problems = tree_mismatch(variables, abstract)
    if problems:
        raise CheckpointError(f"{d}: variables do not match the model card: {'; '.join(problems)}")


def load_variables(directory: str | os.PathLike, dtype: Any = None) -> tuple[nn.Module, dict[str, Any], ModelCard]:
    """Load a directory written by :func:`save_variables` -> ``(module, variables, card)``.

    The module is ``jaxtl.create(card.arch, card.num_classes)`` in ``dtype`` (default: the card's dtype).
    :class:`CheckpointError` naming the path if it is missing, damaged or does not match its card.
    """
    import orbax.checkpoint as ocp

    import jaxtl

    d = Path(directory).absolute()
    card = read_card(d)
    dtype = dtype if dtype is not None else jnp.dtype(card.dtype)
    try:
        module = jaxtl.create(card.arch, num_classes=card.num_classes, dtype=dtype)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{d / _META} names a model jaxtl cannot build: {e}") from e
    if not (d / _STATE).is_dir():
        raise CheckpointError(f"{d} is damaged: {_STATE}/ is missing")
    try:
        ckptr = ocp.StandardCheckpointer()
        variables = ckptr.restore(d / _STATE)
        ckptr.close()
    except Exception as e:  # Orbax raises assorted types (ValueError, FileNotFoundError, tensorstore errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot restore {d / _STATE}: {first}") from e
    if not isinstance(variables, dict) or "params" not in variables:
        raise CheckpointError(f"{d / _STATE} holds no 'params' collection")
    _check_structure(d, module, variables, card.preprocessing.channels)
    variables = jax.tree.map(jnp.asarray, variables)
    return module, dict(variables), card


# --- run checkpoints ----------------------------------------------------------------------------------------------


def _os_message(what: str, e: OSError, where: Path) -> str:
    text = f"{what}: {e.strerror or e}"
    if getattr(e, "errno", None) == 28:  # ENOSPC
        with contextlib.suppress(OSError):
            text += f" ({shutil.disk_usage(where).free / 2**20:.1f} MiB free on {where})"
    return text


def _leaves_dict(state: Any) -> dict[str, np.ndarray]:
    # Flat leaves keep Orbax away from optax's empty MaskedNode/NamedTuple nodes; the tree comes from a fresh state.
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}


def digest(leaves: Mapping[str, Any]) -> str:
    """SHA-256 over the sorted ``{key: array}`` (key, dtype, shape and bytes of each)."""
    h = hashlib.sha256()
    for key in sorted(leaves):
        arr = np.ascontiguousarray(np.asarray(leaves[key]))
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _from_leaves(template: Any, leaves: Mapping[str, Any], where: str) -> Any:
    expected = jax.tree.leaves(template)
    if len(leaves) != len(expected):
        raise CheckpointDamagedError(
            f"checkpoint {where} holds {len(leaves)} arrays, this run's state has {len(expected)}"
        )
    ordered = [np.asarray(leaves[f"{i:05d}"]) for i in range(len(expected))]
    for i, (got, want) in enumerate(zip(ordered, expected)):
        if got.shape != np.shape(want):
            raise CheckpointDamagedError(
                f"checkpoint {where}: array {i} has shape {got.shape}, this run expects {np.shape(want)}"
            )
    return jax.tree.unflatten(jax.tree.structure(template), ordered)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def checkpoint_bytes(state: Any) -> int:
    """The bytes of one run checkpoint's arrays (params, batch_stats, optimizer state, step, rng)."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))


def check_workdir(workdir: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Create ``workdir`` and prove it writable (a probe file) with ``need_bytes`` free; raise :class:`WorkdirError`.

    Run before training so a bad directory fails in seconds, not at the first checkpoint.
    """
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"work directory {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create work directory {path}: {e.strerror or e}") from e
    probe = path / f".jaxtl-write-probe-{os.getpid()}-{jax.process_index()}"
    try:
        with probe.open("wb") as f:
            f.write(b"jaxtl")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"work directory {path} is not writable: {e.strerror or e}") from e
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise WorkdirError(
            f"work directory {path} has {free / 2**20:.1f} MiB free; one checkpoint needs about "
            f"{need_bytes / 2**20:.1f} MiB"
        )
    return path


class WorkdirLock:
    """An exclusive ``flock`` on ``workdir/.lock`` held while a run writes the directory; the file names the
    holder (host, pid, start time) so a second writer's error says who holds it. Released on close or exit."""

    def __init__(self, workdir: Path):
        import fcntl

        self.path = workdir / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = self.path.read_text().strip()
            os.close(self._fd)
            raise WorkdirError(
                f"work directory {workdir} is in use by another run ({holder or 'holder unknown'}); wait for it to "
                "finish or choose another --workdir"
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


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["field: old -> new", ...]`` for every field that differs (missing on one side included)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            ta, tb = repr(a), repr(b)
            out.append(f"{key}: {ta} -> {tb}" if len(ta) + len(tb) < 160 else f"{key} (changed)")
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


@dataclasses.dataclass
class RunStore:
    """The checkpoints of one run in ``workdir``: lock, fingerprint, Orbax manager, damaged-checkpoint handling.

    ``fingerprint`` (JSON-able) identifies the run; ``allow_changes=True`` resumes a workdir whose stored
    fingerprint differs (the differences are warned about and the new fingerprint recorded).
    """

    workdir: Path
    fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    keep: int = 3
    best_metric: str | None = None
    best_mode: str = "max"
    allow_changes: bool = False
    readonly: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.ckpt_dir = self.workdir / "checkpoints"
        self.main = jax.process_index() == 0
        self._lock = WorkdirLock(self.workdir) if self.main and not self.readonly else None
        try:
            if not self.readonly:
                self._check_fingerprint()
            self.manager = self._manager()
        except BaseException:
            self.close()
            raise

    # -- identity --

    def _check_fingerprint(self) -> None:
        path = self.workdir / "run.json"
        new = _jsonable(dict(self.fingerprint))
        if path.exists():
            try:
                old = json.loads(path.read_text()).get("fingerprint", {})
            except (OSError, ValueError, AttributeError) as e:
                raise CheckpointDamagedError(f"{path} is damaged ({e}); move it away to start afresh") from None
            diff = fingerprint_diff(old, new)
            if diff and not self.allow_changes:
                raise RunMismatchError(
                    f"work directory {self.workdir} holds another run; what differs: {'; '.join(diff)}. "
                    "Use another workdir, or allow_changes=True (--allow-changed-run) to resume it anyway"
                )
            if diff:
                warnings.warn(
                    f"resuming {self.workdir} with a changed run: {'; '.join(diff)}", RuntimeWarning, stacklevel=4
                )
        elif self._step_dirs():
            warnings.warn(
                f"{self.workdir} has checkpoints but no run.json (written by an older jaxtl); resuming unchecked",
                RuntimeWarning,
                stacklevel=4,
            )
        if self.main:
            tmp = path.with_name(f".run.json.{os.getpid()}")
            tmp.write_text(json.dumps({"fingerprint": new}, indent=2, sort_keys=True))
            tmp.replace(path)
        _sync("jaxtl_run_fingerprint")

    # -- Orbax --

    def _manager(self) -> Any:
        import orbax.checkpoint as ocp

        policies: list[Any] = [ocp.checkpoint_managers.LatestN(self.keep)]
        if self.best_metric is not None:
            metric = self.best_metric
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[metric],
                    reverse=self.best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        return ocp.CheckpointManager(self.ckpt_dir.absolute(), options=options)

    def _step_dirs(self) -> list[int]:
        # Orbax lists only steps it considers complete; a step folder missing its metadata must still be reported.
        d = self.ckpt_dir
        found = {int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()} if d.exists() else set()
        if getattr(self, "manager", None) is not None:
            found |= set(self.manager.all_steps())
        return sorted(found, reverse=True)

    def save(self, state: Any, position: Mapping[str, int], metrics: Mapping[str, float] | None = None) -> None:
        """Write one complete checkpoint (state leaves + data position) at ``position["step"]``; blocks until done.

        In a multi-process run every process calls this with the same (replicated) state; Orbax coordinates.
        """
        import orbax.checkpoint as ocp

        leaves = _leaves_dict(state)
        meta = {**position, "sha256": digest(leaves)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(position["step"], args=args, metrics=dict(metrics) if metrics else None, force=True)
            self.manager.wait_until_finished()
        except OSError as e:
            raise WorkdirError(_os_message(f"cannot write checkpoint step {position['step']}", e, self.ckpt_dir)) from e
        except Exception as e:  # tensorstore reports a full disk as its own error type with a long text
            if "No space left" in str(e) or "ENOSPC" in str(e):
                free = shutil.disk_usage(self.workdir).free / 2**20
                raise WorkdirError(
                    f"cannot write checkpoint step {position['step']} to {self.ckpt_dir}: no space left on device "
                    f"({free:.1f} MiB free; one checkpoint needs about {checkpoint_bytes(state) / 2**20:.1f} MiB)"
                ) from None
            raise

    def restore_step(self, template: Any, step: int) -> tuple[Any, dict[str, int]]:
        """The state and data position of checkpoint ``step``; :class:`CheckpointDamagedError` if unreadable."""
        import orbax.checkpoint as ocp

        where = str(self.ckpt_dir / str(step))
        target = _leaves_dict(template)
        # Orbax writes this file as part of the commit; its absence means the folder is not a finished save.
        if not (Path(where) / "_CHECKPOINT_METADATA").is_file():
            raise CheckpointDamagedError(f"checkpoint step {step} at {where} lacks its _CHECKPOINT_METADATA file")
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
            meta = dict(restored["meta"])
            leaves = {k: np.asarray(v) for k, v in restored["state"].items()}
        except Exception as e:  # Orbax/tensorstore raise many types for unreadable files; all mean "damaged" here.
            raise CheckpointDamagedError(
                f"checkpoint step {step} at {where} cannot be read: {type(e).__name__}: {e}"
            ) from e
        want = meta.pop("sha256", None)
        if want is not None and set(leaves) == set(target) and digest(leaves) != want:
            raise CheckpointDamagedError(f"checkpoint step {step} at {where}: arrays do not match their SHA-256")
        for key in ("step", "epoch", "batch"):
            if not isinstance(meta.get(key), int):
                raise CheckpointDamagedError(f"checkpoint step {step} at {where}: metadata lacks an integer {key!r}")
        return _from_leaves(template, leaves, where), meta

    def restore_latest(self, template: Any) -> tuple[Any, dict[str, int]] | None:
        """The newest readable checkpoint, or None when there is none. Damaged newer ones are warned about (step
        and path), moved to ``workdir/damaged_checkpoints/``, and the previous one is used; if every checkpoint is
        damaged the run stops (:class:`CheckpointDamagedError`) rather than silently starting over."""
        damaged: list[int] = []
        result = None
        for step in self._step_dirs():
            try:
                result = self.restore_step(template, step)
                break
            except CheckpointDamagedError as e:
                damaged.append(step)
                warnings.warn(f"{e}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=3)
        if damaged and result is None:
            raise CheckpointDamagedError(
                f"every checkpoint in {self.ckpt_dir} is damaged (steps {damaged}); move them away to start afresh"
            )
        if damaged:
            self.manager.close()
            if self.main:
                self._set_aside(damaged)
            _sync("jaxtl_set_aside_damaged")
            self.manager = self._manager()
        return result

    def _set_aside(self, steps: list[int]) -> None:
        # Out of Orbax's folder, so it neither lists them nor refuses to write those steps again; kept to inspect.
        aside = self.workdir / "damaged_checkpoints"
        aside.mkdir(exist_ok=True)
        for step in steps:
            src = self.ckpt_dir / str(step)
            if src.exists():
                dst = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                shutil.move(str(src), str(dst))
                warnings.warn(f"damaged checkpoint step {step} moved from {src} to {dst}", RuntimeWarning, stacklevel=4)

    def close(self) -> None:
        manager = getattr(self, "manager", None)
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.wait_until_finished()
            manager.close()
            self.manager = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def data_digest(data: Any) -> str:
    """A short digest of what a source holds: its own ``digest()`` when it has one (file listings), else the
    size, image shape and a hash of its labels and pixels (in-memory arrays)."""
    own = getattr(data, "digest", None)
    if callable(own):
        return str(own())
    h = hashlib.sha256()
    h.update(f"{len(data)}:{getattr(data, 'image_shape', '')}".encode())
    labels = getattr(data, "labels", None)
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    images = getattr(data, "images", None)
    if images is not None:
        h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


__all__ = [
    "CheckpointDamagedError",
    "CheckpointError",
    "RunMismatchError",
    "RunStore",
    "WorkdirError",
    "WorkdirLock",
    "check_overwritable",
    "check_workdir",
    "checkpoint_bytes",
    "data_digest",
    "digest",
    "fingerprint_diff",
    "is_jaxtl_output",
    "load_variables",
    "read_card",
    "save_variables",
]
