"""Replay a real interaction dataset (the ``data/beauty/`` format, or typed events with
timestamps in the Taobao layout, :mod:`streamrec.typed_events`) as catalog items and events.

Why: the simulator's traffic has the right shape but invented tastes; replaying real sequences
through Kafka shows how the deployed model does on real behaviour, end to end. The files are read
with :func:`streamrec.datafiles.read_sequences` / :func:`~streamrec.datafiles.read_item_text`,
the same reader the offline model uses, so ids stay the same strings on both paths and a bad
file raises ``ValueError`` naming the file and line, before anything is sent.

>>> seqs = {"u1": ["1", "2", "3"], "u2": ["4", "5"]}
>>> [(e.user_id, e.item_id) for e in replay_events(seqs)]
[('u1', '1'), ('u2', '4'), ('u1', '2'), ('u2', '5'), ('u1', '3')]
>>> [it.title for it in catalog_from_dataset(["1", "2"], {"1": "Nail polish"})]
['Nail polish', '']
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from streamrec.datafiles import ID_RE, split_token
from streamrec.devtools.pacing import DEFAULT_BASE_TS_MS, EventSink, emit, wall_clock_ms
from streamrec.schemas import EVENT_TYPES, TS_MAX_MS, TS_MIN_MS, CatalogItem, ShopEvent
from streamrec.typed_events import SESSION_GAP_S, TypedEvent

log = logging.getLogger(__name__)

#: Longest title kept (the CatalogItem contract's limit); longer titles are cut, not refused.
MAX_TITLE_CHARS = 512
_PREFIX_RE = re.compile(r"^[!-~]{1,40}$")


def dataset_items(sequences: Mapping[str, list[str]], texts: Mapping[str, str] | None = None) -> list[str]:
    """Every item of the dataset, in order of first appearance (then text-only items)."""
    seen: dict[str, None] = {}
    for seq in sequences.values():
        seen.update(dict.fromkeys(split_token(t)[0] for t in seq))
    seen.update(dict.fromkeys(texts or ()))
    return list(seen)


def catalog_from_dataset(
    items: Iterable[str],
    texts: Mapping[str, str],
    *,
    updated_ts: int = DEFAULT_BASE_TS_MS,
) -> list[CatalogItem]:
    """Catalog items for ``items``: the title from ``texts``, or an empty title when there is none.

    An item without text keeps an empty title rather than a placeholder such as "item 123" or
    a category "unknown": :meth:`CatalogItem.text` is then empty, which is the honest signal for
    the model ("nothing to embed"), whereas a shared placeholder word would give all such items
    one meaningless text embedding. Datasets carry no category, brand or price: they are empty
    and 0.0, and every item is in stock.
    """
    out: list[CatalogItem] = []
    for item in dict.fromkeys(items):
        if not ID_RE.match(item):
            raise ValueError(f"item id {item[:40]!r}: must be 1..128 printable ASCII characters")
        out.append(
            CatalogItem(
                item_id=item,
                title=texts.get(item, "")[:MAX_TITLE_CHARS],
                category="",
                brand="",
                price=0.0,
                in_stock=True,
                updated_ts=updated_ts,
            )
        )
    return out


def replay_events(
    sequences: Mapping[str, list[str]],
    *,
    event_type: str = "purchase",
    start_ts: int = DEFAULT_BASE_TS_MS,
    step_ms: int = 1000,
    interleave: bool = True,
    id_prefix: str = "replay",
) -> Iterator[ShopEvent]:
    """The interactions as events, ``step_ms`` apart from ``start_ts``.

    ``interleave`` deals users round-robin (everyone's 1st item, then everyone's 2nd, ...) so
    that the stream looks like many users shopping at once, as live traffic does; without it
    users come one after another. Each user's order is kept either way and ``ts`` rises by
    ``step_ms`` per event. Each user is one session; ids are ``<prefix>-<user#>-<position>``
    (the user's line number from 1, and the item's position), so a replay is reproducible.
    A token's own type (``item:view``) wins over ``event_type``, which applies to bare items;
    reviews-style datasets such as Beauty record purchases, hence the default.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type={event_type!r}: must be one of {', '.join(EVENT_TYPES)}")
    if not isinstance(step_ms, int) or step_ms < 0:
        raise ValueError(f"step_ms={step_ms!r}: must be a non-negative int")
    if not _PREFIX_RE.match(id_prefix):
        raise ValueError(f"id_prefix={id_prefix!r}: must be 1..40 printable non-space characters")
    total = sum(len(s) for s in sequences.values())
    if not (start_ts >= TS_MIN_MS and start_ts + step_ms * total <= TS_MAX_MS):
        raise ValueError(f"start_ts={start_ts!r} with step_ms={step_ms} runs outside 2000..2100")
    users = list(sequences.items())

    def order() -> Iterator[tuple[int, str, int, str]]:
        if not interleave:
            for u, (user, seq) in enumerate(users):
                for pos, item in enumerate(seq):
                    yield u, user, pos, item
            return
        live = [(u, user, seq) for u, (user, seq) in enumerate(users) if seq]
        pos = 0
        while live:
            for u, user, seq in live:
                yield u, user, pos, seq[pos]
            pos += 1
            live = [x for x in live if len(x[2]) > pos]

    for k, (u, user, pos, token) in enumerate(order()):
        item, own_type = split_token(token)
        yield ShopEvent(
            event_id=f"{id_prefix}-{u + 1}-{pos + 1}",
            user_id=user,
            session_id=f"{id_prefix}-{u + 1}",
            item_id=item,
            type=own_type or event_type,  # type: ignore[arg-type]
            ts=start_ts + k * step_ms,
        )


def run_replay(
    producer: EventSink,
    sequences: Mapping[str, list[str]],
    texts: Mapping[str, str],
    *,
    rate: float | None,
    max_events: int | None,
    event_type: str = "purchase",
    duration: float | None = None,
    send_catalog: bool = True,
    interleave: bool = True,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], int] | None = wall_clock_ms,
) -> int:
    """Send the dataset's catalog, then its interactions at ``rate``/s; flush; return the count.

    Like :func:`streamrec.devtools.simulator.run_simulation`: events carry the send time as ``ts``
    (``clock=None`` keeps the replay's synthetic timestamps), and the run ends at
    ``max_events``, ``duration`` seconds, ``stop`` or the end of the data.
    """
    if send_catalog:
        stamp = DEFAULT_BASE_TS_MS if clock is None else int(clock())
        catalog = catalog_from_dataset(dataset_items(sequences, texts), texts, updated_ts=stamp)
        for item in catalog:
            producer.send_catalog(item)
        log.info("catalog sent items=%d untitled=%d", len(catalog), sum(1 for c in catalog if not c.title))
    events = replay_events(sequences, event_type=event_type, interleave=interleave)
    return emit(
        producer, events, rate=rate, duration=duration, max_events=max_events, clock=clock, progress=progress, stop=stop
    )


# -- typed, timestamped events (the Taobao layout, streamrec.typed_events) ----------------------------


def typed_catalog(users: Mapping[str, list[TypedEvent]], *, updated_ts: int = DEFAULT_BASE_TS_MS) -> list[CatalogItem]:
    """One catalog item per item of the file: its category id as the category (the file has no
    titles, brands or prices: empty and 0.0, every item in stock)."""
    cats: dict[str, str] = {}
    for seq in users.values():
        for e in seq:
            cats.setdefault(e.item_id, e.category)
    return [
        CatalogItem(item_id=i, title="", category=c, brand="", price=0.0, in_stock=True, updated_ts=updated_ts)
        for i, c in cats.items()
    ]


def typed_replay_events(
    users: Mapping[str, list[TypedEvent]], *, id_prefix: str = "replay", gap_s: int = SESSION_GAP_S
) -> Iterator[ShopEvent]:
    """Every event of the file in global time order (ties: by user, then the user's order),
    with its own type and timestamp; a user's session id changes after a gap longer than
    ``gap_s`` (the split the intent model was trained with). Ids are
    ``<prefix>-<user>-<n>`` (n-th event of the user) and ``<prefix>-<user>-s<k>``."""
    if not _PREFIX_RE.match(id_prefix):
        raise ValueError(f"id_prefix={id_prefix!r}: must be 1..40 printable non-space characters")
    order = sorted(((e.ts_ms, u, n) for u, seq in users.items() for n, e in enumerate(seq)))
    session_of: dict[str, tuple[int, int]] = {}  # user -> (session number, last ts)
    for ts, user, n in order:
        e = users[user][n]
        k, last = session_of.get(user, (0, -1))
        if last >= 0 and ts - last > gap_s * 1000:
            k += 1
        session_of[user] = (k, ts)
        uid = f"{id_prefix}-{user}-{n + 1}"
        yield ShopEvent(
            event_id=uid[:128],
            user_id=user,
            session_id=f"{id_prefix}-{user}-s{k + 1}"[:128],
            item_id=e.item_id,
            type=e.type,  # type: ignore[arg-type]  # checked against EVENT_TYPES when read
            ts=ts,
        )


def run_typed_replay(
    producer: EventSink,
    users: Mapping[str, list[TypedEvent]],
    *,
    rate: float | None,
    max_events: int | None,
    duration: float | None = None,
    send_catalog: bool = True,
    keep_time: bool = True,
    id_prefix: str = "replay",
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Send the file's catalog, then its events in time order at ``rate``/s; return the count.

    ``keep_time`` (the default) sends each event with its recorded timestamp, so that sessions,
    purchase intent and profile decay see the real gaps (a latency measured from ``ts`` is then
    meaningless); ``keep_time=False`` restamps events with the send time like the other runners.
    """
    if send_catalog:
        catalog = typed_catalog(users, updated_ts=wall_clock_ms())
        for item in catalog:
            producer.send_catalog(item)
        log.info("catalog sent items=%d", len(catalog))
    events = typed_replay_events(users, id_prefix=id_prefix)
    return emit(
        producer,
        events,
        rate=rate,
        duration=duration,
        max_events=max_events,
        clock=None if keep_time else wall_clock_ms,
        progress=progress,
        stop=stop,
    )
