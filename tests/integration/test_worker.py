"""The stream worker end to end: real Kafka, real `streamrec worker` processes, a trained model."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.schemas import DeadLetter, Recommendation, ShopEvent
from streamrec.streams.topics import create_topics
from tests.integration.worker_harness import changelog, start_worker, state_of

DEADLINE_S = 60.0


def ev(user: str, item: str, type_: str = "view", *, i: int | None = None) -> ShopEvent:
    return ShopEvent(
        event_id=f"{user}-{uuid.uuid4().hex[:10]}" if i is None else f"{user}-{i}",
        user_id=user,
        session_id=f"{user}-s1",
        item_id=item,
        type=type_,
        ts=int(time.time() * 1000),
    )


def wait_for(sub: RecommendationSubscriber, pred, timeout: float = DEADLINE_S) -> list[Recommendation]:
    """Collect recommendations until ``pred(collected)`` is true (or fail at the deadline)."""
    got: list[Recommendation] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = sub.poll(0.5)
        if rec is not None:
            got.append(rec)
            if pred(got):
                return got
    raise AssertionError(f"condition not met within {timeout}s; got {len(got)} recommendations")


def group_offsets(settings) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset, end offset) of each events partition for the worker group (committed < 0: none)."""
    c = Consumer(
        {"bootstrap.servers": settings.resolved_bootstrap(), "group.id": settings.app_id, "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(settings.topic_events, p) for p in range(settings.partitions)]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=15)}
        end = {tp.partition: c.get_watermark_offsets(tp, timeout=15)[1] for tp in tps}
    finally:
        c.close()
    return committed, end


def metric(w, name: str) -> int:
    """An unlabelled sample of the worker's /metrics (e.g. ``streamrec_events_in_total``)."""
    text = w.get("/metrics")[1]
    return int(
        next(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and not s.labels
        )
    )


def wait_group_members(settings, members: int, timeout: float = 120.0) -> None:
    """Wait until the worker group is stable with ``members`` members that each own events partitions."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.resolved_bootstrap()})
    deadline = time.monotonic() + timeout
    while True:
        desc = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=10)
        owners = [
            m for m in desc.members if any(tp.topic == settings.topic_events for tp in m.assignment.topic_partitions)
        ]
        if desc.state == ConsumerGroupState.STABLE and len(desc.members) == members == len(owners):
            return
        assert time.monotonic() < deadline, f"group {settings.app_id}: {desc.state}, {len(owners)} owners"
        time.sleep(0.2)


def setup_shop(settings, shop, catalog=None):
    create_topics(settings)
    with EventProducer.from_settings(settings) as producer:
        for item in catalog or shop.catalog():
            producer.send_catalog(item)


@pytest.fixture
def worker(kafka_settings, sim_model, shop, tmp_path):
    setup_shop(kafka_settings, shop)
    started = []

    def start(**env):
        w = start_worker(kafka_settings, sim_model, tmp_path, **env)
        started.append(w)
        w.wait_healthy()
        return w

    yield start
    for w in started:
        w.stop()


def test_session_gets_recommendation_without_purchased_items(kafka_settings, worker, shop):
    w = worker()
    items = [c.item_id for c in shop.catalog() if c.in_stock][:5]
    session = [
        ev("alice", items[0]),
        ev("alice", items[1]),
        ev("alice", items[1], "add_to_cart"),
        ev("alice", items[1], "purchase"),
        ev("alice", items[2]),
        ev("alice", items[0], "purchase"),
    ]
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids={"alice"}) as sub:
        sub.wait_ready()
        with EventProducer.from_settings(kafka_settings) as producer:
            for e in session:
                producer.send(e)
        last = session[-1].event_id
        recs = wait_for(sub, lambda got: any(r.event_id == last for r in got))
    final = next(r for r in recs if r.event_id == last)
    ids = [i.item_id for i in final.items]
    assert len(ids) == kafka_settings.top_k == len(set(ids))
    assert items[0] not in ids and items[1] not in ids  # purchased items are never recommended
    assert final.model_version and final.event_ts == session[-1].ts and final.produced_ts >= final.event_ts
    out_of_stock = {c.item_id for c in shop.catalog() if not c.in_stock}
    assert not out_of_stock & set(ids)
    # the latest list is also served over HTTP by the worker that owns the user
    status, body = w.get("/users/alice/recommendations")
    assert status == 200 and json.loads(body)["event_id"] == last
    status, metrics = w.get("/metrics")
    assert status == 200 and "streamrec_recommendations_out_total" in metrics


def test_malformed_burst_goes_to_dlq_and_valid_events_still_answered(kafka_settings, worker, shop):
    w = worker()
    item = shop.catalog()[0].item_id
    good = ev("bob", item)
    bad: list[tuple[bytes, str]] = [
        (b"not json at all", "not JSON"),
        (b"\xff\xfe\xfd", "not UTF-8"),
        (json.dumps({**good.to_dict(), "ts": "yesterday"}).encode(), "ts"),
        (json.dumps({**good.to_dict(), "type": "teleport"}).encode(), "type"),
        (json.dumps({**good.to_dict(), "user_id": "u" * 5000}).encode(), "user_id"),
        (b"[]", "JSON object"),
        (b"", "not JSON"),
        (b"{" * 70_000, "exceeds"),
    ]
    raw = Producer({"bootstrap.servers": kafka_settings.resolved_bootstrap(), "partitioner": "murmur2_random"})
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids={"bob"}) as sub:
        sub.wait_ready()
        raw.produce(kafka_settings.topic_events, key=b"bob", value=ev("bob", item).to_bytes())
        for value, _ in bad:
            raw.produce(kafka_settings.topic_events, key=b"bob", value=value)
        raw.produce(kafka_settings.topic_events, key=b"bob", value=good.to_bytes())
        raw.flush(10)
        wait_for(sub, lambda got: any(r.event_id == good.event_id for r in got))
    c = Consumer(
        {
            "bootstrap.servers": kafka_settings.resolved_bootstrap(),
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([kafka_settings.topic_dlq])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + 30
    while len(letters) < len(bad) and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            letters.append(DeadLetter.from_bytes(m.value()))
    c.close()
    assert len(letters) == len(bad)
    for (value, reason), letter in zip(bad, sorted(letters, key=lambda d: d.offset)):
        assert letter.original_bytes() == value  # the original bytes are kept, exactly
        assert reason in letter.reason, (reason, letter.reason)
        assert letter.topic == kafka_settings.topic_events
    assert w.get("/health")[0] == 200  # still running


#: A genuinely new title for each default simulator category (words its catalog never uses for
#: that category), so that only the text's meaning relates the new item to what a user likes.
NEW_TITLES = {
    "skincare": "Hyaluronic Acid Hydrating Face Cream",
    "haircare": "Keratin Smoothing Shampoo",
    "makeup": "Satin Finish Lip Gloss",
    "fragrance": "Sandalwood Eau de Parfum",
    "running shoes": "Marathon Road Running Sneaker",
    "sportswear": "Moisture-Wicking Running Shirt",
    "coffee": "Ethiopian Light Roast Coffee Beans",
    "tea": "Peppermint Herbal Tea Sachets",
    "kitchen": "Cast Iron Grill Pan",
    "home decor": "Soy Wax Scented Candle",
    "electronics accessories": "Wireless Charging Pad",
    "books": "Historical Fiction Novel",
}


def test_new_catalog_item_is_recommended_from_its_text(kafka_settings, worker, shop):
    """A fair zero-shot drill at the default TOP_K (10): a user who looks at one brand's items in one
    category; the shop lists a new item of that brand and category under a title its catalog never
    used, and one of a category she never looked at. No clicks on either, no retraining."""
    w = worker()
    top_k = 10
    catalog = shop.catalog()
    anchor = catalog[0]
    liked = [c for c in catalog if c.category == anchor.category and c.brand == anchor.brand and c.in_stock][:4]
    assert len(liked) >= 2
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids={"carol"}) as sub:
        sub.wait_ready()
        events = [ev("carol", c.item_id) for c in liked for _ in range(2)]
        with EventProducer.from_settings(kafka_settings) as producer:
            for e in events:
                producer.send(e)
        wait_for(sub, lambda got: any(r.event_id == events[-1].event_id for r in got))
        other = next(c for c in catalog if c.in_stock and c.category != anchor.category)
        now = int(time.time() * 1000)
        new_like = anchor.model_copy(
            update={
                "item_id": "sku-brand-new",
                "title": f"{anchor.brand} {NEW_TITLES[anchor.category]}",
                "description": None,
                "updated_ts": now,
            }
        )
        new_other = other.model_copy(
            update={
                "item_id": "sku-other-new",
                "title": f"{other.brand} {NEW_TITLES[other.category]}",
                "description": None,
                "updated_ts": now,
            }
        )
        titles = {c.title for c in catalog}
        assert new_like.title not in titles and new_other.title not in titles
        with EventProducer.from_settings(kafka_settings) as producer:
            producer.send_catalog(new_like)
            producer.send_catalog(new_other)
        deadline = time.monotonic() + 30
        while json.loads(w.get("/health")[1])["catalog_items"] < len(catalog) + 2:
            assert time.monotonic() < deadline, "the new catalog items never reached the worker's index"
            time.sleep(0.2)
        again = ev("carol", liked[0].item_id)
        with EventProducer.from_settings(kafka_settings) as producer:
            producer.send(again)
        recs = wait_for(sub, lambda got: any(r.event_id == again.event_id for r in got))
    after = [i.item_id for i in next(r for r in recs if r.event_id == again.event_id).items]
    assert len(after) == top_k
    assert "sku-other-new" not in after  # an unrelated new item is not pushed at her
    # issue #13: it ranked ~22nd with plain inner products (an xfail until the fourteenth session);
    # with cosine scores a title-only item's vector is as long as a clicked one's
    assert "sku-brand-new" in after, f"the new related item is not in the top {top_k}: {after}"


@pytest.mark.parametrize("overlap", ["false", "true"], ids=["one-batch-at-a-time", "overlap"])
def test_worker_killed_mid_stream_recovers_state_and_answers_every_event(
    kafka_settings, worker, shop, tmp_path, overlap
):
    """SIGKILL mid-stream under the default at_least_once: the restarted worker restores each
    user's state from the changelog and every event is answered by a list for it or a later event
    of its user, possibly twice (its exactly_once twin, below, allows no second answer). Also with
    overlapped batches (STREAMREC_OVERLAP_BATCHES), whose acknowledgements wait for the batch."""
    w = worker(STREAMREC_OVERLAP_BATCHES=overlap)
    catalog = [c.item_id for c in shop.catalog() if c.in_stock]
    users = [f"user{i}" for i in range(12)]
    bought = {u: catalog[i] for i, u in enumerate(users)}
    sent: list[ShopEvent] = []
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids=set(users)) as sub:
        sub.wait_ready()
        with EventProducer.from_settings(kafka_settings) as producer:
            for u in users:  # a purchase before the crash: must still be excluded after it
                sent.append(producer.send(ev(u, bought[u], "purchase")))
        wait_for(sub, lambda got: {r.user_id for r in got} == set(users))
        # No pause for an offset commit: the worker may die before its first one (the successor
        # then reads from the beginning; see test_worker_killed_before_its_first_commit_...).
        # a stream in flight: kill the worker while it is being consumed
        with EventProducer.from_settings(kafka_settings) as producer:
            for n in range(300):
                u = users[n % len(users)]
                sent.append(producer.send(ev(u, catalog[(n * 7) % len(catalog)], i=n)))
                if n == 150:
                    producer.flush()
                    w.kill()
        committed, end = group_offsets(kafka_settings)
        owed = sum(end[p] - max(committed[p], 0) for p in end)  # all of it if nothing was committed
        w2 = worker(STREAMREC_OVERLAP_BATCHES=overlap)
        last = {e.user_id: e for e in sent}
        try:
            got = wait_for(
                sub, lambda got: {r.event_id for r in got} >= {e.event_id for e in last.values()}, timeout=120
            )
        except AssertionError as exc:
            metrics = w2.get("/metrics")[1] if w2.proc.poll() is None else "(exited)"
            raise AssertionError(
                f"{exc}\n--- metrics ---\n{metrics}\n--- restarted worker log ---\n{w2.log()[-3000:]}"
            ) from None
    assert w2.proc.poll() is None and "Traceback" not in w2.log()
    consumed = metric(w2, "streamrec_events_in_total")  # nothing after the committed offsets skipped
    assert consumed >= owed, f"consumed {consumed} of {owed}; committed {committed}, end {end}"
    answered = {}
    for r in got:
        answered.setdefault(r.user_id, []).append(r)
    for e in sent:  # at-least-once: each event is answered by a list for it or a later event
        assert any(r.event_ts >= e.ts for r in answered.get(e.user_id, [])), e
    for u in users:  # the state from before the crash was recovered from the changelog
        final = next(r for r in got if r.event_id == last[u].event_id)
        assert bought[u] not in [i.item_id for i in final.items]


def read_answers(settings, event_ids: set[str], *, isolation: str, timeout: float = 120.0) -> Counter[str]:
    """How many recommendations each event got, read from the beginning of the topic with
    ``isolation.level=isolation`` until every id in ``event_ids`` is answered (then 3 s more)."""
    counts: Counter[str] = Counter()
    with RecommendationSubscriber.from_settings(
        settings, from_beginning=True, config={"isolation.level": isolation}
    ) as sub:
        deadline = time.monotonic() + timeout
        while not event_ids <= counts.keys() and time.monotonic() < deadline:
            if (rec := sub.poll(0.5)) is not None:
                counts[rec.event_id] += 1
        end = time.monotonic() + 3
        while time.monotonic() < end:
            if (rec := sub.poll(0.5)) is not None:
                counts[rec.event_id] += 1
    return counts


@pytest.mark.slow
def test_exactly_once_worker_killed_mid_stream_answers_every_event_exactly_once(kafka_settings, worker, shop):
    """The exactly_once twin of the drill above: a worker with STREAMREC_PROCESSING_GUARANTEE=
    exactly_once is SIGKILLed while its transaction holds answers not yet committed, and a
    restarted one takes over. One event per user per round (a round is answered before the next
    is sent), so each event has its own recommendation. A read_committed reader then sees exactly
    one recommendation per event (none lost, none twice), a read_uncommitted one also sees the
    killed transaction's aborted answers (the kill did catch work in flight), and every user's
    history in the changelog holds each of the user's events once."""
    eo = {"STREAMREC_PROCESSING_GUARANTEE": "exactly_once", "STREAMREC_COMMIT_INTERVAL_S": "10"}
    w = worker(**eo)
    catalog = [c.item_id for c in shop.catalog() if c.in_stock]
    users = [f"once{i}" for i in range(100)]
    rounds, kill_round = 3, 1
    sent: list[ShopEvent] = []
    # sees an answer as soon as it is written, before its transaction commits
    watch = RecommendationSubscriber.from_settings(
        kafka_settings,
        user_ids=set(users),
        config={"isolation.level": "read_uncommitted", "fetch.wait.max.ms": 10},
    )
    with watch, RecommendationSubscriber.from_settings(kafka_settings, user_ids=set(users)) as sub:
        watch.wait_ready()
        sub.wait_ready()
        with EventProducer.from_settings(kafka_settings) as producer:
            for r in range(rounds):
                batch = [producer.send(ev(u, catalog[(r * 31 + n) % len(catalog)], i=r)) for n, u in enumerate(users)]
                producer.flush()
                sent += batch
                ids = {e.event_id for e in batch}
                if r == kill_round:
                    # kill as soon as one answer of this round is written: its transaction (committed
                    # every 10 s) is then still open, holding answers and state changes
                    wait_for(watch, lambda got, ids=ids: any(x.event_id in ids for x in got))
                    w.kill()
                    w = worker(**eo)
                wait_for(sub, lambda got, ids=ids: {x.event_id for x in got} >= ids, timeout=120)
    assert w.proc.poll() is None and "Traceback" not in w.log()
    every = {e.event_id for e in sent}
    committed = read_answers(kafka_settings, every, isolation="read_committed")
    assert set(committed) == every  # none lost
    twice = {e: n for e, n in committed.items() if n > 1}
    assert not twice, f"{len(twice)} events answered more than once, e.g. {sorted(twice.items())[:3]}"
    uncommitted = read_answers(kafka_settings, every, isolation="read_uncommitted")
    aborted = sum(uncommitted.values()) - sum(committed.values())
    # (it would fail if a commit slipped in between the first answer and the kill, some tens of ms
    # of a 10 s interval: rather a rare failure than a drill that passes without testing anything)
    assert aborted > 0, "the kill caught no open transaction: nothing was tested"
    log = changelog(kafka_settings)
    for u in users:
        history = [h[3] for h in state_of(log[u.encode()][-1])["h"]]
        assert history == [f"{u}-{r}" for r in range(rounds)], (u, history)


def test_worker_killed_before_its_first_commit_successor_reads_every_event(kafka_settings, worker, shop):
    """The first worker of a brand-new group dies (SIGKILL) before it ever commits an offset: the
    restarted worker must re-read the events partitions from the beginning (auto_offset_reset is
    "earliest"), not from wherever the fetcher happened to be when the recovered streams resumed."""
    w = worker()
    catalog = [c.item_id for c in shop.catalog() if c.in_stock]
    users = [f"early{i}" for i in range(12)]
    changelog = [
        TopicPartition(f"{kafka_settings.app_id}-users-changelog", p) for p in range(kafka_settings.partitions)
    ]
    sent: list[ShopEvent] = []
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids=set(users)) as sub:
        sub.wait_ready()
        with EventProducer.from_settings(kafka_settings) as producer:
            for n in range(120):
                u = users[n % len(users)]
                sent.append(producer.send(ev(u, catalog[(n * 5) % len(catalog)], i=n)))
        # Kill as soon as some user state reached the changelog (so the successor has a table to
        # recover, the path that lost events) and well within the 1 s commit interval.
        probe = Consumer({"bootstrap.servers": kafka_settings.resolved_bootstrap(), "group.id": uuid.uuid4().hex})
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not any(probe.get_watermark_offsets(tp, timeout=5)[1] > 0 for tp in changelog):
                assert time.monotonic() < deadline, "the first worker never wrote user state"
                time.sleep(0.01)
            w.kill()
        finally:
            probe.close()
        committed, end = group_offsets(kafka_settings)
        assert sum(end.values()) == len(sent)
        # The successor owes every event after the group's committed offsets (all of them when
        # nothing was committed); at-least-once, so it may consume more, never fewer.
        owed = sum(end[p] - max(committed[p], 0) for p in end)
        w2 = worker()
        deadline = time.monotonic() + 90
        while (consumed := metric(w2, "streamrec_events_in_total")) < owed and time.monotonic() < deadline:
            time.sleep(0.5)
        lag = [x for x in w2.get("/metrics")[1].splitlines() if x.startswith("streamrec_consumer_lag")]
        assert consumed >= owed, (
            f"restarted worker consumed {consumed} of the {owed} events after the committed offsets "
            f"{committed} (end offsets {end}); {lag}"
        )
        last = {e.user_id: e.event_id for e in sent}
        wait_for(sub, lambda got: {r.event_id for r in got} >= set(last.values()))
    assert w2.proc.poll() is None and "Traceback" not in w2.log()


@pytest.mark.slow
def test_two_workers_share_partitions_and_serve_every_user(kafka_settings, worker, shop):
    w1 = worker()
    w2 = worker()
    users = [f"shopper{i}" for i in range(30)]
    item = next(c.item_id for c in shop.catalog() if c.in_stock)
    wait_group_members(kafka_settings, 2)  # both own events partitions before any event is sent
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids=set(users)) as sub:
        sub.wait_ready()
        with EventProducer.from_settings(kafka_settings) as producer:
            events = [producer.send(ev(u, item, "purchase")) for u in users]
        got = wait_for(sub, lambda got: {r.event_id for r in got} >= {e.event_id for e in events}, timeout=120)
    for r in got:
        assert item not in [i.item_id for i in r.items] and len(r.items) == kafka_settings.top_k
    counts = [metric(w, "streamrec_events_in_total") for w in (w1, w2)]
    assert all(c > 0 for c in counts), counts  # both workers took a share of the partitions
    for u in users[:5]:  # either worker answers for any user (routed to the owner)
        for w in (w1, w2):
            status, body = w.get(f"/users/{u}/recommendations")
            assert status == 200, body
