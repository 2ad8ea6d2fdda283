"""Erasure in the training log: segments rewritten without the user, others intact, a purge
interrupted by a crash redone on open, and old events of the user not logged again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streamrec.model import trainlog
from streamrec.model.trainlog import DELETIONS_FILE, SegmentBuffer, TrainLog, user_hash
from streamrec.schemas import ShopEvent

TOPIC = "shop.events"
T0 = 1_767_225_600_000


def ev(i: int, user: str, *, ts: int | None = None) -> ShopEvent:
    return ShopEvent(
        event_id=f"{user}-e{i}",
        user_id=user,
        session_id="s",
        item_id=f"i{i % 5}",
        type="view",
        ts=T0 + i * 1000 if ts is None else ts,
    )


def filled(root: Path) -> TrainLog:
    """Three segments: alice+bob mixed, bob only, alice only (so one becomes empty)."""
    log = TrainLog(root, topic=TOPIC)
    log.append(0, 0, 3, [(0, ev(0, "alice")), (1, ev(1, "bob")), (2, ev(2, "alice")), (3, ev(3, "bob"))])
    log.append(0, 4, 5, [(4, ev(4, "bob")), (5, ev(5, "bob"))])
    log.append(1, 0, 1, [(0, ev(6, "alice")), (1, ev(7, "alice"))])
    return log


def users_on_disk(root: Path) -> list[str]:
    return sorted(u for p in root.glob("*.parquet") for u in pq.read_table(p).column("user_id").to_pylist())


def test_purge_rewrites_segments_without_the_user_and_keeps_others(tmp_path: Path) -> None:
    log = filled(tmp_path)
    untouched = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")}
    before_offsets = log.next_offsets()
    assert log.purge_user("alice", T0 + 60_000) == 4
    assert users_on_disk(tmp_path) == ["bob"] * 4
    assert log.rows == 4 and log.read().column("user_id").to_pylist() == ["bob"] * 4
    # the bob-only segment was not rewritten; the emptied one stays (its offsets stay covered)
    bob_only = trainlog.segment_name(TOPIC, 0, 4, 5)
    assert (tmp_path / bob_only).stat().st_mtime_ns == untouched[bob_only]
    assert log.next_offsets() == before_offsets
    # the de-dup set follows the rows: alice's ids left it, bob's stay
    assert "alice-e0" not in log and "bob-e1" in log
    assert log.append(0, 6, 6, [(6, ev(1, "bob"))]).duplicates == 1
    # nothing half-written left, and the deletions file keeps a hash, not the id
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    state = json.loads((tmp_path / DELETIONS_FILE).read_text())
    assert state == {"deleted": {user_hash("alice"): T0 + 60_000}, "pending": {}}
    assert "alice" not in (tmp_path / DELETIONS_FILE).read_text()
    # a reopened log agrees
    again = TrainLog(tmp_path, topic=TOPIC)
    assert again.rows == 4 and "alice-e0" not in again and "bob-e3" in again


def test_replayed_old_events_are_not_logged_again_but_later_ones_are(tmp_path: Path) -> None:
    log = filled(tmp_path)
    cut = T0 + 60_000
    log.purge_user("alice", cut)
    log = TrainLog(tmp_path, topic=TOPIC)  # the cut survives a restart
    res = log.append(2, 0, 2, [(0, ev(0, "alice")), (1, ev(9, "alice", ts=cut)), (2, ev(10, "alice", ts=cut + 1))])
    assert (res.written, res.erased) == (1, 2)
    t = log.read()
    alice_ts = [ts for u, ts in zip(t.column("user_id").to_pylist(), t.column("ts").to_pylist()) if u == "alice"]
    assert alice_ts == [cut + 1]


def test_a_purge_interrupted_by_a_crash_is_redone_on_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = filled(tmp_path)
    real = trainlog.atomic_write
    calls = []

    def crash_on_second(path: Path, write: Callable[[Path], None]) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash between two segment rewrites")
        real(path, write)

    monkeypatch.setattr(trainlog, "atomic_write", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        log.purge_user("alice", T0 + 60_000)
    monkeypatch.setattr(trainlog, "atomic_write", real)
    # one segment rewritten, one still holds alice; the deletion is recorded as pending
    assert users_on_disk(tmp_path).count("alice") == 2
    assert json.loads((tmp_path / DELETIONS_FILE).read_text())["pending"] == {"alice": T0 + 60_000}
    reopened = TrainLog(tmp_path, topic=TOPIC)
    assert "alice" not in users_on_disk(tmp_path) and reopened.rows == 4
    assert reopened.pending == {} and reopened.deleted == {user_hash("alice"): T0 + 60_000}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_purge_keeps_the_later_cut_and_is_idempotent(tmp_path: Path) -> None:
    log = filled(tmp_path)
    assert log.purge_user("alice", T0 + 2_000) == 2  # alice-e0, alice-e2 only
    assert log.purge_user("alice", T0 + 60_000) == 2  # then the rest
    assert log.purge_user("alice", T0) == 0  # an older deletion does not lower the cut
    assert log.deleted == {user_hash("alice"): T0 + 60_000}
    assert log.append(3, 0, 0, [(0, ev(20, "alice", ts=T0 + 30_000))]).erased == 1


def test_buffer_drop_user_drops_only_that_users_older_events() -> None:
    buf = SegmentBuffer(max_events=100, max_age_s=60)
    for o, e in enumerate([ev(0, "alice"), ev(1, "bob"), ev(2, "alice", ts=T0 + 99_000)]):
        buf.add(0, o, e.to_bytes(), now=0.0)
    assert buf.drop_user("alice", T0 + 50_000) == 1
    [(partition, pending)] = buf.drain()
    assert (partition, pending.first, pending.last) == (0, 0, 2)  # offsets still consumed
    assert [e.event_id for _, e in pending.records] == ["bob-e1", "alice-e2"]
