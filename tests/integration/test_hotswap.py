"""Hot swap in a real `streamrec worker` process on the real broker: a version announced on the
model-updates topic is built off the hot path and swapped in while events keep flowing; a version
that cannot be loaded is refused and the old one keeps serving."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streamrec.client import EventProducer, RecommendationSubscriber
from streamrec.model.registry import ModelRegistry
from streamrec.schemas import ModelUpdate, Recommendation, ShopEvent
from tests.integration.test_worker import metric, setup_shop
from tests.integration.worker_harness import WorkerProcess, start_worker

SWAP_DEADLINE_S = 120.0


def perturbed_copy(src: Path, dst: Path) -> Path:
    """Another model: the same checkpoint with its id embeddings scaled (different vectors)."""
    import torch

    from streamrec.model.checkpoint import load_checkpoint, save_checkpoint

    model, vocab = load_checkpoint(src)
    with torch.no_grad():
        model.id_emb.weight.mul_(1.5)
    save_checkpoint(model, vocab, dst, metrics={"note": "perturbed copy for the hot-swap test"})
    return dst


def announce(settings, version: str, path: Path | str) -> None:
    """Publish a ModelUpdate with a plain producer (what the trainer and `models promote` send)."""
    p = Producer({"bootstrap.servers": settings.resolved_bootstrap(), "acks": "all"})
    upd = ModelUpdate(version=version, path=str(path), metrics={}, created_ts=int(time.time() * 1000))
    p.produce(settings.topic_model_updates, key=b"current", value=upd.to_bytes())
    assert p.flush(15) == 0


def health(w: WorkerProcess) -> dict:
    return json.loads(w.get("/health")[1])


class Sender(threading.Thread):
    """Sends events continuously (one user per event: the worker answers each user's latest
    triggering event of a batch, so distinct users make "one answer per event" exact)."""

    def __init__(self, settings, items: list[str], rate: float = 25.0, prefix: str = "hs") -> None:
        super().__init__(daemon=True)
        self.settings, self.items, self.rate, self.prefix = settings, items, rate, prefix
        self.sent: list[tuple[float, ShopEvent]] = []  # (monotonic send time, event)
        self.stop = threading.Event()

    def run(self) -> None:
        with EventProducer.from_settings(self.settings) as producer:
            n = 0
            start = time.monotonic()
            while not self.stop.is_set():
                user = f"{self.prefix}{n}"
                e = ShopEvent(
                    event_id=f"{user}-e",
                    user_id=user,
                    session_id=f"{user}-s",
                    item_id=self.items[(n * 7) % len(self.items)],
                    type="view",
                    ts=int(time.time() * 1000),
                )
                producer.send(e)
                self.sent.append((time.monotonic(), e))
                n += 1
                time.sleep(max(0.0, start + n / self.rate - time.monotonic()))


def collect(sub: RecommendationSubscriber, got: list[Recommendation], until, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s ({len(got)} recommendations)"
        rec = sub.poll(0.2)
        if rec is not None:
            got.append(rec)


@pytest.fixture
def registry_worker(kafka_settings, sim_model, shop, tmp_path):
    """A worker serving the registry's current version (v1 = the simulator model)."""
    setup_shop(kafka_settings, shop)
    registry = ModelRegistry(kafka_settings.registry_dir)
    v1 = registry.register(sim_model)
    registry.promote(v1)
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        w = start_worker(kafka_settings, None, tmp_path)
        started.append(w)
        w.wait_healthy()
        return w

    yield registry, v1, start
    for w in started:
        w.stop()


def test_announced_version_is_swapped_in_while_events_flow_and_every_event_is_answered_once(
    kafka_settings, registry_worker, shop, tmp_path
):
    registry, v1, start = registry_worker
    w = start()
    assert health(w)["model_version"] == v1
    items = [c.item_id for c in shop.catalog() if c.in_stock]
    sender = Sender(kafka_settings, items)
    got: list[Recommendation] = []
    with RecommendationSubscriber.from_settings(kafka_settings) as sub:
        sub.wait_ready()
        sender.start()
        try:
            collect(sub, got, lambda: len(got) >= 40, 60, "recommendations before the swap")
            v2 = registry.register(perturbed_copy(Path(registry.current_path()), tmp_path / "v2"))
            registry.promote(v2)  # the registry first, then the announcement (as the trainer does)
            t_announced = time.monotonic()
            announce(kafka_settings, v2, registry.versions_dir / v2)
            swapped_at: list[float] = []

            def swapped() -> bool:
                if not swapped_at and health(w)["model_version"] == v2:
                    swapped_at.append(time.monotonic())
                return bool(swapped_at)

            collect(sub, got, swapped, SWAP_DEADLINE_S, "the worker never served v2")
            t_swapped = swapped_at[0]
            n_after = len(got)
            collect(sub, got, lambda: len(got) >= n_after + 60, 60, "recommendations after the swap")
        finally:
            sender.stop.set()
            sender.join(30)
        sent = {e.event_id: (t, e) for t, e in sender.sent}
        collect(sub, got, lambda: {r.event_id for r in got} >= set(sent), 90, "every event answered")
        time.sleep(2)  # a late duplicate would arrive now
        while (rec := sub.poll(0.5)) is not None:
            got.append(rec)
    counts: dict[str, int] = {}
    for r in got:
        counts[r.event_id] = counts.get(r.event_id, 0) + 1
    assert set(counts) == set(sent)
    assert all(c == 1 for c in counts.values()), {k: c for k, c in counts.items() if c != 1}
    by_event = {r.event_id: r for r in got}
    before = [by_event[i] for i, (t, _) in sent.items() if t < t_announced]
    after = [by_event[i] for i, (t, _) in sent.items() if t > t_swapped]
    assert before and after
    assert {r.model_version for r in before} == {v1}
    assert {r.model_version for r in after} == {v2}  # later recommendations carry the new version
    assert {r.model_version for r in got} == {v1, v2}
    h = health(w)
    assert h["model_swaps"] == 1 and h["model_refusals"] == 0 and h["model_swap_pending"] is None
    assert metric(w, "streamrec_model_swaps_total") == 1
    assert f'streamrec_model_info{{version="{v2}"}} 1.0' in w.get("/metrics")[1]
    assert w.proc.poll() is None and "Traceback" not in w.log()


def test_corrupt_or_missing_checkpoint_is_refused_and_the_old_version_keeps_serving(
    kafka_settings, registry_worker, shop, tmp_path
):
    registry, v1, start = registry_worker
    w = start()
    bad = registry.register(registry.current_path())
    weights = registry.versions_dir / bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a torn copy
    announce(kafka_settings, bad, registry.versions_dir / bad)
    deadline = time.monotonic() + SWAP_DEADLINE_S
    while metric(w, "streamrec_model_refusals_total") < 1:
        assert time.monotonic() < deadline, w.log()[-3000:]
        time.sleep(0.3)
    announce(kafka_settings, "v9999-20990101T000000Z", tmp_path / "no-such-version")
    while metric(w, "streamrec_model_refusals_total") < 2:
        assert time.monotonic() < deadline, w.log()[-3000:]
        time.sleep(0.3)
    h = health(w)
    assert h["model_version"] == v1 and h["model_refusals"] == 2 and h["model_swaps"] == 0
    log_text = w.log()
    assert f"model version refused version={bad}" in log_text and "corrupt" in log_text
    assert "model version refused version=v9999-20990101T000000Z" in log_text
    # still serving v1
    item = next(c.item_id for c in shop.catalog() if c.in_stock)
    with RecommendationSubscriber.from_settings(kafka_settings, user_ids={"after-refusal"}) as sub:
        sub.wait_ready()
        with EventProducer.from_settings(kafka_settings) as producer:
            e = producer.send(
                ShopEvent(
                    event_id="after-refusal-1",
                    user_id="after-refusal",
                    session_id="s",
                    item_id=item,
                    type="view",
                    ts=int(time.time() * 1000),
                )
            )
        got: list[Recommendation] = []
        collect(sub, got, lambda: any(r.event_id == e.event_id for r in got), 60, "answer after refusal")
    assert got[-1].model_version == v1
    assert w.proc.poll() is None


@pytest.mark.slow  # a real trainer round (~8 s of training) and a swap, on top of the worker start
def test_trainer_promotes_and_the_worker_swaps_while_every_event_is_answered(
    kafka_settings, registry_worker, shop, tmp_path
):
    """End to end with a short interval: worker and trainer run, events flow, the trainer promotes
    a version, the worker swaps to it, later recommendations carry it, and every event sent across
    the swap got its recommendation."""
    import uuid

    from streamrec.devtools.simulator import ShopSimulator
    from tests.integration.conftest import SIM
    from tests.integration.test_trainer import start_trainer, stop

    registry, v1, start = registry_worker
    sim = ShopSimulator(**SIM, id_prefix=f"e2e{uuid.uuid4().hex[:6]}")
    traffic = [r for r in sim.stream(2000) if isinstance(r, ShopEvent)]
    with EventProducer.from_settings(kafka_settings) as producer:  # what the trainer learns from
        for e in traffic:
            producer.send(e)
    w = start()
    assert health(w)["model_version"] == v1
    items = [c.item_id for c in shop.catalog() if c.in_stock]
    sender = Sender(kafka_settings, items, rate=20.0, prefix="e2e-probe")
    trainer_log = tmp_path / "trainer.log"
    got: list[Recommendation] = []
    with RecommendationSubscriber.from_settings(kafka_settings, from_beginning=True) as sub:
        sub.wait_ready()
        sender.start()
        trainer = start_trainer(
            kafka_settings,
            trainer_log,
            STREAMREC_RETRAIN_INTERVAL_S="3",
            STREAMREC_RETRAIN_MIN_EVENTS="500",
            STREAMREC_RETRAIN_TIME_BUDGET_S="8",
            STREAMREC_RETRAIN_GATE_TOLERANCE="1.0",
            STREAMREC_RETRAIN_HOLDOUT_USERS="60",
            STREAMREC_TRAINLOG_SEGMENT_S="0.5",
            STREAMREC_TRAINLOG_MAX_AGE_S="1e9",
        )
        try:
            swapped_at: list[float] = []

            def swapped() -> bool:
                assert trainer.poll() is None, trainer_log.read_text()[-4000:]
                if not swapped_at and health(w)["model_version"] != v1:
                    swapped_at.append(time.monotonic())
                return bool(swapped_at)

            collect(sub, got, swapped, 300, "the trainer's version never reached the worker")
            n_after = len(got)
            collect(sub, got, lambda: len(got) >= n_after + 40, 60, "recommendations after the swap")
        finally:
            sender.stop.set()
            sender.join(30)
            stop(trainer)
        v2 = health(w)["model_version"]
        probes = {e.event_id: (t, e) for t, e in sender.sent}
        want = set(probes) | {e.event_id for e in traffic}
        collect(sub, got, lambda: {r.event_id for r in got} >= set(probes), 90, "every probe answered")
        time.sleep(2)
        while (rec := sub.poll(0.5)) is not None:
            got.append(rec)
    assert v2 == registry.current_version() and v2 != v1
    assert re.search(rf"retrain decision=promoted .*version={v2}", trainer_log.read_text())
    counts: dict[str, int] = {}
    for r in got:
        counts[r.event_id] = counts.get(r.event_id, 0) + 1
    assert all(counts.get(i) == 1 for i in probes), {i: counts.get(i) for i in probes if counts.get(i) != 1}
    assert set(counts) <= want
    by_event = {r.event_id: r for r in got}
    later = [by_event[i] for i, (t, _) in probes.items() if t > swapped_at[0]]
    assert later and {r.model_version for r in later} == {v2}
    assert {r.model_version for r in got} == {v1, v2}
    # the simulated traffic (users with several events): each event answered by a list for it or
    # for a later event of the same user (the worker answers each user's latest event of a batch)
    answered: dict[str, list[Recommendation]] = {}
    for r in got:
        answered.setdefault(r.user_id, []).append(r)
    for e in traffic:
        assert any(r.event_ts >= e.ts for r in answered.get(e.user_id, [])), e
    h = health(w)
    assert h["model_swaps"] == 1 and h["model_refusals"] == 0
    assert w.proc.poll() is None and "Traceback" not in w.log()


def test_catalog_snapshot_reads_the_topic_to_its_end_with_updates_and_deletions(kafka_settings, shop):
    """What a swap builds from: the compacted catalog topic from the beginning to its end offsets."""
    from streamrec.streams.catalog import read_catalog_topic
    from streamrec.streams.topics import create_topics

    create_topics(kafka_settings)
    items = shop.catalog()[:50]
    with EventProducer.from_settings(kafka_settings) as producer:
        for it in items:
            producer.send_catalog(it)
        producer.send_catalog(items[0].model_copy(update={"title": "renamed", "in_stock": False}))
        producer.delete_item(items[1].item_id)
    changes = [c for chunk in read_catalog_topic(kafka_settings, chunk=7) for c in chunk]
    last: dict = {}
    for item_id, item in changes:
        last[item_id] = item
    assert len(changes) == 52 and len(last) == 50
    assert last[items[0].item_id].title == "renamed" and not last[items[0].item_id].in_stock
    assert last[items[1].item_id] is None
    assert all(last[it.item_id] == it for it in items[2:])
