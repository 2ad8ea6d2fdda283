"""Two workers, one dies (SIGKILL): the survivor takes over its partitions within the session
timeout, restores their users from the changelog, and no user's history is lost (compared before
and after, record by record)."""

from __future__ import annotations

import time

import pytest

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.schemas import ShopEvent
from streamrec.streams.topics import create_topics
from tests.integration.worker_harness import changelog, start_worker, state_of


def ev(user: str, item: str, n: int) -> ShopEvent:
    return ShopEvent(
        event_id=f"{user}-{n}",
        user_id=user,
        session_id=f"{user}-s",
        item_id=item,
        type="view",
        ts=int(time.time() * 1000),
    )


def answer_all(settings, events: list[ShopEvent], timeout: float) -> None:
    want = {e.event_id for e in events}
    with RecommendationSubscriber.from_settings(settings, user_ids={e.user_id for e in events}) as sub:
        sub.wait_ready()
        with EventProducer.from_settings(settings) as producer:
            for e in events:
                producer.send(e)
        got: set[str] = set()
        deadline = time.monotonic() + timeout
        while not want <= got and time.monotonic() < deadline:
            rec = sub.poll(0.5)
            if rec is not None:
                got.add(rec.event_id)
    assert want <= got, f"{len(want - got)} events not answered within {timeout}s"


def histories(settings, users: list[str]) -> dict[str, list[str]]:
    log = changelog(settings)
    return {u: [h[3] for h in state_of(log[u.encode()][-1])["h"]] for u in users}


@pytest.mark.slow
def test_survivor_takes_over_and_every_history_is_kept(kafka_settings, sim_model, shop, tmp_path):
    settings = kafka_settings
    create_topics(settings)
    with EventProducer.from_settings(settings) as producer:
        for item in shop.catalog():
            producer.send_catalog(item)
    items = [c.item_id for c in shop.catalog() if c.in_stock]
    users = [f"fo{i}" for i in range(16)]
    w1 = start_worker(settings, sim_model, tmp_path)
    w2 = start_worker(settings, sim_model, tmp_path)
    try:
        w1.wait_healthy()
        w2.wait_healthy()
        for round_ in range(3):  # one event per user and round: each is answered on its own
            answer_all(settings, [ev(u, items[(i + round_) % len(items)], round_) for i, u in enumerate(users)], 120)
        shares = []
        for w in (w1, w2):
            text = w.get("/metrics")[1]
            shares.append(
                float(next(x for x in text.splitlines() if x.startswith("streamrec_events_in_total ")).split()[1])
            )
        assert all(s > 0 for s in shares), shares  # both owned partitions before the crash
        before = histories(settings, users)
        assert all(len(h) == 3 for h in before.values())

        w1.kill()
        # the survivor gets w1's partitions once the session times out (10 s), recovers their
        # users from the changelog, and answers everyone
        answer_all(settings, [ev(u, items[(i + 7) % len(items)], 3) for i, u in enumerate(users)], 180)
        after = histories(settings, users)
        for u in users:
            assert after[u] == before[u] + [f"{u}-3"], (u, before[u], after[u])
        for u in users:  # every user is now served by the survivor
            status, _ = w2.get(f"/users/{u}/recommendations")
            assert status == 200
        assert w2.proc.poll() is None and "Traceback" not in w2.log()
    finally:
        w1.kill()
        w2.stop()
