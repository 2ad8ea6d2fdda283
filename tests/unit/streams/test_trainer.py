"""The trainer's pure parts without a broker: ingest and flush into the log, malformed records
counted, the catalog followed, and the retraining cadence (interval, minimum events, full rounds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.config import Settings
from streamrec.schemas import CatalogItem, ShopEvent
from streamrec.streams.trainer import Trainer


@dataclass
class Msg:
    """The parts of a confluent_kafka.Message the trainer reads."""

    _value: bytes | None
    _offset: int
    _partition: int = 0
    _key: bytes = b"k"

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self._value

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return self._partition

    def topic(self) -> str:
        return "shop.events"

    def key(self) -> bytes:
        return self._key


def ev(i: int) -> bytes:
    return ShopEvent(
        event_id=f"e{i}", user_id=f"u{i % 3}", session_id="s", item_id=f"i{i}", type="view", ts=1_767_225_600_000 + i
    ).to_bytes()


def trainer(tmp_path: Path) -> Trainer:
    return Trainer(Settings(data_dir=tmp_path, retrain_interval_s=10, retrain_min_events=5))


def sample(t: Trainer, name: str, **labels: str) -> float:
    return t.metrics.registry.get_sample_value(name, labels) or 0.0


def test_ingest_flush_counts_malformed_and_duplicates(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    t.ingest([Msg(ev(0), 0), Msg(b"garbage", 1), Msg(ev(1), 2), Msg(ev(1), 3), Msg(None, 4)])
    t.flush()  # no consumer: nothing to commit, the segment is still written
    assert t.log.rows == 2 and t.log.next_offsets() == {0: 5}
    assert sample(t, "streamrec_trainer_malformed_total") == 2
    assert sample(t, "streamrec_trainer_duplicates_total") == 1
    assert sample(t, "streamrec_trainer_events_total") == 2
    assert sample(t, "streamrec_trainer_log_rows") == 2
    restarted = trainer(tmp_path)
    assert restarted.log.rows == 2 and sample(restarted, "streamrec_trainer_log_rows") == 2


def test_catalog_is_followed_with_tombstones(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    item = CatalogItem(
        item_id="i1",
        title="Red Lipstick",
        category="makeup",
        brand="B",
        price=3.0,
        in_stock=True,
        updated_ts=1_767_225_600_000,
    )
    t.follow_catalog([Msg(item.to_bytes(), 0, _key=b"i1"), Msg(b"bad", 1, _key=b"i2")])
    assert t.catalog == {"i1": item.text()}
    t.follow_catalog([Msg(None, 2, _key=b"i1")])
    assert t.catalog == {} and sample(t, "streamrec_trainer_catalog_items") == 0


@dataclass
class Eof(Msg):
    """librdkafka's partition-EOF event (``enable.partition.eof``): the reader is at the end."""

    def error(self) -> Any:
        from confluent_kafka import KafkaError

        return KafkaError(KafkaError._PARTITION_EOF)


def test_adapting_waits_for_the_whole_catalog_and_checks_each_version_once(tmp_path: Path) -> None:
    """The adapt check starts only once the catalog reader has reached the end of every catalog
    partition, and once per version."""
    t = trainer(tmp_path)
    assert not t.catalog_caught_up  # the reader is not opened yet
    t._catalog_pending = {0, 1}
    t.follow_catalog([Msg(b"bad", 0), Msg(None, 1, _key=b"i1"), Eof(None, 2)])
    t.maybe_adapt()
    assert not t.catalog_caught_up and t.job is None and "adapt_checked" not in t.state
    t.follow_catalog([Msg(None, 0, _partition=1, _key=b"i2"), Eof(None, 1, _partition=1)])
    assert t.catalog_caught_up
    t.maybe_adapt()  # no current version: nothing to check
    assert t.job is None and "adapt_checked" not in t.state
    t.state["adapt_checked"] = ["v0001-x", "v0002-x"]
    t.registry.current_version = lambda: "v0001-x"  # type: ignore[method-assign]
    t.maybe_adapt()  # checked already, e.g. rolled back to (the state survives a restart)
    assert t.job is None


def test_cadence_needs_the_interval_and_enough_new_events(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    start = t.next_check - 10
    assert t._due(start + 1) is None  # interval not over
    assert t._due(start + 11) is None  # over, but no new events
    t.ingest([Msg(ev(i), i) for i in range(6)])
    t.flush()
    assert t._due(start + 12) is None  # the next check is one interval after the last
    assert t._due(start + 21.5) is False  # a fine-tune round is due


def test_full_rounds_first_and_on_schedule(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, retrain_interval_s=10, retrain_min_events=1000, retrain_full_every=2)
    first = Trainer(s, full_first=True)
    now = first.next_check
    assert first._due(now) is True  # --full: right away, whatever the new events
    scheduled = Trainer(s)
    scheduled.state["rounds"] = 1  # the next round is the 2nd: full, without min events
    assert scheduled._due(scheduled.next_check) is True


def test_a_deletion_drops_buffered_events_and_purges_the_log(tmp_path: Path) -> None:
    from streamrec.schemas import UserDeletion

    t = trainer(tmp_path)
    t.ingest([Msg(ev(i), i) for i in range(6)])  # users u0, u1, u2
    t.flush()
    t.ingest([Msg(ev(i), i) for i in range(6, 9)])  # still buffered
    d = UserDeletion(user_id="u1", requested_ts=1_767_225_600_000 + 100)
    t.apply_deletions([Msg(d.to_bytes(), 0), Msg(b"not json", 1)])  # no consumer: no commit
    t.flush()
    users = t.log.read().column("user_id").to_pylist()
    assert "u1" not in users and sorted(set(users)) == ["u0", "u2"] and len(users) == 6
    assert sample(t, "streamrec_trainer_erased_events_total") == 3  # 2 logged + 1 buffered
    assert sample(t, "streamrec_trainer_deletions_total") == 1
    assert sample(t, "streamrec_trainer_malformed_total") == 1
