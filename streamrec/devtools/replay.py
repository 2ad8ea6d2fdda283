"""Replay a real interaction dataset (the ``data/beauty/`` format) as catalog items and events.

Why: the simulator's traffic has the right shape but invented tastes; replaying real sequences
through Kafka shows how the deployed model does on real behaviour, end to end. The format is the
one the offline model trains on, so ids stay the same strings on both paths ("123" in the file
is item ``"123"`` on the wire and in the model's item map):

- ``sequences.txt``: ``user item item ...`` per line, chronological, whitespace-separated ids;
  a token may carry its event type as ``item:purchase`` (the model's loader reads the same
  convention, see :func:`split_token`);
- ``item_text.tsv``: a header ``item_id<TAB>title``, then ``id<TAB>title``; items may be absent
  (the Beauty file has no line for 97 of its items).

Files are untrusted input: every line and id is bounded, and a bad one raises ``ValueError``
naming the file and line, before anything is sent.

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
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from streamrec.schemas import EVENT_TYPES, TS_MAX_MS, TS_MIN_MS, CatalogItem, ShopEvent
from streamrec.devtools.pacing import DEFAULT_BASE_TS_MS, EventSink, emit, wall_clock_ms

log = logging.getLogger(__name__)

#: Longest line accepted in either file (bytes). Beauty's longest is well under 2 KB.
MAX_LINE_CHARS = 1_000_000
#: Longest title kept (the CatalogItem contract's limit); longer titles are cut, not refused.
MAX_TITLE_CHARS = 512
_ID_RE = re.compile(r"^[!-~]{1,128}$")  # the wire contracts' Id: printable ASCII, no space
_PREFIX_RE = re.compile(r"^[!-~]{1,40}$")


def _lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) of a UTF-8 file, each line bounded."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {str(p)!r} does not exist or is not a file")
    # Binary lines, decoded one by one: a decoding error then names its exact line.
    with p.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 2), b""), start=1):
            if len(raw.rstrip(b"\r\n")) > MAX_LINE_CHARS:
                raise ValueError(f"{p}:{lineno}: line longer than {MAX_LINE_CHARS} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{p}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            yield lineno, line.rstrip("\r\n")


def _check_id(token: str, path: str | Path, lineno: int, what: str) -> str:
    if not _ID_RE.match(token):
        shown = token if len(token) <= 40 else token[:37] + "..."
        raise ValueError(f"{path}:{lineno}: {what} {shown!r} is not an id "
                         f"(1..128 printable ASCII characters, no spaces; got {len(token)} characters)")
    return token


def split_token(token: str) -> tuple[str, str | None]:
    """``"123:purchase"`` -> ``("123", "purchase")``; a bare (or unknown-suffix) token -> ``(token, None)``.

    The same rule as :mod:`streamrec.model.data`, so that both read a file the same way.

    >>> split_token("sku-1:add_to_cart"), split_token("sku-1"), split_token("a:b")
    (('sku-1', 'add_to_cart'), ('sku-1', None), ('a:b', None))
    """
    head, sep, tail = token.rpartition(":")
    if sep and head and tail in EVENT_TYPES:
        return head, tail
    return token, None


def read_sequences(path: str | Path) -> dict[str, list[str]]:
    """Read ``user item item ...`` lines into ``{user: [token, ...]}`` (file order kept).

    Tokens are returned as written (``item`` or ``item:type``, see :func:`split_token`).
    Blank lines are skipped; a line with a user but no item, a bad id or a user seen twice
    raises ``ValueError`` naming the file and line.
    """
    seqs: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines(path, "sequences"):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'user item [item ...]', got only {tokens[0][:40]!r}")
        user = _check_id(tokens[0], path, lineno, "user id")
        if user in seqs:
            raise ValueError(f"{path}:{lineno}: user {user!r} already had a line ({first_line[user]})")
        for t in tokens[1:]:
            _check_id(split_token(t)[0], path, lineno, "item id")
        seqs[user] = tokens[1:]
        first_line[user] = lineno
    log.info("sequences read path=%s users=%d interactions=%d", path, len(seqs),
             sum(len(s) for s in seqs.values()))
    return seqs


def read_item_text(path: str | Path) -> dict[str, str]:
    """Read ``item_text.tsv`` into ``{item: title}``; the header line is required.

    A line with an id and no tab, or nothing after the tab, gives an empty title. Titles are
    stripped and cut to :data:`MAX_TITLE_CHARS`.
    """
    texts: dict[str, str] = {}
    header_seen = False
    for lineno, line in _lines(path, "item text"):
        if not header_seen:
            if line.lstrip("\ufeff").split("\t")[:2] != ["item_id", "title"]:
                raise ValueError(f"{path}:{lineno}: expected the header 'item_id<TAB>title', got {line[:60]!r}")
            header_seen = True
            continue
        if not line.strip():
            continue
        item, _, title = line.partition("\t")
        _check_id(item, path, lineno, "item id")
        if item in texts:
            raise ValueError(f"{path}:{lineno}: item {item!r} has a second title line")
        texts[item] = " ".join(title.split())[:MAX_TITLE_CHARS]
    if not header_seen:
        raise ValueError(f"{path}: empty file, expected the header 'item_id<TAB>title'")
    log.info("item text read path=%s items=%d", path, len(texts))
    return texts


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
        if not _ID_RE.match(item):
            raise ValueError(f"item id {item[:40]!r}: must be 1..128 printable ASCII characters")
        out.append(CatalogItem(item_id=item, title=texts.get(item, "")[:MAX_TITLE_CHARS], category="",
                               brand="", price=0.0, in_stock=True, updated_ts=updated_ts))
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
    if not (TS_MIN_MS <= start_ts and start_ts + step_ms * total <= TS_MAX_MS):
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
    return emit(producer, events, rate=rate, duration=duration, max_events=max_events, clock=clock,
                progress=progress, stop=stop)
