"""A directory of model versions with one atomically switched "current" pointer.

Layout::

    root/
      versions/v0001-20250101T120000Z/   a full checkpoint (copied in, never changed again)
      versions/v0002-.../
      CURRENT                            the current version's name (one line)

``promote`` writes ``CURRENT`` to a temp file and ``os.replace``-s it, so a reader sees the old
or the new version, never half a name. Versions are copied into a temp dir first and renamed
into place, so a half-copied version is never listed.

>>> import tempfile, pathlib
>>> reg = ModelRegistry(pathlib.Path(tempfile.mkdtemp()))
>>> reg.current_version() is None
True
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamrec.errors import NoModelError
from streamrec.fsutil import atomic_write_text
from streamrec.model.checkpoint import check_complete, read_metrics

_VERSION_RE = re.compile(r"^v(\d{4,})-\d{8}T\d{6}Z$")
CURRENT = "CURRENT"


@dataclass(frozen=True)
class ModelVersion:
    version: str  # "v0001-20250101T120000Z"
    path: Path  # root/versions/<version>
    metrics: dict[str, Any] = field(default_factory=dict)  # the checkpoint's metrics.json
    created_ts: float = 0.0  # unix time the version was registered
    is_current: bool = False  # whether CURRENT points at it


def data_cut_ms(v: ModelVersion) -> int:
    """When ``v``'s training data was cut (epoch ms): ``data_cut_ts`` or its registration time."""
    cut = v.metrics.get("data_cut_ts")
    return int(cut) if isinstance(cut, (int, float)) else int(v.created_ts * 1000)


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # -- reading ------------------------------------------------------------------------------------

    def _names(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(names, key=lambda n: int(_VERSION_RE.match(n).group(1)))  # type: ignore[union-attr]

    def current_version(self) -> str | None:
        f = self.root / CURRENT
        try:
            name = f.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name if name and (self.versions_dir / name).is_dir() else None

    def current_path(self) -> Path | None:
        v = self.current_version()
        return None if v is None else self.versions_dir / v

    def require_current(self) -> Path:
        p = self.current_path()
        if p is None:
            raise NoModelError(
                f"no current model in registry {str(self.root)!r}: train one with "
                "`streamrec train --sequences FILE [--item-text FILE]` "
                "or promote a version with `streamrec models promote VERSION`"
            )
        return p

    def list(self) -> list[ModelVersion]:
        cur = self.current_version()
        out = []
        for name in self._names():
            p = self.versions_dir / name
            try:
                created = p.stat().st_mtime
                meta = (p / ".created").read_text().strip()
                created = float(meta)
            except (OSError, ValueError):
                pass
            out.append(ModelVersion(name, p, read_metrics(p), created, name == cur))
        return out

    def versions_trained_before(self, ts_ms: int) -> builtins.list[ModelVersion]:
        """Versions whose training data was cut at or before ``ts_ms`` (epoch ms): after a user
        deletion purged from the training log at ``ts_ms``, these may still carry the user's past
        behaviour in their weights. The cut is the version's ``data_cut_ts`` (the trainer's wall
        time reading the log); a version without it (``streamrec train``) counts by its
        registration time."""
        return [v for v in self.list() if data_cut_ms(v) <= ts_ms]

    # -- writing ------------------------------------------------------------------------------------

    def register(self, src_dir: str | Path, *, metrics: dict[str, Any] | None = None) -> str:
        """Copy a checkpoint dir in as a new version; returns its name. Does not promote."""
        src = check_complete(src_dir, "cannot register")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex}"
        shutil.copytree(src, tmp)
        if metrics is not None:
            from streamrec.model.checkpoint import METRICS, write_json

            write_json(tmp / METRICS, metrics)
        now = time.time()
        (tmp / ".created").write_text(repr(now))
        while True:  # a concurrent register may take the number: retry with the next one
            names = self._names()
            n = int(_VERSION_RE.match(names[-1]).group(1)) + 1 if names else 1  # type: ignore[union-attr]
            stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
            name = f"v{n:04d}-{stamp}"
            try:
                os.rename(tmp, self.versions_dir / name)
                return name
            except OSError:
                if not (self.versions_dir / name).exists():
                    raise

    def version_path(self, version: str) -> Path:
        """Where ``version`` lives in this registry (a worker on another host, or with the data
        volume mounted elsewhere, resolves a ModelUpdate's version here). ValueError if unknown."""
        if version not in self._names():
            known = ", ".join(self._names()) or "none"
            raise ValueError(f"unknown model version {version!r} (known: {known})")
        return self.versions_dir / version

    def prune(self, keep: int) -> builtins.list[str]:  # `list` here is the method above
        """Delete all but the ``keep`` newest versions; the current one is never deleted.
        Returns the deleted names. A version is renamed out of the listing before removal, so a
        reader never sees half of one."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        cur = self.current_version()
        names = self._names()
        doomed = [n for n in names[: max(len(names) - keep, 0)] if n != cur]
        for name in doomed:
            tmp = self.versions_dir / f".del-{name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.versions_dir / name, tmp)
            except OSError:
                continue
            shutil.rmtree(tmp, ignore_errors=True)
        return doomed

    def promote(self, version: str) -> None:
        """Make ``version`` current (atomic). ValueError when there is no such version."""
        if version not in self._names():
            known = ", ".join(self._names()) or "none"
            raise ValueError(f"unknown model version {version!r} (known: {known})")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / CURRENT, version + "\n")
