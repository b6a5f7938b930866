"""Atomic file writes: a crash or an error leaves either the old file or the new one.

Every file tailrank writes for another part to read (tables, features, checkpoints,
ONNX graphs, manifests, reports, caches) goes through ``write_atomic``: the content is
written to a temporary name in the target's folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it to ``path``."""
    write_many_atomic({Path(path): write})
    return Path(path)


def write_many_atomic(writes: Mapping[Path, Callable[[Path], None]]) -> None:
    """Stage every file under a temporary name first, then rename them all into place:
    when one write fails, none of the files changes."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writes.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.close(fd)
            staged.append((Path(name), path))
            write(Path(name))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    return write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())
