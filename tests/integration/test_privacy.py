"""The right to erasure: ``EventProducer.delete_user()`` against a real worker, its RocksDB and
its changelog topic."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.schemas import ShopEvent
from streamrec.streams.tables import USERS_CHANGELOG_CONFIG
from streamrec.streams.topics import create_topics
from tests.integration.worker_harness import changelog, start_worker, state_of

DEADLINE_S = 90.0


def ev(user: str, item: str, type_: str = "view") -> ShopEvent:
    return ShopEvent(
        event_id=f"{user}-ev-{uuid.uuid4().hex[:10]}",
        user_id=user,
        session_id=f"{user}-s",
        item_id=item,
        type=type_,
        ts=int(time.time() * 1000),
    )


def wait_until(check, what: str, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout}s")


def rocksdb_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "worker").rglob("*") if p.is_file()]


def changelog_configs(settings) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": settings.resolved_bootstrap()})
    res = ConfigResource(ConfigResource.Type.TOPIC, f"{settings.app_id}-users-changelog")
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(timeout=30).items()}


@pytest.mark.slow
def test_deleted_user_leaves_nothing_in_state_http_changelog_or_a_restarted_worker(
    kafka_settings, sim_model, shop, tmp_path
):
    from rocksdict import AccessType, Options, Rdict

    settings = kafka_settings
    create_topics(settings)
    items = [c.item_id for c in shop.catalog() if c.in_stock]
    with EventProducer.from_settings(settings) as producer:
        for item in shop.catalog():
            producer.send_catalog(item)
    w = start_worker(settings, sim_model, tmp_path)
    w2 = None
    try:
        w.wait_healthy()
        alice = [ev("alice", items[0]), ev("alice", items[1], "purchase"), ev("alice", items[2])]
        bob = [ev("bob", items[3]), ev("bob", items[4])]
        with RecommendationSubscriber.from_settings(settings, user_ids={"alice", "bob"}) as sub:
            sub.wait_ready()
            with EventProducer.from_settings(settings) as producer:
                for e in alice + bob:
                    producer.send(e)
            last = {alice[-1].event_id, bob[-1].event_id}
            got: set[str] = set()
            wait_until(
                lambda: (r := sub.poll(0.5)) is not None and got.add(r.event_id) is None and last <= got,
                "recommendations for alice and bob",
            )
            assert w.get("/users/alice/recommendations")[0] == 200

            with EventProducer.from_settings(settings) as producer:
                req = producer.delete_user("alice")
            assert req.user_id == "alice"
            wait_until(lambda: w.get("/users/alice/recommendations")[0] == 404, "alice's list gone over HTTP")
            assert w.get("/users/bob/recommendations")[0] == 200  # other users untouched
            # and no recommendation for alice is sent any more
            assert all(r is None or r.user_id != "alice" for r in (sub.poll(0.5) for _ in range(4)))

        # the changelog's latest record for alice is a tombstone; bob's is his state
        log = wait_until(
            lambda: (c := changelog(settings)).get(b"alice", [b""])[-1] is None and c,
            "a tombstone for alice in the changelog",
        )
        assert log[b"alice"][-1] is None and len(log[b"alice"]) >= 2
        assert log[b"bob"][-1] is not None
        # and the changelog purges alice's old records within a known time (README, Guarantees)
        configs = changelog_configs(settings)
        assert {k: configs[k] for k in USERS_CHANGELOG_CONFIG} == USERS_CHANGELOG_CONFIG
        assert int(configs["max.compaction.lag.ms"]) + int(configs["delete.retention.ms"]) <= 48 * 3600 * 1000

        assert w.stop() == 0
        # nothing of alice in the worker's RocksDB: no key, and none of her data in any file on disk
        dbs = sorted((settings.data_dir / "worker").rglob("users-*.db"))
        assert dbs, list((settings.data_dir / "worker").rglob("*"))
        keys: set[bytes] = set()
        for path in dbs:
            db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
            try:
                # keys(), not iter(db): a raw-mode Rdict's __iter__ raises "raw mode only support bytes"
                keys |= {bytes(k) if not isinstance(k, bytes) else k for k in db.keys()}  # noqa: SIM118
            finally:
                db.close()
        assert keys and not any(b"alice" in k for k in keys) and any(b"bob" in k for k in keys), keys
        markers = [e.event_id.encode() for e in alice]
        for f in rocksdb_files(settings.data_dir):
            blob = f.read_bytes()
            assert not any(m in blob for m in markers), f"alice's data still in {f}"

        # a worker restored from the changelog alone (fresh data dir) knows nothing of alice
        w2 = start_worker(settings.model_copy(update={"data_dir": tmp_path / "fresh"}), sim_model, tmp_path)
        w2.wait_healthy()
        wait_until(lambda: w2.get("/users/bob/recommendations")[0] == 200, "bob restored")
        assert w2.get("/users/alice/recommendations")[0] == 404

        # alice comes back later: she starts from empty (no history, no purchases from before)
        again = ev("alice", items[5])
        with RecommendationSubscriber.from_settings(settings, user_ids={"alice"}) as sub:
            sub.wait_ready()
            with EventProducer.from_settings(settings) as producer:
                producer.send(again)
            wait_until(lambda: (r := sub.poll(0.5)) is not None and r.event_id == again.event_id, "alice's new list")
        fresh = wait_until(
            lambda: (v := changelog(settings)[b"alice"][-1]) is not None and state_of(v), "alice's new state"
        )
        assert [h[3] for h in fresh["h"]] == [again.event_id] and fresh["p"] == []
    finally:
        w.kill()
        if w2 is not None:
            w2.stop()
