"""Atomic writes: the old content or the new, never a torn file, no temporary left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.fsutil import atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_replace_the_content(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    atomic_write_text(p, "one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, half_then_fail)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_path_writers_get_a_temporary_beside_the_target(tmp_path: Path) -> None:
    seen: list[Path] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("x")

    atomic_write(tmp_path / "idx.faiss", writer)
    assert seen[0].parent == tmp_path and seen[0].name != "idx.faiss"
    assert (tmp_path / "idx.faiss").read_text() == "x"
