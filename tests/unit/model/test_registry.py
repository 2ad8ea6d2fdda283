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


def test_versions_trained_before_a_deletion(tmp_path, tiny_checkpoint, capsys):
    import argparse
    import json

    from streamrec.config import Settings
    from streamrec.model.cli import add_commands

    reg = ModelRegistry(tmp_path / "models")
    old = reg.register(tiny_checkpoint, metrics={"data_cut_ts": 1_000, "trained_until_ts": 900})
    new = reg.register(tiny_checkpoint, metrics={"data_cut_ts": 3_000, "trained_until_ts": 2_900})
    legacy = reg.register(tiny_checkpoint, metrics={})  # no cut recorded: its registration time
    assert [v.version for v in reg.versions_trained_before(2_000)] == [old]
    assert [v.version for v in reg.versions_trained_before(3_000)] == [old, new]
    created_ms = int(reg.list()[2].created_ts * 1000)
    assert [v.version for v in reg.versions_trained_before(created_ms)] == [old, new, legacy]

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    settings = Settings(data_dir=tmp_path, registry_dir=tmp_path / "models")
    args = parser.parse_args(["models", "list", "--trained-before", "2000", "--json"])
    assert args.func(args, settings) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["data_cut_ts"], v["trained_until_ts"]) for v in listed] == [(old, 1_000, 900)]
    args = parser.parse_args(["models", "list", "--trained-before", "500"])
    assert args.func(args, settings) == 0
    assert "no version" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "list", "--trained-before", "-1"])
