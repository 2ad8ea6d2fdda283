from __future__ import annotations

import pytest

from streamrec.errors import CheckpointError, NoModelError
from streamrec.model.registry import ModelRegistry


def test_register_promote_current(tmp_path, tiny_checkpoint):
    reg = ModelRegistry(tmp_path / "models")
    assert reg.current_version() is None and reg.current_path() is None and reg.list() == []
    with pytest.raises(NoModelError, match="streamrec train --sequences"):
        reg.require_current()
    v1 = reg.register(tiny_checkpoint)
    v2 = reg.register(tiny_checkpoint, metrics={"note": "second"})
    assert v1.startswith("v0001-") and v2.startswith("v0002-")
    assert reg.current_version() is None  # register does not promote
    reg.promote(v1)
    assert reg.current_version() == v1
    assert reg.require_current() == tmp_path / "models" / "versions" / v1
    reg.promote(v2)
    listed = reg.list()
    assert [v.version for v in listed] == [v1, v2]
    assert [v.is_current for v in listed] == [False, True]
    assert listed[1].metrics == {"note": "second"}
    assert "test" in listed[0].metrics and listed[0].created_ts > 0
    # pointer written atomically: no temp files left behind
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["CURRENT", "versions"]


def test_promote_unknown_and_register_bad(tmp_path):
    reg = ModelRegistry(tmp_path)
    with pytest.raises(ValueError, match="v0009"):
        reg.promote("v0009-20250101T000000Z")
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="missing"):
        reg.register(tmp_path / "half")


def test_prune_keeps_newest_and_current_and_version_path(tmp_path, tiny_checkpoint):
    reg = ModelRegistry(tmp_path / "models")
    names = [reg.register(tiny_checkpoint) for _ in range(4)]
    reg.promote(names[0])  # a rollback target older than the kept ones
    assert reg.version_path(names[2]) == reg.versions_dir / names[2]
    assert reg.prune(2) == [names[1]]
    assert [v.version for v in reg.list()] == [names[0], names[2], names[3]]
    assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="unknown model version"):
        reg.version_path(names[1])
    with pytest.raises(ValueError, match="keep"):
        reg.prune(0)
