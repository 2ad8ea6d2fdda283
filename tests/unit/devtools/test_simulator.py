"""The synthetic shop: deterministic, valid on the wire, shop-shaped, and paced correctly."""

from __future__ import annotations

import itertools
import re
import threading
from collections import Counter, defaultdict

import pytest

from streamrec.datafiles import read_item_text, read_sequences
from streamrec.devtools.pacing import DEFAULT_BASE_TS_MS, Pacer, emit
from streamrec.devtools.simulator import ShopSimulator, interest_sequences, run_simulation, write_dataset
from streamrec.schemas import CatalogItem, ShopEvent
from tests.unit.fakes import FakeProducer

N = 5000  # events per statistical check: ~0.1 s each


@pytest.fixture(scope="module")
def sim() -> ShopSimulator:
    return ShopSimulator(seed=7)


@pytest.fixture(scope="module")
def events(sim: ShopSimulator) -> list[ShopEvent]:
    return list(sim.events(N))


class FakeTime:
    """A monotonic clock that only moves when someone sleeps (or the test moves it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


# -- determinism and contracts ------------------------------------------------------------------


def test_same_seed_same_catalog_and_events() -> None:
    a, b = ShopSimulator(seed=3, n_items=80, n_users=30), ShopSimulator(seed=3, n_items=80, n_users=30)
    assert a.catalog() == b.catalog()
    assert list(a.events(500)) == list(b.events(500))
    assert list(a.events(500)) == list(a.events(500)), "each call starts over"


def test_different_seed_differs() -> None:
    a, b = ShopSimulator(seed=1, n_items=80, n_users=30), ShopSimulator(seed=2, n_items=80, n_users=30)
    assert [i.title for i in a.catalog()] != [i.title for i in b.catalog()]
    assert [(e.user_id, e.item_id) for e in a.events(200)] != [(e.user_id, e.item_id) for e in b.events(200)]


def test_everything_validates_against_the_contracts(sim: ShopSimulator, events: list[ShopEvent]) -> None:
    for item in sim.catalog():
        assert CatalogItem.from_bytes(item.to_bytes()) == item
        assert CatalogItem.from_dict(item.to_dict()) == item
    for e in events:
        assert ShopEvent.from_bytes(e.to_bytes()) == e


def test_catalog_shape(sim: ShopSimulator) -> None:
    items = sim.catalog()
    assert [i.item_id for i in items] == [f"sku-{k:06d}" for k in range(1, 501)]
    cats = Counter(i.category for i in items)
    assert len(cats) == 12
    assert all(i.title.startswith(i.brand + " ") for i in items)
    out = sum(not i.in_stock for i in items) / len(items)
    assert 0.0 < out < 0.1
    assert 0.3 < sum(i.description is not None for i in items) / len(items) < 0.9
    assert all(i.price > 0 for i in items)
    shoes = [i.price for i in items if i.category == "running shoes"]
    tea = [i.price for i in items if i.category == "tea"]
    if shoes and tea:  # per-category price levels
        assert sorted(shoes)[len(shoes) // 2] > sorted(tea)[len(tea) // 2]


def test_ids_unique_and_well_formed(events: list[ShopEvent]) -> None:
    assert len({e.event_id for e in events}) == len(events)
    assert all(re.fullmatch(r"user-\d{6}", e.user_id) for e in events)
    assert all(re.fullmatch(r"s7-s\d{8}", e.session_id) for e in events)
    sessions_users = defaultdict(set)
    for e in events:
        sessions_users[e.session_id].add(e.user_id)
    assert all(len(u) == 1 for u in sessions_users.values()), "a session belongs to one user"


# -- shop-shaped behaviour ------------------------------------------------------------------------


def test_timestamps_increase_per_user_from_the_fixed_base(events: list[ShopEvent]) -> None:
    last: dict[str, int] = {}
    for e in events:
        assert e.ts > last.get(e.user_id, 0)
        last[e.user_id] = e.ts
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events)), "traffic is in time order"
    assert DEFAULT_BASE_TS_MS <= events[0].ts < DEFAULT_BASE_TS_MS + 86_400_000


def test_funnel_rule(sim: ShopSimulator, events: list[ShopEvent]) -> None:
    """add_to_cart follows a view of that item (the session's latest); purchase and remove name
    an item in that session's cart; out-of-stock items are never carted."""
    in_stock = {i.item_id: i.in_stock for i in sim.catalog()}
    cart: dict[str, set[str]] = defaultdict(set)
    last_view: dict[str, str] = {}
    kinds = Counter(e.type for e in events)
    for e in events:
        s = e.session_id
        if e.type == "view":
            last_view[s] = e.item_id
            assert e.price is None
        elif e.type == "add_to_cart":
            assert last_view.get(s) == e.item_id and in_stock[e.item_id]
            assert e.item_id not in cart[s]
            cart[s].add(e.item_id)
        else:
            assert e.item_id in cart[s], f"{e.type} of {e.item_id} not in the cart of {s}"
            cart[s].discard(e.item_id)
        if e.type != "view":
            assert e.price == sim.catalog()[int(e.item_id[4:]) - 1].price and e.quantity
    assert kinds["view"] > kinds["add_to_cart"] > kinds["purchase"] > 0
    assert kinds["remove_from_cart"] > 0


def test_popularity_is_heavy_tailed(sim: ShopSimulator, events: list[ShopEvent]) -> None:
    views = Counter(e.item_id for e in events if e.type == "view")
    top = sum(c for _, c in views.most_common(sim.n_items // 10))
    assert top / sum(views.values()) > 0.35  # uniform would be 0.10


def test_sessions_are_coherent_and_users_have_tastes(sim: ShopSimulator, events: list[ShopEvent]) -> None:
    cat = {i.item_id: i.category for i in sim.catalog()}
    last: dict[str, str] = {}
    same = pairs = 0
    per_user: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.type != "view":
            continue
        if e.session_id in last:
            pairs += 1
            same += cat[last[e.session_id]] == cat[e.item_id]
        last[e.session_id] = e.item_id
        per_user[e.user_id][cat[e.item_id]] += 1
    assert same / pairs > 0.5  # random next item: about 1/12
    busy = [c for c in per_user.values() if sum(c.values()) >= 20]
    top_share = sum(c.most_common(1)[0][1] / sum(c.values()) for c in busy) / len(busy)
    assert top_share > 0.35


def test_new_items_are_listed_before_their_first_event() -> None:
    sim = ShopSimulator(seed=4, n_items=60, n_users=20, new_item_rate=0.02)
    known = {i.item_id for i in sim.catalog()}
    new = []
    for rec in sim.stream(2000):
        if isinstance(rec, CatalogItem):
            assert rec.item_id not in known
            known.add(rec.item_id)
            new.append(rec.item_id)
        else:
            assert rec.item_id in known
    assert new and new[0] == "sku-000061"
    assert len(sim.catalog()) == 60, "catalog() stays the initial catalog"
    assert list(sim.stream(300)) == list(ShopSimulator(seed=4, n_items=60, n_users=20, new_item_rate=0.02).stream(300))


def test_pluggable_clock_never_goes_backwards() -> None:
    times = iter([1_800_000_000_000, 1_800_000_000_500, 1_700_000_000_000] + [1_800_000_001_000] * 100)
    evs = list(ShopSimulator(seed=0, n_items=20, n_users=4, clock=lambda: next(times)).events(20))
    assert [e.ts for e in evs[:3]] == [1_800_000_000_000, 1_800_000_000_500, 1_800_000_000_500]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"n_items": 0},
        {"n_categories": 99},
        {"cart_rate": 1.5},
        {"id_prefix": "has space"},
        {"base_ts": 0},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ShopSimulator(**kwargs)


def test_tiny_shop_works() -> None:
    evs = list(ShopSimulator(seed=0, n_items=1, n_users=1, n_categories=1).events(50))
    assert len(evs) == 50 and {e.item_id for e in evs} == {"sku-000001"}


# -- dataset export ----------------------------------------------------------------------------------


def test_write_dataset_round_trips_through_the_replay_readers(tmp_path) -> None:
    sim = ShopSimulator(seed=5, n_items=100, n_users=40, new_item_rate=0.005)
    seq_path, text_path = write_dataset(sim, tmp_path / "ds", n_events=3000)
    seqs, texts = read_sequences(seq_path), read_item_text(text_path)
    assert text_path.read_text().splitlines()[0] == "item_id\ttitle"
    assert seqs and all(len(s) >= 3 for s in seqs.values())
    assert all(a != b for s in seqs.values() for a, b in itertools.pairwise(s)), "no immediate repeats"
    assert {i for s in seqs.values() for i in s} <= set(texts)
    assert len(texts) > 100, "items listed mid-stream have text too"
    assert all(texts[i.item_id] == i.title for i in sim.catalog())
    # the same sequences as the interest events of the stream, in order
    expected = interest_sequences(sim.events(3000))
    assert seqs == {u: s for u, s in expected.items() if len(s) >= 3}


def test_typed_dataset_replays_with_its_event_types(tmp_path) -> None:
    from streamrec.devtools.replay import replay_events

    sim = ShopSimulator(seed=6, n_items=60, n_users=20)
    seq_path, _ = write_dataset(sim, tmp_path, n_events=1500, with_types=True, min_interactions=1)
    seqs = read_sequences(seq_path)
    assert any(t.endswith(":add_to_cart") for s in seqs.values() for t in s)
    replayed = list(replay_events(seqs, event_type="view", interleave=False))
    original = [e for e in sim.events(1500) if e.type != "remove_from_cart"]
    for user in seqs:  # same items and types per user, minus immediate repeats
        got = [(e.item_id, e.type) for e in replayed if e.user_id == user]
        want = [(e.item_id, e.type) for e in original if e.user_id == user]
        assert got == [x for k, x in enumerate(want) if k == 0 or want[k - 1] != x]


def test_interest_sequences_skip_removals_and_repeats() -> None:
    def ev(i: int, item: str, kind: str) -> ShopEvent:
        return ShopEvent(
            event_id=f"e{i}", user_id="u", session_id="s", item_id=item, type=kind, ts=DEFAULT_BASE_TS_MS + i
        )

    evs = [
        ev(1, "a", "view"),
        ev(2, "a", "add_to_cart"),
        ev(3, "b", "view"),
        ev(4, "a", "remove_from_cart"),
        ev(5, "a", "view"),
        ev(6, "a", "purchase"),
    ]
    assert interest_sequences(evs) == {"u": ["a", "b", "a"]}
    assert interest_sequences(evs, dedupe_consecutive=False) == {"u": ["a", "a", "b", "a", "a"]}
    assert interest_sequences(evs, with_types=True) == {"u": ["a", "a:add_to_cart", "b", "a", "a:purchase"]}


# -- pacing and the runner ------------------------------------------------------------------------


def test_pacer_holds_the_rate_with_few_sleeps() -> None:
    t = FakeTime()
    pacer = Pacer(10_000.0, clock=t.clock, sleep=t.sleep)
    for _ in range(20_000):
        pacer.wait()
    assert t.now - 100.0 == pytest.approx(2.0, abs=0.01)
    assert len(t.sleeps) <= 20_000 / 50 + 1, "sleeps are batched, not one per event"


def test_pacer_slow_rate_spaces_every_event() -> None:
    t = FakeTime()
    pacer, sent_at = Pacer(2.0, clock=t.clock, sleep=t.sleep), []
    for _ in range(5):
        pacer.wait()
        sent_at.append(t.now - 100.0)
    assert sent_at == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_pacer_caps_the_catch_up_burst_after_a_stall() -> None:
    t = FakeTime()
    pacer = Pacer(1000.0, clock=t.clock, sleep=t.sleep, max_burst_s=0.1)
    pacer.wait()
    t.now += 10.0  # a 10 s stall: 10,000 events "owed"
    burst = 0
    while not t.sleeps:
        pacer.wait()
        burst += 1
    assert burst <= 1000 * 0.1 + 10


def test_pacer_without_rate_never_sleeps_and_rejects_bad_rates() -> None:
    t = FakeTime()
    pacer = Pacer(None, clock=t.clock, sleep=t.sleep)
    for _ in range(1000):
        pacer.wait()
    assert not t.sleeps
    for bad in (0, -5.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            Pacer(bad)


def test_run_simulation_sends_catalog_first_then_live_stamped_events() -> None:
    sim = ShopSimulator(seed=2, n_items=30, n_users=10)
    prod, counts = FakeProducer(), []
    now = iter(range(1_900_000_000_000, 1_900_000_100_000))
    n = run_simulation(
        prod, sim, rate=None, duration=None, max_events=200, clock=lambda: next(now), progress=counts.append
    )
    assert n == 200 and prod.flushes == 1 and counts[-1] == 200
    assert all(isinstance(r, CatalogItem) for r in prod.sent[:30])
    evs = [r for r in prod.sent[30:] if isinstance(r, ShopEvent)]
    assert len(evs) == 200
    assert all(e.ts >= 1_900_000_000_000 for e in evs) and all(a.ts <= b.ts for a, b in itertools.pairwise(evs))
    assert [(e.event_id, e.item_id) for e in evs] == [(e.event_id, e.item_id) for e in sim.events(200)]


def test_emit_stops_at_duration_and_on_stop_with_fake_time() -> None:
    t = FakeTime()
    sim = ShopSimulator(seed=2, n_items=30, n_users=10)
    n = emit(
        FakeProducer(),
        sim.stream(None),
        rate=100.0,
        duration=3.0,
        max_events=None,
        clock=None,
        monotonic=t.clock,
        sleep=t.sleep,
    )
    assert 295 <= n <= 302
    stop = threading.Event()
    stop.set()
    assert emit(FakeProducer(), sim.stream(None), rate=None, duration=None, max_events=None, stop=stop) == 0


def test_emit_keeps_own_timestamps_without_clock_and_flushes_on_error() -> None:
    sim = ShopSimulator(seed=2, n_items=30, n_users=10)
    prod = FakeProducer()
    emit(prod, sim.stream(50), rate=None, duration=None, max_events=None, clock=None)
    assert prod.sent == list(sim.events(50))

    def broken():
        yield from sim.events(3)
        raise RuntimeError("boom")

    prod = FakeProducer()
    with pytest.raises(RuntimeError, match="boom"):
        emit(prod, broken(), rate=None, duration=None, max_events=None)
    assert prod.flushes == 1 and len(prod.sent) == 3


def test_output_for_a_seed_is_unchanged() -> None:
    """The bytes a seed produces are pinned: refactors of the simulator must not change them
    (digests taken before the simulator was split into catalog / traffic / pacing modules; numpy's
    ``default_rng`` streams are stable across its releases)."""
    import hashlib

    sim = ShopSimulator(seed=7, n_items=120, n_users=40, new_item_rate=0.02)
    h = hashlib.sha256()
    for rec in [*sim.catalog(), *sim.stream(3000)]:
        h.update(rec.model_dump_json().encode())
    assert h.hexdigest() == "bcdf6fb7f8ddb5b137bb8435c7314520e9851baf0185f178cf6cacb9625545af"


def test_written_dataset_for_a_seed_is_unchanged(tmp_path) -> None:
    import hashlib

    s, t = write_dataset(ShopSimulator(seed=3, n_items=60, n_users=20), tmp_path, n_events=800, with_types=True)
    digest = hashlib.sha256(s.read_bytes() + t.read_bytes()).hexdigest()
    assert digest == "9d6ae6eb43d157010fd7323d68e882bbb4ed25ca2b3b5473b679a46f55940ada"
