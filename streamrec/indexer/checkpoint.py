"""A directory of files plus ``manifest.json`` holding each file's sha256; no pickle anywhere.

Why a checksum: ``faiss.read_index`` on a truncated or bit-flipped file may abort the process
instead of raising, so every file is verified *before* anything parses it. The manifest is
written last, so a crash mid-save leaves a manifest that does not match and the next load raises
:class:`~streamrec.errors.CheckpointError` (and ``load_or_rebuild`` rebuilds from the catalog).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamrec.errors import CheckpointError
from streamrec.fsutil import atomic_write, atomic_write_text

MANIFEST = "manifest.json"
FORMAT = "streamrec.item_index"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(directory: str | Path, writers: dict[str, Callable[[Path], object]], meta: dict[str, Any]) -> None:
    """Write each file through ``writers[name](tmp_path)``, then the manifest, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for name, write in writers.items():

        def write_and_hash(tmp: Path, name: str = name, write: Callable[[Path], object] = write) -> None:
            write(tmp)
            files[name] = {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}

        atomic_write(directory / name, write_and_hash)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "files": files}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Return the manifest after checking that every file it lists exists with its sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no index checkpoint at {directory}: {MANIFEST} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable {path}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {manifest.get('format_version')!r} is not "
            f"supported (this code reads {FORMAT_VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: 'files' is missing")
    for name, info in files.items():
        f = directory / name
        if Path(name).name != name:
            raise CheckpointError(f"{path}: bad file name {name!r}")
        try:
            digest = sha256_file(f)
        except OSError as e:
            raise CheckpointError(f"index checkpoint file {f} is missing or unreadable: {e}") from e
        if not isinstance(info, dict) or digest != info.get("sha256"):
            raise CheckpointError(f"index checkpoint file {f} is corrupt: sha256 {digest} does not match the manifest")
    return manifest
