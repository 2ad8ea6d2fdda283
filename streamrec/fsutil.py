"""Atomic file writes: readers see the old file or the new one, never a torn one.

One helper for every checkpoint, registry and cache file: the new content goes to a temporary
file in the same directory (so that the rename stays on one filesystem), is flushed to disk with
``fsync``, then replaces the target with ``os.replace`` (atomic on POSIX and Windows); the
directory is fsynced too where the OS allows, so the rename survives a crash. A failed write
leaves the old file untouched and no temporary file behind.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
>>> atomic_write_text(p, '{"a": 1}')
>>> p.read_text(), sorted(q.name for q in p.parent.iterdir())
('{"a": 1}', ['x.json'])
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def _fsync_path(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, fsync it, then move it onto
    ``path``. For writers that take a path (``safetensors.save_file``, ``faiss.write_index``)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path``'s content with ``text`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))
