"""Derived files cached on disk: a stable key for JSON-able inputs, and folders (and single files)
written atomically.

Checkpoints built offline, the synthetic data set and reused evaluations are all cached this way: a
changed input gets a new key, and readers never see a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def json_hash(value: Any, length: int) -> str:
    """The first `length` hex digits of the sha256 of `value` as sorted-key JSON (str() for the rest)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def write_atomically(
    target: Path, write: Callable[[Path], object], *, complete: Callable[[Path], bool], replace: bool = False
) -> Path:
    """Run `write(tmp_folder)` next to `target`, then rename it to `target` (replacing an existing
    folder if `replace`). A concurrent writer that finished first wins when `complete(target)` says
    its folder is whole; the temporary folder never stays behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if replace:
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep its folder
            if not complete(target):
                raise
            log.info("another process wrote %s first; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_file_atomically(target: Path, text: str | bytes) -> Path:
    """Write `text` (str as UTF-8, or bytes) to a temporary file next to `target`, then rename it to `target`: a reader
    sees the old file or the whole new one, never a half-written one, and the temporary file never stays
    behind. The file gets the usual permissions (the umask's), not a temporary file's 0600."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        if isinstance(text, bytes):
            with open(tmp, "xb") as handle:
                handle.write(text)
        else:
            with open(tmp, "x", encoding="utf-8") as handle:
                handle.write(text)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
