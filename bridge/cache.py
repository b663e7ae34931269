"""The converted-variables cache: a torch weights file converted once, then read back without torch.

An entry is a jaxtl Flax-layout .safetensors (see :mod:`.flax_io`) holding the variables with the source's own head,
the model card and the conversion report. Its name is keyed by the source file's resolved path, size and
modification time and the conversion options, so replacing the source file (or choosing another prefix/entry)
makes a new entry; the source's SHA-256 is recorded in the card (``extra["sha256"]``) at conversion time.
The cache is a convenience: a damaged entry is converted again, an unwritable cache directory only logs a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import BridgeError
from .flax_io import read_flax_safetensors, save_flax_safetensors

log = logging.getLogger("jaxtl.bridge")

ENV_DIR = "JAXTL_WEIGHTS_CACHE"
_VERSION = "jaxtl-weights-cache-1"


def default_cache_dir() -> Path:
    """``$JAXTL_WEIGHTS_CACHE``, else ``$XDG_CACHE_HOME/jaxtl/weights``, else ``~/.cache/jaxtl/weights``."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxtl" / "weights"


def entry_path(cache_dir: Path, source: Path, options: Mapping[str, Any]) -> Path:
    """The cache file for ``source`` converted with ``options`` (JSON-serialisable), named ``<stem>-<key>``."""
    st = source.stat()
    ident = json.dumps([_VERSION, str(source.resolve()), st.st_size, st.st_mtime_ns, dict(options)], sort_keys=True)
    return cache_dir / f"{source.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:20]}.safetensors"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_entry(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """(variables, card dict, report dict) of a cache entry; None if absent or unusable (logged)."""
    if not path.is_file():
        return None
    try:
        variables, meta = read_flax_safetensors(path)
        card, report = meta["card"], meta["report"]
    except (BridgeError, KeyError) as e:
        log.warning("ignoring the damaged weights cache entry %s (%s); converting again", path, e)
        return None
    return variables, card, report


def write_entry(path: Path, variables: Mapping[str, Any], card: Mapping[str, Any], report: Mapping[str, Any]) -> bool:
    """Write an entry atomically (a temporary sibling renamed into place); False (logged) if it cannot be written."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_flax_safetensors(
            variables, tmp, extra_metadata={"card": json.dumps(dict(card)), "report": json.dumps(dict(report))}
        )
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write the weights cache entry %s (%s); the next load converts again", path, e)
        tmp.unlink(missing_ok=True)
        return False
    return True
