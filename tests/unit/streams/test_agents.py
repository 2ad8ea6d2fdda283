"""The events agent's batch logic without a broker: a real app (memory store), a real tiny model
and FAISS index, real Faust events; recommendations and dead letters go to in-memory channels."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import numpy as np
import pytest
from faust.events import Event
from faust.types import Message

from streamrec.config import Settings
from streamrec.indexer import ItemIndex
from streamrec.model.inference import Recommender
from streamrec.schemas import CatalogItem, DeadLetter, Profile, Recommendation, ShopEvent
from streamrec.serving.scorer import ServingModel
from streamrec.serving.state import UserState
from streamrec.streams.agents import BatchHandler
from streamrec.streams.app import create_app

TS = 1_767_225_600_000
TOPIC = "events"


def item(i: int) -> CatalogItem:
    colour = ("red", "green", "blue")[i % 3]
    return CatalogItem(
        item_id=f"i{i}",
        title=f"{colour} lipstick shade {i}",
        category="makeup",
        brand="Tiny",
        price=9.0,
        in_stock=True,
        updated_ts=TS,
    )


class Harness:
    def __init__(self, app: Any, handler: BatchHandler) -> None:
        self.app, self.handler = app, handler
        # a channel delivers to its subscribers; these two read what the handler sent
        self.recs_in = handler.recommendations.__aiter__()
        self.dlq_in = handler.dead_letters.__aiter__()
        self.pipeline = handler.pipeline
        self.users = handler.users
        self.offset = 0

    def event(self, raw: bytes, *, partition: int = 0, key: bytes = b"k") -> Event:
        self.offset += 1
        msg = Message(TOPIC, partition, self.offset, TS / 1000, 0, [], key, raw, None)
        return Event(self.app, key, raw, [], msg)

    def shop(
        self, user: str, i: int, type_: str = "view", n: int = 0, *, partition: int = 0, event_id: str | None = None
    ) -> Event:
        ev = ShopEvent(
            event_id=event_id or f"{user}-{i}-{type_}-{n}",
            user_id=user,
            session_id="s",
            item_id=f"i{i}",
            type=type_,
            ts=TS + n,
        )
        return self.event(ev.to_bytes(), partition=partition, key=user.encode())

    @staticmethod
    def drain(channel: Any) -> list[Any]:
        out = []
        while not channel.queue.empty():
            out.append(channel.queue.get_nowait())
        return out

    def recommendations(self) -> list[Recommendation]:
        return [Recommendation.from_bytes(e.value) for e in self.drain(self.recs_in)]

    def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(e.value) for e in self.drain(self.dlq_in)]

    def changelog(self) -> list[tuple[str, int]]:
        """(user, partition) of each table write queued for the changelog since the last call."""
        pending = self.app.producer.buffer.pending
        out = []
        while not pending.empty():
            fut = pending.get_nowait()
            key = fut.message.key
            out.append((json.loads(key) if isinstance(key, (str, bytes)) else key, fut.message.partition))
        return out


@pytest.fixture
async def harness(tiny_checkpoint, tmp_path):
    """A finalized app on the memory store with flow control resumed (Faust's own ``event_loop``
    test fixture fails on pytest-asyncio 1.x, see CONVENTIONS.md)."""
    settings = Settings(
        data_dir=tmp_path, app_id=f"unit-{uuid.uuid4().hex[:8]}", top_k=5, history_len=4, purchased_max=3, partitions=2
    )
    rec = Recommender.load(tiny_checkpoint, device="cpu")
    app, pipeline = create_app(settings, recommender=rec, index=ItemIndex(rec.dim, kind="flat"), store="memory://")
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    pipeline.apply_catalog([(f"i{i}", item(i)) for i in range(1, 25)])
    handler: BatchHandler = app.streamrec_handler
    # the table's changelog through Faust's producer buffer, where these tests read it (the
    # librdkafka path, streams.tables.UsersTable.direct, is tested in test_direct.py)
    handler.users.direct = None
    # the same handler, with in-memory channels as its sinks instead of Kafka topics
    handler = BatchHandler(
        pipeline=pipeline,
        users=handler.users,
        recommendations=app.channel(),
        dead_letters=app.channel(),
        profiles=app.channel(),
    )
    yield Harness(app, handler)
    pipeline._executor.shutdown(wait=True)


async def test_invalid_event_goes_to_dlq_with_reason_and_original_bytes(harness):
    bad = harness.event(b'{"user_id": "u1", "type": "explode"}', partition=1)
    await harness.handler.handle([bad, harness.shop("u1", 3)])
    [dl] = harness.dead_letters()
    assert dl.original_bytes() == b'{"user_id": "u1", "type": "explode"}'
    assert (dl.topic, dl.partition, dl.offset) == (TOPIC, 1, bad.message.offset) and dl.reason
    assert [r.user_id for r in harness.recommendations()] == ["u1"]  # the valid event is still answered
    assert harness.pipeline.metrics.value("streamrec_dlq_total") == 1


async def test_redelivered_event_is_applied_once(harness):
    first = harness.shop("u1", 3, n=1)
    await harness.handler.handle([first, harness.shop("u1", 3, n=1)])  # same event id twice in a batch
    await harness.handler.handle([harness.shop("u1", 3, n=1)])  # and again in a later batch
    state = UserState.from_json(harness.users.get("u1"))
    assert [h[3] for h in state.history] == ["u1-3-view-1"]
    assert harness.pipeline.metrics.value("streamrec_duplicate_events_total") == 2


async def test_state_written_once_per_user_per_batch_on_its_own_partition(harness):
    batch = [
        harness.shop("a", 1, n=1, partition=0),
        harness.shop("b", 2, n=2, partition=1),
        harness.shop("a", 4, n=3, partition=0),
        harness.shop("b", 5, "purchase", n=4, partition=1),
    ]
    harness.changelog()
    await harness.handler.handle(batch)  # the batch's last event is b's, on partition 1
    assert sorted(harness.changelog()) == [("a", 0), ("b", 1)]
    a = UserState.from_json(harness.users.get("a"))
    b = UserState.from_json(harness.users.get("b"))
    assert [h[0] for h in a.history] == ["i1", "i4"] and b.purchased == {"i5"}


async def test_recommendation_fields(harness):
    await harness.handler.handle(
        [harness.shop("u", 1, "purchase", n=1), harness.shop("u", 4, n=2), harness.shop("v", 2, n=3)]
    )
    recs = {r.user_id: r for r in harness.recommendations()}
    assert set(recs) == {"u", "v"}
    r = recs["u"]
    assert (r.event_id, r.event_ts) == ("u-4-view-2", TS + 2)  # answers the user's latest event
    assert r.model_version == harness.pipeline.model_version and r.produced_ts >= r.event_ts
    ids = [i.item_id for i in r.items]
    assert len(ids) == 5 == len(set(ids)) and "i1" not in ids  # top_k, no purchased item
    scores = [i.score for i in r.items]
    assert scores == sorted(scores, reverse=True)
    latest = UserState.from_json(harness.users.get("u")).latest
    assert latest["event_id"] == "u-4-view-2" and [i for i, _ in latest["items"]] == ids
    assert harness.pipeline.metrics.value("streamrec_recommendations_out_total") == 2


async def test_insights_reasons_and_profiles(harness):
    """Every item carries a reason; each user with a new event gets one profile message, equal to
    what the profile view serves."""
    from streamrec.streams.views import user_profile_body

    profiles_in = harness.handler.profiles.__aiter__()
    await harness.handler.handle(
        [harness.shop("u", 3, n=1), harness.shop("u", 6, "add_to_cart", n=2), harness.shop("v", 2, n=3)]
    )
    recs = {r.user_id: r for r in harness.recommendations()}
    assert all(i.reason is not None for r in recs.values() for i in r.items)
    assert {i.reason.kind for i in recs["u"].items} <= {"similar_to", "new_item", "popular"}
    assert all(i.reason.item_id in ("i3", "i6") for i in recs["u"].items if i.reason.kind == "similar_to")
    assert recs["u"].purchase_intent is None  # the tiny checkpoint has no intent model
    sent = [Profile.from_bytes(e.value) for e in harness.drain(profiles_in)]
    assert sorted(p.user_id for p in sent) == ["u", "v"]
    u = next(p for p in sent if p.user_id == "u")
    assert u.categories[0].name == "makeup" and u.event_id == "u-6-add_to_cart-2"
    body, status = user_profile_body(harness.pipeline, harness.users.get("u"), "u")
    assert status == 200 and Profile.from_dict(body).model_dump(exclude={"produced_ts"}) == u.model_dump(
        exclude={"produced_ts"}
    )
    assert user_profile_body(harness.pipeline, None, "nobody")[1] == 404
    latest = UserState.from_json(harness.users.get("u")).latest
    assert len(latest["reasons"]) == len(latest["items"])


async def test_profiles_are_sent_on_a_new_ranking_and_otherwise_at_most_every_interval(harness):
    """STREAMREC_PROFILE_PUBLISH_S (default 60 s): a new ranking is sent at once, an unchanged
    one at most once per interval, an empty profile never; the view is always current."""
    from streamrec.streams.views import user_profile_body

    pipeline = harness.pipeline
    assert pipeline.profile_publish_ms == 60_000
    perfume = [item(i).model_copy(update={"category": "perfume", "brand": "Scent"}) for i in (30, 31)]
    plain = item(40).model_copy(update={"category": "", "brand": ""})
    pipeline.apply_catalog([(c.item_id, c) for c in [*perfume, plain]])
    clock = [TS]
    harness.handler.now_ms = lambda: clock[0]
    profiles_in = harness.handler.profiles.__aiter__()

    async def step(at_s: float, *events: Any) -> list[Profile]:
        clock[0] = TS + int(at_s * 1000)
        await harness.handler.handle(list(events))
        return [Profile.from_bytes(e.value) for e in harness.drain(profiles_in)]

    [first] = await step(0, harness.shop("u", 3, n=1))  # none sent yet
    assert [c.name for c in first.categories] == ["makeup"]
    assert await step(1, harness.shop("u", 4, n=2)) == []  # same ranking, 1 s later
    [moved] = await step(2, harness.shop("u", 30, "purchase", n=3))  # perfume overtakes makeup
    assert [c.name for c in moved.categories] == ["perfume", "makeup"] and moved.event_id == "u-30-purchase-3"
    assert await step(3, harness.shop("u", 31, n=4)) == []  # perfume heavier still: same ranking
    body, _ = user_profile_body(pipeline, harness.users.get("u"), "u")
    assert Profile.from_dict(body).event_id == "u-31-view-4"  # the view is current all the same
    [later] = await step(62.5, harness.shop("u", 5, n=5))  # an interval after the last one sent
    body, _ = user_profile_body(pipeline, harness.users.get("u"), "u")
    assert later.model_dump(exclude={"produced_ts"}) == Profile.from_dict(body).model_dump(exclude={"produced_ts"})
    assert await step(70, harness.shop("w", 40, n=6)) == []  # no category or brand yet: nothing to say
    assert UserState.from_json(harness.users.get("u")).profile_sent == [TS + 62_500, later_sig(later)]


def later_sig(p: Profile) -> int:
    from streamrec.serving.profile import ranking_signature

    return ranking_signature([(c.name, c.weight) for c in p.categories], [(b.name, b.weight) for b in p.brands])


async def test_without_insights_the_previous_shape(harness):
    harness.handler.insights = False
    await harness.handler.handle([harness.shop("u", 3, n=1)])
    [r] = harness.recommendations()
    assert b"reason" not in r.to_bytes() and b"purchase_intent" not in r.to_bytes()


async def test_scoring_failure_dead_letters_the_events_and_keeps_state(harness):
    pipeline = harness.pipeline
    good = pipeline.model
    broken = ItemIndex(8, kind="flat")  # vectors of the wrong width: the search fails for real
    broken.upsert(["i1", "i2"], np.ones((2, 8), dtype=np.float32))
    pipeline.scorer.model = ServingModel(recommender=good.recommender, index=broken)  # the swap one-liner
    await harness.handler.handle([harness.shop("u", 1, n=1), harness.shop("v", 2, n=2)])
    dls = harness.dead_letters()
    assert len(dls) == 2 and all(d.reason.startswith("scoring failed: ") for d in dls)
    assert {ShopEvent.from_bytes(d.original_bytes()).user_id for d in dls} == {"u", "v"}
    assert harness.recommendations() == []
    assert [h[0] for h in UserState.from_json(harness.users.get("u")).history] == ["i1"]  # state kept
    pipeline.scorer.model = good  # the next batch scores again, with the state carried on
    await harness.handler.handle([harness.shop("u", 4, n=3)])
    [rec] = harness.recommendations()
    assert rec.event_id == "u-4-view-3"
    assert [h[0] for h in UserState.from_json(harness.users.get("u")).history] == ["i1", "i4"]


async def test_undecodable_stored_state_is_reset_not_dead_lettered(harness):
    as_current_event = harness.shop("u", 1, n=0)
    from streamrec.streams.agents import as_current

    as_current(as_current_event)
    harness.users["u"] = {"h": [["i1", "view"]], "p": 3}  # not this release's shape
    await harness.handler.handle([harness.shop("u", 2, n=1)])
    assert harness.dead_letters() == []
    assert [h[0] for h in UserState.from_json(harness.users.get("u")).history] == ["i2"]
    assert [r.user_id for r in harness.recommendations()] == ["u"]
    assert harness.pipeline.metrics.value("streamrec_state_resets_total") == 1


def test_metrics_text_reads_back_with_the_prometheus_parser(harness):
    from prometheus_client.parser import text_string_to_metric_families

    from streamrec.streams.views import metrics_text

    names = {f.name for f in text_string_to_metric_families(metrics_text(harness.pipeline))}
    assert {"streamrec_events_in", "streamrec_dlq", "streamrec_stage_seconds", "streamrec_model_info"} <= names


def test_processing_guarantee_setting_reaches_faust(tiny_checkpoint, tmp_path):
    rec = Recommender.load(tiny_checkpoint, device="cpu")
    for guarantee in ("at_least_once", "exactly_once"):
        settings = Settings(
            data_dir=tmp_path,
            app_id=f"unit-{uuid.uuid4().hex[:8]}",
            processing_guarantee=guarantee,
            commit_interval_s=0.25,
        )
        app, pipeline = create_app(settings, recommender=rec, index=ItemIndex(rec.dim, kind="flat"), store="memory://")
        assert app.conf.processing_guarantee.value == guarantee
        assert app.conf.broker_commit_interval == 0.25
        pipeline._executor.shutdown(wait=True)


async def run_overlapped(harness: Harness, batches: list[list[Any]]) -> list[tuple[str, str, list[str]]]:
    """Feed ``batches`` as the overlapping agent does (prepare N+1 while N is in flight); returns,
    for each ack, (event id, the state the table then holds: its history's event ids)."""
    handler = harness.handler
    acks: list[tuple[str, str, list[str]]] = []

    async def ack(event: Any) -> None:
        ev = ShopEvent.from_bytes(event.message.value)
        stored = UserState.from_json(harness.users.get(ev.user_id))
        acks.append((ev.event_id, ev.user_id, [h[3] for h in stored.history]))

    for batch in batches:
        prepared = await handler.prepare(batch, overlay=handler.inflight_states)
        await handler.wait_inflight()
        handler.start(prepared, ack)
    await handler.wait_inflight()
    return acks


async def test_overlapped_batches_read_the_batch_in_flight_and_ack_only_what_is_written(harness):
    """A user in two overlapping batches: the second starts from the first's state (not from the
    table, which does not have it yet), carries the recommendation the first one published, and
    each event is acknowledged only once its state is in the table and its recommendation sent."""
    harness.pipeline.trigger_types = frozenset({"view"})  # a cart below publishes nothing
    first = [harness.shop("u", 1, n=1), harness.shop("u", 2, n=2), harness.shop("v", 3, n=3)]
    second = [harness.shop("u", 4, n=4), harness.shop("v", 5, "add_to_cart", n=5)]
    third = [harness.shop("w", 6, n=6)]
    acks = await run_overlapped(harness, [first, second, third])

    assert [a[0] for a in acks] == [ShopEvent.from_bytes(e.value).event_id for e in first + second + third]
    for event_id, _user, stored in acks:  # the table held the event when it was acknowledged
        assert event_id in stored
    u = UserState.from_json(harness.users.get("u"))
    v = UserState.from_json(harness.users.get("v"))
    assert [h[0] for h in u.history] == ["i1", "i2", "i4"] and [h[0] for h in v.history] == ["i3", "i5"]
    recs = harness.recommendations()
    assert [(r.user_id, r.event_id) for r in recs] == [
        ("u", "u-2-view-2"),
        ("v", "v-3-view-3"),
        ("u", "u-4-view-4"),
        ("w", "w-6-view-6"),
    ]
    assert u.latest["event_id"] == "u-4-view-4"
    # v's cart published nothing: v keeps the list (and the profile record) the first batch sent
    assert v.latest is not None and v.latest["event_id"] == "v-3-view-3"
    assert v.profile_sent is not None


async def test_overlapped_batches_match_one_batch_at_a_time(harness):
    """The same events give the same stored states and recommendations with or without overlap."""
    harness.pipeline.trigger_types = frozenset({"view", "purchase"})
    clock = [TS]
    harness.handler.now_ms = lambda: clock[0]

    def batches(prefix: str) -> list[list[Any]]:
        n = iter(range(1000))
        return [
            [harness.shop(f"{prefix}{u}", (u * 7 + k) % 24 + 1, t, n=next(n)) for u, k, t in rows]
            for rows in (
                [(1, 0, "view"), (2, 1, "view"), (1, 2, "add_to_cart")],
                [(1, 3, "purchase"), (3, 4, "view")],
                [(2, 5, "add_to_cart"), (1, 6, "view"), (3, 7, "view")],
                [(2, 8, "view")],
            )
        ]

    for batch in batches("seq"):
        await harness.handler.handle(batch)
    sequential = harness.recommendations()
    await run_overlapped(harness, batches("ovl"))
    overlapped = harness.recommendations()

    def shape(r: Recommendation) -> tuple[Any, ...]:
        return (r.user_id[3:], r.event_id[3:], [(i.item_id, round(i.score, 5)) for i in r.items])

    assert [shape(r) for r in overlapped] == [shape(r) for r in sequential]
    for u in (1, 2, 3):
        a = UserState.from_json(harness.users.get(f"seq{u}")).to_json()
        b = UserState.from_json(harness.users.get(f"ovl{u}")).to_json()
        for d in (a, b):
            d["h"] = [h[:3] for h in d["h"]]
            if d["r"]:
                d["r"] = {k: v for k, v in d["r"].items() if k != "event_id"}
        assert a == b


async def test_a_batch_in_flight_that_cannot_produce_is_never_acknowledged(harness, caplog):
    """A produce error raises (the batch is redelivered): its events are not acknowledged, and
    the error comes out of the next wait. It is logged at once in one line; its traceback comes
    with the raise (logged by Faust's agent), not twice."""

    class Down:
        async def send(self, *, key: bytes, value: bytes) -> None:
            raise ConnectionError("broker gone")

    harness.handler.recommendations = Down()
    acked: list[Any] = []

    async def ack(event: Any) -> None:
        acked.append(event)

    handler = harness.handler
    with caplog.at_level(logging.ERROR, logger="streamrec.streams.agents"):
        handler.start(await handler.prepare([harness.shop("u", 1, n=1)]), ack)
        with pytest.raises(ConnectionError):
            await handler.wait_inflight()
    assert acked == []
    failed = [r for r in caplog.records if "batch failed" in r.getMessage()]
    assert len(failed) == 1 and "ConnectionError: broker gone" in failed[0].getMessage()
    assert failed[0].exc_info is None
    await handler.wait_inflight()  # nothing in flight any more


def test_metrics_can_be_restricted_to_named_samples(harness):
    """/metrics?name[]=...: only the samples named (Prometheus's filter), so that a poll of one
    counter does not render every histogram; the names read from a request are bounded."""
    from multidict import MultiDict
    from prometheus_client.parser import text_string_to_metric_families

    from streamrec.streams.views import MAX_METRIC_NAME_LEN, MAX_METRIC_NAMES, metric_names, metrics_text

    only = metrics_text(harness.pipeline, names=["streamrec_events_in_total"])
    samples = [s.name for f in text_string_to_metric_families(only) for s in f.samples]
    assert samples == ["streamrec_events_in_total"]
    assert len(metrics_text(harness.pipeline)) > 20 * len(only)
    query = MultiDict([("name[]", "a" * 1000)] + [("name[]", f"n{k}") for k in range(100)] + [("x", "y")])
    got = metric_names(query)
    assert len(got) == MAX_METRIC_NAMES and len(got[0]) == MAX_METRIC_NAME_LEN
    assert metric_names(MultiDict()) == [] and metric_names({}) == []
