"""The training log: segment naming, de-duplication, durability across a crash, retention."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streamrec.model.trainlog import (
    SCHEMA,
    SegmentBuffer,
    TrainLog,
    parse_segment_name,
    segment_name,
)
from streamrec.schemas import ShopEvent

TOPIC = "shop.events"
T0 = 1_767_225_600_000


def ev(i: int, *, user: str = "u1", ts: int | None = None, eid: str | None = None) -> ShopEvent:
    return ShopEvent(
        event_id=eid or f"e{i}",
        user_id=user,
        session_id="s",
        item_id=f"i{i % 7}",
        type="view",
        ts=T0 + i * 1000 if ts is None else ts,
    )


def test_segment_names_sort_by_offset_and_round_trip() -> None:
    a = segment_name(TOPIC, 2, 9, 10)
    b = segment_name(TOPIC, 2, 100, 150)
    assert a == "shop.events+2+00000000000000000009+00000000000000000010.parquet"
    assert sorted([b, a]) == [a, b]
    assert parse_segment_name(a) == (TOPIC, 2, 9, 10)
    assert parse_segment_name(segment_name(TOPIC, 1, 0, 0, "abcdef01")) == (TOPIC, 1, 0, 0)
    for other in ("x.parquet", ".x.parquet.1-ab.tmp", a + ".corrupt", "shop.events+2+9+10.parquet"):
        assert parse_segment_name(other) is None
    with pytest.raises(ValueError, match="first <= last"):
        segment_name(TOPIC, 0, 5, 4)


def test_append_writes_a_parquet_segment_named_by_its_offsets(tmp_path: Path) -> None:
    log = TrainLog(tmp_path, topic=TOPIC)
    res = log.append(3, 10, 14, [(o, ev(o)) for o in range(10, 15)])
    assert res.written == 5 and res.duplicates == 0
    assert res.segment is not None and res.segment.name == segment_name(TOPIC, 3, 10, 14)
    table = pq.read_table(res.segment)
    assert table.schema.equals(SCHEMA)
    assert table.column("offset").to_pylist() == list(range(10, 15))
    assert set(table.column("partition").to_pylist()) == {3}
    assert log.next_offsets() == {3: 15}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_duplicates_within_a_batch_across_segments_and_after_reopen(tmp_path: Path) -> None:
    log = TrainLog(tmp_path, topic=TOPIC)
    first = log.append(0, 0, 3, [(0, ev(0)), (1, ev(1)), (2, ev(0, eid="e0")), (3, ev(2))])
    assert (first.written, first.duplicates) == (3, 1)
    again = log.append(1, 0, 1, [(0, ev(1)), (1, ev(5))])  # e1 came again on another partition
    assert (again.written, again.duplicates) == (1, 1)
    reopened = TrainLog(tmp_path, topic=TOPIC)
    only_dupes = reopened.append(0, 4, 5, [(4, ev(0)), (5, ev(5))])
    assert only_dupes.written == 0 and only_dupes.segment is None
    ids = reopened.read().column("event_id").to_pylist()
    assert sorted(ids) == ["e0", "e1", "e2", "e5"]


def test_crash_between_write_and_commit_resumes_after_the_segment(tmp_path: Path) -> None:
    """The segment is on disk but the offsets were never committed: a restart resumes after
    the segment, and if Kafka redelivers anyway (committed offset older) nothing doubles."""
    log = TrainLog(tmp_path, topic=TOPIC)
    log.append(0, 0, 99, [(o, ev(o)) for o in range(100)])
    del log  # killed before consumer.commit(...)
    restarted = TrainLog(tmp_path, topic=TOPIC)
    assert restarted.next_offsets() == {0: 100}
    redelivered = restarted.append(0, 50, 149, [(o, ev(o)) for o in range(50, 150)])
    assert (redelivered.written, redelivered.duplicates) == (50, 50)
    ids = restarted.read().column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 150


def test_crash_mid_write_leaves_no_visible_segment(tmp_path: Path) -> None:
    """A half-written temp file (the process died inside write_table) is removed on open and
    its events are not in the log (their offsets were not committed: Kafka redelivers them)."""
    log = TrainLog(tmp_path, topic=TOPIC)
    log.append(0, 0, 1, [(0, ev(0)), (1, ev(1))])
    half = tmp_path / ("." + segment_name(TOPIC, 0, 2, 3) + ".123-deadbeef.tmp")  # fsutil's temp name
    half.write_bytes(b"PAR1 half a file")
    reopened = TrainLog(tmp_path, topic=TOPIC)
    assert not half.exists()
    assert reopened.rows == 2 and reopened.next_offsets() == {0: 2}


def test_unreadable_segment_is_moved_aside(tmp_path: Path) -> None:
    bad = tmp_path / segment_name(TOPIC, 0, 0, 9)
    bad.write_bytes(b"not parquet at all")
    log = TrainLog(tmp_path, topic=TOPIC)
    assert log.rows == 0 and log.next_offsets() == {}
    assert (tmp_path / (bad.name + ".corrupt")).is_file()


def test_other_topics_and_files_are_ignored(tmp_path: Path) -> None:
    TrainLog(tmp_path, topic="other.events").append(0, 0, 0, [(0, ev(0))])
    (tmp_path / "README").write_text("x")
    log = TrainLog(tmp_path, topic=TOPIC)
    assert log.rows == 0


def test_read_orders_by_event_time(tmp_path: Path) -> None:
    log = TrainLog(tmp_path, topic=TOPIC)
    log.append(0, 0, 1, [(0, ev(0, ts=T0 + 50)), (1, ev(1, ts=T0 + 10))])
    log.append(1, 0, 0, [(0, ev(2, ts=T0 + 30))])
    assert log.read().column("ts").to_pylist() == [T0 + 10, T0 + 30, T0 + 50]
    assert log.read(columns=["event_id"]).column_names == ["event_id"]


def test_retention_by_age_drops_old_segments_and_their_ids(tmp_path: Path) -> None:
    log = TrainLog(tmp_path, topic=TOPIC, max_age_s=3600)
    old = log.append(0, 0, 1, [(0, ev(0, ts=T0)), (1, ev(1, ts=T0 + 1000))]).segment
    new = log.append(0, 2, 2, [(2, ev(2, ts=T0 + 7200_000))]).segment
    deleted = log.enforce_retention(now_ms=T0 + 7200_000)
    assert deleted == [old] and not old.exists() and new.exists()
    assert log.rows == 1 and "e0" not in log and "e2" in log
    assert log.next_offsets() == {0: 3}


def test_retention_by_size_drops_oldest_first(tmp_path: Path) -> None:
    log = TrainLog(tmp_path, topic=TOPIC)
    segs = [
        log.append(0, k * 10, k * 10 + 9, [(k * 10 + j, ev(k * 10 + j)) for j in range(10)]).segment for k in range(4)
    ]
    cap = sum(p.stat().st_size for p in segs[2:])
    capped = TrainLog(tmp_path, topic=TOPIC, max_bytes=cap)
    deleted = capped.enforce_retention(now_ms=T0)
    assert deleted == segs[:2]
    assert capped.bytes <= cap and capped.rows == 20
    assert sorted(capped.read().column("offset").to_pylist()) == list(range(20, 40))


def test_rows_written_since_counts_new_segments(tmp_path: Path) -> None:
    log = TrainLog(tmp_path, topic=TOPIC)
    seg = log.append(0, 0, 2, [(o, ev(o)) for o in range(3)]).segment
    mtime = seg.stat().st_mtime
    assert log.rows_written_since(mtime - 1) == 3
    assert log.rows_written_since(mtime + 1) == 0


def test_bad_arguments(tmp_path: Path) -> None:
    log = TrainLog(tmp_path, topic=TOPIC)
    with pytest.raises(ValueError, match="outside"):
        log.append(0, 5, 6, [(7, ev(7))])
    with pytest.raises(ValueError, match="max_age_s"):
        TrainLog(tmp_path, topic=TOPIC, max_age_s=0)


def test_buffer_counts_malformed_and_keeps_their_offsets() -> None:
    buf = SegmentBuffer(max_events=3, max_age_s=10)
    assert buf.add(1, 7, ev(7).to_bytes(), now=0.0) is None
    reason = buf.add(1, 8, b"{not json", now=0.1)
    assert reason and "JSON" in reason
    assert buf.add(1, 9, None, now=0.2) is not None
    assert buf.malformed == 2 and len(buf) == 3 and buf.due(now=0.2)
    [(partition, pending)] = buf.drain()
    assert (partition, pending.first, pending.last) == (1, 7, 9)
    assert [o for o, _ in pending.records] == [7]
    assert len(buf) == 0 and not buf.due(now=100)


def test_buffer_is_due_by_age() -> None:
    buf = SegmentBuffer(max_events=1000, max_age_s=5)
    buf.add(0, 0, ev(0).to_bytes(), now=10.0)
    assert not buf.due(now=14.0)
    assert buf.due(now=15.0)


def test_segment_survives_fsync_and_is_complete(tmp_path: Path) -> None:
    """The file renamed into place is a whole Parquet file (footer readable)."""
    log = TrainLog(tmp_path, topic=TOPIC)
    seg = log.append(0, 0, 999, [(o, ev(o, user=f"u{o % 13}")) for o in range(1000)]).segment
    assert pq.read_metadata(seg).num_rows == 1000
    assert os.path.getsize(seg) == log.bytes
