"""Fuzz drill through a real worker: thousands of near-miss invalid events mixed with valid ones.
Every message is either served or in the dead-letter topic with a reason and its original bytes;
the worker never crashes; the counts add up exactly.

The CI size is ``STREAMREC_FUZZ_DRILL_N`` (default 5,000); the issue's 100k run is the same test
with ``STREAMREC_FUZZ_DRILL_N=100000``.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer

from streamrec.devtools.fuzz import catalog_fuzz_batch, fuzz_batch
from streamrec.errors import SchemaError
from streamrec.schemas import CatalogItem, DeadLetter, Recommendation, ShopEvent
from streamrec.schemas.contracts import MAX_ORIGINAL_BYTES
from tests.integration.worker_harness import produce_waiting, running_worker, shop_producer

N = int(os.environ.get("STREAMREC_FUZZ_DRILL_N", "5000"))


def read_until(settings, topic: str, done, timeout: float) -> list[bytes]:
    """Values of ``topic`` from the beginning until ``done(values)`` (then 3 s more: nothing extra)."""
    c = Consumer(
        {
            "bootstrap.servers": settings.resolved_bootstrap(),
            "group.id": f"read-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 4 * 1024 * 1024,
        }
    )
    c.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(out) and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg.value())
        end = time.monotonic() + 3
        while time.monotonic() < end:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg.value())
    finally:
        c.close()
    return out


def metric(w, name: str) -> int:
    text = w.get("/metrics")[1]
    return int(float(next(x for x in text.splitlines() if x.startswith(name + " ")).split()[1]))


@pytest.mark.slow
@pytest.mark.timeout(600 + N // 40)  # the full 100k drill takes longer than pytest's default 600 s
def test_fuzzed_stream_every_message_served_or_dead_lettered(kafka_settings, sim_model, shop, tmp_path):
    settings = kafka_settings
    catalog = [c.item_id for c in shop.catalog() if c.in_stock]
    raw = shop_producer(settings, shop, **{"message.max.bytes": 1_000_000})
    # the catalog topic is fuzzed too: a malformed item goes to the catalog dead-letter topic
    catalog_refused: list[bytes] = []
    # valid fuzzed items take the texts of the shop's items (text-cache hits: the drill's time goes
    # to the fuzzed messages, not to embedding thousands of random titles before any event is read)
    texts = [item.model_dump() for item in shop.catalog()]
    for i, m in enumerate(catalog_fuzz_batch(max(50, N // 20), seed=15, texts=texts)):
        raw.produce(settings.topic_catalog, key=f"fz-item-{i}".encode(), value=m.raw)
        try:
            CatalogItem.from_bytes(m.raw)
        except SchemaError:
            catalog_refused.append(m.raw)
    # near-1 MB messages: the largest Kafka accepts by default (a 1 MiB value cannot even be produced)
    batch = fuzz_batch(N, seed=14, item_ids=catalog, big_share=0.0)
    big = [b"{" + b'"user_id":"' + b"x" * 900_000 + b'"}', b"\xff" * 950_000]
    messages = [m.raw for m in batch] + big
    refused: list[bytes] = []
    last_valid: dict[str, str] = {}
    keys: list[bytes] = []
    for i, m in enumerate(messages):
        try:
            ev = ShopEvent.from_bytes(m)
        except SchemaError:
            refused.append(m)
            keys.append(str(i % 97).encode())  # any key: the worker never trusts it
        else:
            last_valid[ev.user_id] = ev.event_id
            keys.append(ev.user_id.encode())  # keyed by user, as a shop does: a user's events stay in order
    assert 0 < len(refused) < len(messages)

    with running_worker(settings, sim_model, tmp_path) as w:
        for i, m in enumerate(messages):
            produce_waiting(raw, settings.topic_events, keys[i], m, wait=0.1)
            raw.poll(0)
        assert raw.flush(120) == 0

        deadline = time.monotonic() + 600 + N // 100
        while metric(w, "streamrec_events_in_total") < len(messages) and time.monotonic() < deadline:
            assert w.proc.poll() is None, w.log()[-3000:]
            time.sleep(1)
        assert w.proc.poll() is None and "Traceback" not in w.log(), w.log()[-3000:]
        consumed = metric(w, "streamrec_events_in_total")
        dlq = metric(w, "streamrec_dlq_total")
        assert consumed == len(messages)
        assert dlq == len(refused)
        served = consumed - dlq
        assert served == len(messages) - len(refused)

        # the dead-letter topic holds each refused message once, with a reason and its bytes
        values = read_until(settings, settings.topic_dlq, lambda out: len(out) >= len(refused), 300)
        letters = [DeadLetter.from_bytes(v) for v in values]
        assert len(letters) == len(refused)
        assert all(dl.reason for dl in letters)
        # (originals beyond MAX_ORIGINAL_BYTES are kept truncated, and the reason says so)
        assert Counter(dl.original_bytes() for dl in letters) == Counter(m[:MAX_ORIGINAL_BYTES] for m in refused)
        assert sum("truncated" in dl.reason for dl in letters) == sum(len(m) > MAX_ORIGINAL_BYTES for m in refused)

        # and each malformed catalog item is in the catalog dead-letter topic, with its bytes
        assert metric(w, "streamrec_catalog_dlq_total") == len(catalog_refused) > 0
        values = read_until(settings, settings.topic_catalog_dlq, lambda out: len(out) >= len(catalog_refused), 120)
        letters = [DeadLetter.from_bytes(v) for v in values]
        assert Counter(dl.original_bytes() for dl in letters) == Counter(catalog_refused)
        assert all(dl.reason and dl.topic == settings.topic_catalog for dl in letters)

        # every user with valid events was answered for its latest one
        got: dict[str, set[str]] = {}
        owed = dict(last_valid)

        def all_answered(values: list[bytes]) -> bool:  # incremental: only the new values are parsed
            for v in values[all_answered.seen :]:
                r = Recommendation.from_bytes(v)
                got.setdefault(r.user_id, set()).add(r.event_id)
                if owed.get(r.user_id) == r.event_id:
                    del owed[r.user_id]
            all_answered.seen = len(values)
            return not owed

        all_answered.seen = 0
        all_answered(read_until(settings, settings.topic_recommendations, all_answered, 300))
        missing = [u for u, e in last_valid.items() if e not in got.get(u, ())]
        assert not missing, f"{len(missing)} users never answered, e.g. {missing[:3]}"
