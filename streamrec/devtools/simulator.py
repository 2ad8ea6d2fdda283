"""A synthetic shop: a catalog and users whose browsing looks like real traffic.

Why synthetic data at all: the pipeline (Kafka -> worker -> recommendations) needs a load that
has the *shape* of a shop's traffic -- a few hot items and a long tail, users with tastes,
sessions that move from item to similar item, a view -> cart -> purchase funnel, new items
appearing mid-stream -- and it needs it reproducibly, so that a failing run can be replayed.
Everything here is a pure function of ``seed`` (no wall clock, no global random state), except
the timestamps of a live run, which take the current time so that end-to-end latency can be
measured from ``ts``.

>>> sim = ShopSimulator(seed=1, n_items=50, n_users=10)
>>> len(sim.catalog()), sim.catalog()[0].item_id
(50, 'sku-000001')
>>> [e.type for e in sim.events(3)][0]
'view'
>>> list(sim.events(5)) == list(ShopSimulator(seed=1, n_items=50, n_users=10).events(5))
True

Drift (``drift_every=N``, ``streamrec simulate --drift N``): every N events the shop enters a
new phase: every user's taste moves to other categories and brands, popularity is re-ranked and
``drift_new_items`` new items are listed as the most popular (a trend), so that a model trained
on earlier phases goes stale and a retrained one wins. Off by default; the default traffic is
unchanged (pinned by a digest test).

The catalog's names and item rule are in :mod:`streamrec.devtools.catalog`. The runner at the
bottom (:func:`run_simulation`) sends the catalog and then the events through an
:class:`~streamrec.client.EventProducer` at a fixed rate, with :func:`streamrec.devtools.pacing.emit`
(shared with :mod:`streamrec.devtools.replay`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamrec.devtools.catalog import MAX_BRANDS, MAX_CATEGORIES, make_brands, make_item
from streamrec.devtools.pacing import DEFAULT_BASE_TS_MS, EventSink, emit, wall_clock_ms
from streamrec.schemas import TS_MAX_MS, TS_MIN_MS, CatalogItem, ShopEvent

log = logging.getLogger(__name__)

#: Event types that signal interest in an item and so become items of a next-item sequence.
INTEREST_TYPES = frozenset({"view", "add_to_cart", "purchase"})

_PREFIX_RE = re.compile(r"^[!-~]{1,40}$")


# ----------------------------------------------------------------------------------------------
# the simulator


@dataclass
class _Session:
    """One user's visit; it lives in the traffic heap until it ends."""

    user: int
    session_id: str
    events_left: int  # views/cart actions still to come before checkout-or-leave
    last_item: int = -1
    cart: dict[int, int] = field(default_factory=dict)  # item -> quantity, insertion-ordered
    pending: deque[tuple[str, int, int]] = field(default_factory=deque)  # (type, item, qty)


class ShopSimulator:
    """Deterministic synthetic shop traffic (see the module docstring for why).

    Funnel rule (what the tests check): an item enters the cart only right after the user viewed
    it in the same session and only while it is in stock; ``remove_from_cart`` names an item in
    the cart; every ``purchase`` is of an item that is in that session's cart at checkout (added
    and not removed since). Checkout buys the whole cart, one purchase event per item.

    Ids: users ``user-000001``..., items ``sku-000001``... (new mid-stream items continue the
    numbering), sessions ``<prefix>-s<n>``, events ``<prefix>-e<n>``; ``prefix`` defaults to
    ``s<seed>`` -- pass ``id_prefix`` to keep two runs with the same seed apart on one topic.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        n_items: int = 500,
        n_users: int = 200,
        n_categories: int = 12,
        brands_per_category: int = 6,
        popularity_exponent: float = 1.0,  # Zipf exponent of item popularity (1.0: classic long tail)
        taste_concentration: float = 0.3,  # Dirichlet concentration: lower = narrower tastes
        out_of_stock_rate: float = 0.03,
        description_rate: float = 0.6,
        mean_session_events: float = 8.0,
        similar_next_rate: float = 0.6,  # chance the next view stays near the last item
        cart_rate: float = 0.15,  # chance a view of an in-stock item is followed by add_to_cart
        remove_rate: float = 0.05,
        checkout_rate: float = 0.5,  # chance a session with a non-empty cart ends in purchases
        new_item_rate: float = 0.0,  # chance per event that a brand-new item is listed first
        drift_every: int = 0,  # events per drift phase (0: no drift, the default traffic)
        drift_new_items: int = 10,  # trending items listed at each phase change (with drift)
        concurrent_sessions: int = 32,
        base_ts: int = DEFAULT_BASE_TS_MS,
        clock: Callable[[], int] | None = None,
        id_prefix: str | None = None,
    ) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}: must be a non-negative int")
        for name, value, lo in (
            ("n_items", n_items, 1),
            ("n_users", n_users, 1),
            ("brands_per_category", brands_per_category, 1),
            ("concurrent_sessions", concurrent_sessions, 1),
        ):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name}={value!r}: must be an int >= {lo}")
        if brands_per_category > MAX_BRANDS:
            raise ValueError(f"brands_per_category={brands_per_category!r}: at most {MAX_BRANDS}")
        if not 1 <= n_categories <= MAX_CATEGORIES:
            raise ValueError(f"n_categories={n_categories!r}: must be 1..{MAX_CATEGORIES}")
        for name, p in (
            ("out_of_stock_rate", out_of_stock_rate),
            ("description_rate", description_rate),
            ("similar_next_rate", similar_next_rate),
            ("cart_rate", cart_rate),
            ("remove_rate", remove_rate),
            ("checkout_rate", checkout_rate),
            ("new_item_rate", new_item_rate),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p!r}: must be a probability in [0, 1]")
        for name, value in (("drift_every", drift_every), ("drift_new_items", drift_new_items)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: must be an int >= 0")
        if not popularity_exponent >= 0 or not taste_concentration > 0 or not mean_session_events >= 1:
            raise ValueError(
                "popularity_exponent must be >= 0, taste_concentration > 0, "
                f"mean_session_events >= 1 (got {popularity_exponent!r}, "
                f"{taste_concentration!r}, {mean_session_events!r})"
            )
        if not TS_MIN_MS <= base_ts <= TS_MAX_MS - 10 * 365 * 86_400_000:
            raise ValueError(f"base_ts={base_ts!r}: must be epoch ms between 2000 and 2090")
        prefix = f"s{seed}" if id_prefix is None else id_prefix
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"id_prefix={prefix!r}: must be 1..40 printable non-space characters")
        self.seed = seed
        self.n_items = n_items
        self.n_users = n_users
        self.n_categories = n_categories
        self.popularity_exponent = popularity_exponent
        self.taste_concentration = taste_concentration
        self.mean_session_events = mean_session_events
        self.similar_next_rate = similar_next_rate
        self.cart_rate = cart_rate
        self.remove_rate = remove_rate
        self.checkout_rate = checkout_rate
        self.new_item_rate = new_item_rate
        self.drift_every = drift_every
        self.drift_new_items = drift_new_items
        self.out_of_stock_rate = out_of_stock_rate
        self.description_rate = description_rate
        self.concurrent_sessions = min(concurrent_sessions, max(1, n_users // 2))
        self.base_ts = base_ts
        self.clock = clock
        self.id_prefix = prefix

        rng = np.random.default_rng([seed, 0])
        self._brands = make_brands(rng, n_categories * brands_per_category, brands_per_category)
        # brands offered per category, as indices into self._brands (brands may span categories)
        self._cat_brands = [
            rng.choice(len(self._brands), size=brands_per_category, replace=False) for _ in range(n_categories)
        ]
        # category popularity, Zipf-like, in random order: the prior of every user's taste
        cat_w = 1.0 / np.arange(1, n_categories + 1) ** 0.7
        self._cat_prior = rng.permutation(cat_w / cat_w.sum())
        self._brand_premium = rng.lognormal(0.0, 0.25, size=len(self._brands))
        self._items: list[CatalogItem] = []
        self._item_cat: list[int] = []
        self._item_brand: list[int] = []
        for i in range(n_items):
            cat = int(rng.choice(n_categories, p=self._cat_prior))
            item, brand = self._make_item(rng, i, cat, base_ts)
            self._items.append(item)
            self._item_cat.append(cat)
            self._item_brand.append(brand)
        # heavy-tailed popularity: Zipf weights over a random ranking of the items
        ranks = rng.permutation(n_items) + 1
        self._popularity = (1.0 / ranks**popularity_exponent).tolist()
        rng_users = np.random.default_rng([seed, 2])
        self._user_activity = rng_users.lognormal(0.0, 1.0, size=n_users)  # some users shop a lot
        self._user_activity_cdf = np.cumsum(self._user_activity / self._user_activity.sum())
        self._user_ids = [f"user-{u + 1:06d}" for u in range(n_users)]

    # -- catalog ----------------------------------------------------------------------------

    def _make_item(self, rng: np.random.Generator, index: int, cat: int, ts: int) -> tuple[CatalogItem, int]:
        """A new item of category ``cat`` (and its brand's index), from this shop's brands."""
        return make_item(
            rng,
            index,
            cat,
            ts,
            brands=self._brands,
            cat_brands=self._cat_brands,
            brand_premium=self._brand_premium,
            description_rate=self.description_rate,
            out_of_stock_rate=self.out_of_stock_rate,
        )

    def catalog(self) -> list[CatalogItem]:
        """The initial catalog (items listed mid-stream by ``new_item_rate`` come from :meth:`stream`)."""
        return list(self._items[: self.n_items])

    # -- traffic ----------------------------------------------------------------------------

    def events(self, n: int | None = None) -> Iterator[ShopEvent]:
        """``n`` events (infinite when ``None``), users' sessions interleaved like real traffic.

        Each call starts over: the same simulator (or seed) gives the same events.
        """
        for rec in self.stream(n):
            if isinstance(rec, ShopEvent):
                yield rec

    def stream(self, n: int | None = None) -> Iterator[ShopEvent | CatalogItem]:
        """Like :meth:`events`, plus a :class:`CatalogItem` just before a new item's first event.

        ``n`` counts events only. This is what a live run sends, so that new items reach the
        catalog topic before anybody interacts with them (the zero-shot path).
        """
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ValueError(f"n={n!r}: must be a non-negative int or None")
        return _Traffic(self).run(n)


class _Traffic:
    """The mutable state of one pass over the traffic; :meth:`ShopSimulator.stream` makes a fresh one."""

    def __init__(self, sim: ShopSimulator) -> None:
        self.sim = sim
        self.rng = np.random.default_rng([sim.seed, 1])
        self.n_listed = sim.n_items  # items listed so far (new ones are appended)
        self.items = list(sim._items[: sim.n_items])
        self.item_cat = list(sim._item_cat[: sim.n_items])
        self.item_brand = list(sim._item_brand[: sim.n_items])
        self.popularity = list(sim._popularity)
        self.cat_items: list[np.ndarray] = []  # item indices per category
        self.cat_pop: list[np.ndarray] = []  # their popularity
        self.cat_brand: list[np.ndarray] = []  # their brand indices
        for c in range(sim.n_categories):
            self._index_category(c)
        self.tastes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.active: set[int] = set()
        self.heap: list[tuple[int, int, _Session]] = []
        self.tie = itertools.count()
        self.n_sessions = 0
        self.last_ts = 0
        self.phase = 0  # drift phase; 0 until the first drift_every events went out
        self.cat_perm = np.arange(sim.n_categories)  # category c is liked as much as cat_perm[c] was
        self.brand_perm = np.arange(len(sim._brands))

    def _index_category(self, c: int) -> None:
        members = np.array([i for i, ic in enumerate(self.item_cat) if ic == c], dtype=np.int64)
        while len(self.cat_items) <= c:
            self.cat_items.append(np.empty(0, dtype=np.int64))
            self.cat_pop.append(np.empty(0))
            self.cat_brand.append(np.empty(0, dtype=np.int64))
        self.cat_items[c] = members
        self.cat_pop[c] = np.array([self.popularity[i] for i in members])
        self.cat_brand[c] = np.array([self.item_brand[i] for i in members], dtype=np.int64)

    def _taste(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(category probabilities, brand multipliers) -- from the user's own seed, so they do not
        depend on the order users happen to arrive in."""
        if user not in self.tastes:
            sim = self.sim
            rng = np.random.default_rng([sim.seed, 3, user])
            pref = rng.dirichlet(sim.taste_concentration * sim.n_categories * sim._cat_prior)
            cats = 0.9 * pref + 0.1 * sim._cat_prior  # mostly own tastes, some exploring
            brands = 0.1 + rng.gamma(0.5, 2.0, size=len(sim._brands))  # a few favourite brands
            self.tastes[user] = (cats / cats.sum(), brands)
        return self.tastes[user]

    def _pick(self, candidates: np.ndarray, weights: np.ndarray, avoid: int) -> int:
        if len(candidates) == 0:
            return -1
        cdf = np.cumsum(weights)
        for _ in range(3):  # don't show the same item twice in a row if there is another
            j = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
            item = int(candidates[min(j, len(candidates) - 1)])
            if item != avoid or len(candidates) == 1:
                return item
        return item

    def _next_view(self, s: _Session) -> int:
        cats, brands = self._taste(s.user)
        if self.phase:  # drift: tastes moved to other categories and brands
            cats, brands = cats[self.cat_perm], brands[self.brand_perm]
        item = -1
        if s.last_item >= 0 and self.rng.random() < self.sim.similar_next_rate:
            c = self.item_cat[s.last_item]
            cand, pop, cb = self.cat_items[c], self.cat_pop[c], self.cat_brand[c]
            if self.rng.random() < 0.5:  # same brand too
                mask = cb == self.item_brand[s.last_item]
                if mask.sum() > 1:
                    cand, pop, cb = cand[mask], pop[mask], cb[mask]
            item = self._pick(cand, pop * brands[cb], s.last_item)
        while item < 0:  # from the user's tastes (a category may be empty in a tiny catalog)
            c = int(np.searchsorted(np.cumsum(cats), self.rng.random() * cats.sum(), side="right"))
            c = min(c, len(cats) - 1)
            item = self._pick(self.cat_items[c], self.cat_pop[c] * brands[self.cat_brand[c]], s.last_item)
        return item

    def _new_item(self) -> CatalogItem:
        sim = self.sim
        c = int(self.rng.choice(sim.n_categories, p=sim._cat_prior))
        item, brand = sim._make_item(self.rng, self.n_listed, c, self._now(self._sim_ts()))
        self.items.append(item)
        self.item_cat.append(c)
        self.item_brand.append(brand)
        # new items get attention: as popular as an item at the 5th percentile of the ranking
        self.popularity.append(float(np.quantile(self.popularity, 0.95)))
        self.n_listed += 1
        self._index_category(c)
        return item

    def _drift(self) -> list[CatalogItem]:
        """Enter the next drift phase: every user's category and brand preferences move to other
        categories and brands (one permutation for everyone: a season, a fashion), item
        popularity is re-ranked, and ``drift_new_items`` new items are listed as the most popular
        of all (a trend). A model trained before the change keeps recommending the old favourites.
        Returns the new items, to be sent before their first event."""
        sim = self.sim
        self.phase += 1
        rng = np.random.default_rng([sim.seed, 4, self.phase])
        shift = 1 + int(rng.integers(max(sim.n_categories - 1, 1)))  # a rotation: no category stays put
        self.cat_perm = (self.cat_perm + shift) % sim.n_categories
        self.brand_perm = self.brand_perm[rng.permutation(len(self.brand_perm))]
        ranks = rng.permutation(len(self.popularity)) + 1
        self.popularity = (1.0 / ranks**sim.popularity_exponent).tolist()
        new = []
        for _ in range(sim.drift_new_items):
            item = self._new_item()
            self.popularity[-1] = 2.0 * max(self.popularity)  # trending: above every old item
            new.append(item)
        for c in range(sim.n_categories):
            self._index_category(c)
        log.debug("simulator drift phase=%d category_shift=%d new_items=%d", self.phase, shift, len(new))
        return new

    def _sim_ts(self) -> int:
        return self.heap[0][0] if self.heap else self.sim.base_ts

    def _now(self, simulated: int) -> int:
        """The ts to stamp: simulated time, or the pluggable clock; never going backwards."""
        ts = simulated if self.sim.clock is None else int(self.sim.clock())
        self.last_ts = max(ts, self.last_ts)
        return self.last_ts

    def _start_session(self, at: int) -> None:
        sim = self.sim
        user = -1
        for _ in range(20):  # busy users are skipped: one session per user at a time
            u = int(np.searchsorted(sim._user_activity_cdf, self.rng.random(), side="right"))
            u = min(u, sim.n_users - 1)
            if u not in self.active:
                user = u
                break
        if user < 0:
            idle = [u for u in range(sim.n_users) if u not in self.active]
            user = idle[int(self.rng.integers(len(idle)))]
        self.n_sessions += 1
        length = 1 + int(self.rng.geometric(1.0 / sim.mean_session_events))
        s = _Session(user=user, session_id=f"{sim.id_prefix}-s{self.n_sessions:08d}", events_left=length)
        self.active.add(user)
        heapq.heappush(self.heap, (at, next(self.tie), s))

    def _step(self, s: _Session) -> tuple[str, int, int] | None:
        """The session's next action (type, item, quantity), or None when it is over."""
        rng = self.rng
        if s.pending:
            return s.pending.popleft()
        if s.events_left <= 0:
            if s.cart and rng.random() < self.sim.checkout_rate:
                s.pending.extend(("purchase", i, q) for i, q in s.cart.items())
                s.cart.clear()
                return s.pending.popleft()
            return None
        s.events_left -= 1
        last = s.last_item
        if last >= 0 and last not in s.cart and self.items[last].in_stock and rng.random() < self.sim.cart_rate:
            qty = 1 if rng.random() < 0.85 else 2
            s.cart[last] = qty
            return ("add_to_cart", last, qty)
        if s.cart and rng.random() < self.sim.remove_rate:
            victim = list(s.cart)[int(rng.integers(len(s.cart)))]
            return ("remove_from_cart", victim, s.cart.pop(victim))
        item = self._next_view(s)
        s.last_item = item
        return ("view", item, 0)

    def run(self, n: int | None) -> Iterator[ShopEvent | CatalogItem]:
        sim, rng = self.sim, self.rng
        for k in range(sim.concurrent_sessions):  # staggered arrivals
            self._start_session(sim.base_ts + int(rng.integers(0, 60_000)) + k)
        produced = 0
        while n is None or produced < n:
            at, _, s = heapq.heappop(self.heap)
            if sim.new_item_rate and rng.random() < sim.new_item_rate:
                heapq.heappush(self.heap, (at, next(self.tie), s))
                yield self._new_item()
                continue
            action = self._step(s)
            if action is None:  # session over; someone else arrives a little later
                self.active.discard(s.user)
                self._start_session(at + 1 + int(rng.exponential(30_000)))
                continue
            kind, item, qty = action
            produced += 1
            if sim.drift_every and produced > 1 and (produced - 1) % sim.drift_every == 0:
                yield from self._drift()  # every later choice follows the new phase
            it = self.items[item]
            yield ShopEvent(
                event_id=f"{sim.id_prefix}-e{produced:010d}",
                user_id=sim._user_ids[s.user],
                session_id=s.session_id,
                item_id=it.item_id,
                type=kind,  # type: ignore[arg-type]
                ts=self._now(at),
                price=None if kind == "view" else it.price,
                quantity=qty or None,
            )
            # dwell: seconds to a minute between actions, checkout clicks come fast
            dwell = 1_000 + int(rng.lognormal(math.log(15_000), 0.8)) if kind != "purchase" else 1_000
            heapq.heappush(self.heap, (at + dwell, next(self.tie), s))


# ----------------------------------------------------------------------------------------------
# dataset export


def interest_sequences(
    events: Iterable[ShopEvent], *, dedupe_consecutive: bool = True, with_types: bool = False
) -> dict[str, list[str]]:
    """Per-user item sequences of the interactions that signal interest (views, carts, purchases).

    ``with_types`` writes carts and purchases as ``item:add_to_cart`` / ``item:purchase`` (a
    bare item is a view), the token convention the model's loader reads. ``dedupe_consecutive``
    collapses a repeated token (without types: ``view X, add_to_cart X`` -> ``X``): a next-item
    model fed both would mostly learn that the next item is the one just seen.
    """
    seqs: dict[str, list[str]] = {}
    for e in events:
        if e.type not in INTEREST_TYPES:
            continue
        token = e.item_id if not with_types or e.type == "view" else f"{e.item_id}:{e.type}"
        seq = seqs.setdefault(e.user_id, [])
        if not (dedupe_consecutive and seq and seq[-1] == token):
            seq.append(token)
    return seqs


def write_dataset(
    sim: ShopSimulator,
    directory: str | Path,
    *,
    n_events: int,
    min_interactions: int = 3,
    dedupe_consecutive: bool = True,
    with_types: bool = False,
) -> tuple[Path, Path]:
    """Write ``sequences.txt`` and ``item_text.tsv`` in the format of ``data/beauty/``, and
    ``events.csv``: every event with its type, time and item category (the typed-events format
    of :mod:`streamrec.typed_events`, which ``streamrec train --events`` reads).

    Ids are the external ones (``user-000001 sku-000004 sku-000017 ...``): the model's loader
    treats ids as opaque strings, so no integer map is needed. Users with fewer than
    ``min_interactions`` items are left out (leave-one-out needs a train, a validation and a
    test item). ``item_text.tsv`` lists every item, including ones listed mid-stream.
    ``with_types`` / ``dedupe_consecutive``: see :func:`interest_sequences`.
    """
    if not isinstance(n_events, int) or n_events < 1:
        raise ValueError(f"n_events={n_events!r}: must be a positive int")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    items: list[CatalogItem] = list(sim.catalog())
    events: list[ShopEvent] = []
    for rec in sim.stream(n_events):
        (events if isinstance(rec, ShopEvent) else items).append(rec)  # type: ignore[arg-type]
    seqs = interest_sequences(events, dedupe_consecutive=dedupe_consecutive, with_types=with_types)
    seq_path, text_path = out / "sequences.txt", out / "item_text.tsv"
    kept = 0
    with seq_path.open("w", encoding="utf-8") as f:
        for user in sorted(seqs):
            if len(seqs[user]) >= min_interactions:
                f.write(user + " " + " ".join(seqs[user]) + "\n")
                kept += 1
    with text_path.open("w", encoding="utf-8") as f:
        f.write("item_id\ttitle\n")
        for it in items:
            f.write(f"{it.item_id}\t{' '.join(it.title.split())}\n")
    from streamrec.typed_events import write_events

    write_events(out / "events.csv", events, {it.item_id: it.category for it in items})
    log.info("dataset written dir=%s events=%d users=%d items=%d", out, len(events), kept, len(items))
    return seq_path, text_path


def run_simulation(
    producer: EventSink,
    sim: ShopSimulator,
    *,
    rate: float | None,
    duration: float | None,
    max_events: int | None,
    send_catalog: bool = True,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], int] | None = wall_clock_ms,
) -> int:
    """Send the catalog, then events at ``rate``/s until ``duration`` s or ``max_events``; flush.

    With neither limit it runs until ``stop`` is set (e.g. by the CLI's SIGINT handler) or an
    exception (KeyboardInterrupt) ends it; what was sent is flushed either way. Live events
    carry the current time as ``ts`` (see :func:`emit`). Returns the number of events sent.
    """
    if send_catalog:
        stamp = None if clock is None else int(clock())
        for item in sim.catalog():
            producer.send_catalog(item if stamp is None else item.model_copy(update={"updated_ts": stamp}))
        log.info("catalog sent items=%d", sim.n_items)
    return emit(
        producer,
        sim.stream(max_events),
        rate=rate,
        duration=duration,
        max_events=max_events,
        clock=clock,
        progress=progress,
        stop=stop,
    )
