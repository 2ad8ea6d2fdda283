"""Typed, timestamped event files (the Taobao UserBehavior layout): read, sessionise, convert.

Format: CSV with the header ``user_id,item_id,category_id,behavior,ts``; ``behavior`` is one of
Taobao's ``pv`` / ``cart`` / ``fav`` / ``buy`` or a streamrec event type (``view``,
``add_to_cart``, ``remove_from_cart``, ``purchase``); ``ts`` is unix seconds (UTC).

Taobao's ``fav`` (favourite) has no streamrec event type: it is read as ``favorite`` here
(:attr:`TypedEvent.raw`) and becomes a ``view`` on the wire and in the models, which only know
the four contract types (a favourite is an expression of interest, as a view is).

Files are untrusted input: lines, ids and timestamps are bounded and a bad line raises
``DatasetError`` (a ``ValueError``) naming the file and line. No torch, no Kafka: the model, the replay and the
benchmarks all read through here.

>>> evs = parse_lines(["user_id,item_id,category_id,behavior,ts", "u1,i1,c1,pv,1511544070",
...                    "u1,i2,c1,buy,1511544100"], source="x.csv")
>>> [(e.user_id, e.item_id, e.category, e.type, e.ts_ms) for e in evs]
[('u1', 'i1', 'c1', 'view', 1511544070000), ('u1', 'i2', 'c1', 'purchase', 1511544100000)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streamrec.errors import DatasetError
from streamrec.fsutil import atomic_write

#: The file's behaviour names -> (streamrec event type, raw kind kept for features/benchmarks).
BEHAVIORS: dict[str, tuple[str, str]] = {
    "pv": ("view", "view"),
    "cart": ("add_to_cart", "add_to_cart"),
    "fav": ("view", "favorite"),
    "buy": ("purchase", "purchase"),
    "view": ("view", "view"),
    "add_to_cart": ("add_to_cart", "add_to_cart"),
    "remove_from_cart": ("remove_from_cart", "remove_from_cart"),
    "purchase": ("purchase", "purchase"),
    "favorite": ("view", "favorite"),
}
HEADER = ("user_id", "item_id", "category_id", "behavior", "ts")
#: A new session starts after this much inactivity (the Taobao README's split, and the worker's).
SESSION_GAP_S = 30 * 60
MAX_LINE_CHARS = 4096
MAX_EVENTS = 50_000_000
TS_MIN_S = 946_684_800  # 2000-01-01
TS_MAX_S = 4_102_444_800  # 2100-01-01
_ID_RE = re.compile(r"^[!-~]{1,128}$")


@dataclass(frozen=True)
class TypedEvent:
    user_id: str
    item_id: str
    category: str
    type: str  # a streamrec event type (view / add_to_cart / remove_from_cart / purchase)
    ts_ms: int
    raw: str  # the kind as recorded: the type, or "favorite" for a Taobao fav


def parse_lines(lines: Iterable[str], *, source: str = "<events>") -> list[TypedEvent]:
    """Parse the CSV lines (header first). ValueError names ``source`` and the line number."""
    out: list[TypedEvent] = []
    it = iter(lines)
    header = next(it, None)
    if header is None or tuple(c.strip() for c in header.lstrip("\ufeff").split(",")) != HEADER:
        shown = (header or "")[:80]
        raise DatasetError(f"{source}:1: expected the header {','.join(HEADER)!r}, got {shown!r}")
    for lineno, line in enumerate(it, start=2):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise DatasetError(f"{source}:{lineno}: line longer than {MAX_LINE_CHARS} characters")
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            raise DatasetError(f"{source}:{lineno}: expected 5 comma-separated fields, got {len(parts)}")
        user, item, cat, beh, ts = parts
        for name, value in (("user_id", user), ("item_id", item), ("category_id", cat)):
            if not _ID_RE.match(value):
                raise DatasetError(
                    f"{source}:{lineno}: {name} {value[:40]!r} is not an id "
                    "(1..128 printable ASCII characters, no spaces)"
                )
        kind = BEHAVIORS.get(beh)
        if kind is None:
            raise DatasetError(f"{source}:{lineno}: behavior {beh[:40]!r} is not one of {', '.join(sorted(BEHAVIORS))}")
        try:
            ts_s = int(ts)
        except ValueError:
            raise DatasetError(f"{source}:{lineno}: ts {ts[:40]!r} is not an integer (unix seconds)") from None
        if not TS_MIN_S <= ts_s <= TS_MAX_S:
            raise DatasetError(f"{source}:{lineno}: ts {ts_s} is outside 2000..2100 (unix seconds expected)")
        out.append(TypedEvent(user, item, cat, kind[0], ts_s * 1000, kind[1]))
        if len(out) > MAX_EVENTS:
            raise DatasetError(f"{source}: more than {MAX_EVENTS} events")
    return out


def read_events(path: str | Path) -> list[TypedEvent]:
    """Read a typed events file; ValueError (file and line named) when it is unusable."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"events file not found: {str(p)!r}")
    with p.open(encoding="utf-8", errors="strict", newline="") as f:
        try:
            events = parse_lines(f, source=str(p))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{p}: not UTF-8 ({exc.reason})") from None
    if not events:
        raise DatasetError(f"events file {str(p)!r} holds no events")
    return events


def by_user(events: Iterable[TypedEvent]) -> dict[str, list[TypedEvent]]:
    """Each user's events in time order (ties keep file order), users in order of appearance."""
    users: dict[str, list[TypedEvent]] = {}
    for e in events:
        users.setdefault(e.user_id, []).append(e)
    for seq in users.values():
        seq.sort(key=lambda e: e.ts_ms)  # stable
    return users


def sessions(seq: list[TypedEvent], gap_s: int = SESSION_GAP_S) -> list[list[TypedEvent]]:
    """Split one user's time-ordered events at gaps longer than ``gap_s``."""
    out: list[list[TypedEvent]] = []
    for e in seq:
        if out and e.ts_ms - out[-1][-1].ts_ms <= gap_s * 1000:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def sequences_tokens(users: dict[str, list[TypedEvent]]) -> dict[str, list[str]]:
    """``{user: ["item:type", ...]}``: the sequences-file view of the same events."""
    return {u: [f"{e.item_id}:{e.type}" for e in seq] for u, seq in users.items()}


def iter_sessions(users: dict[str, list[TypedEvent]]) -> Iterator[tuple[str, int, list[TypedEvent]]]:
    """(user, session number within the user, events) for every session."""
    for u, seq in users.items():
        for n, s in enumerate(sessions(seq)):
            yield u, n, s


#: streamrec event type -> the file's behaviour name (Taobao's, so the file reads like theirs).
WRITE_NAMES = {"view": "pv", "add_to_cart": "cart", "purchase": "buy", "remove_from_cart": "remove_from_cart"}


def write_events(path: str | Path, events: Iterable[object], categories: dict[str, str]) -> int:
    """Write ShopEvent-like objects (``user_id``, ``item_id``, ``type``, ``ts`` in ms) as a typed
    events file; ``categories`` maps item ids to category ids (missing: ``unknown``). Timestamps
    are truncated to seconds, as in the Taobao file. Returns the number of events written."""
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with tmp.open("w", encoding="utf-8") as f:
            f.write(",".join(HEADER) + "\n")
            for e in events:
                cat = categories.get(e.item_id) or "unknown"  # type: ignore[attr-defined]
                cat = cat if _ID_RE.match(cat) else re.sub(r"[^!-~]", "_", cat)[:128] or "unknown"
                f.write(f"{e.user_id},{e.item_id},{cat},{WRITE_NAMES[e.type]},{e.ts // 1000}\n")  # type: ignore[attr-defined]
                n += 1

    atomic_write(path, write)
    return n


def to_interactions_lists(users: dict[str, list[TypedEvent]]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(users, items, types) in the layout of :class:`streamrec.model.data.Interactions`."""
    names = list(users)
    return names, [[e.item_id for e in users[u]] for u in names], [[e.type for e in users[u]] for u in names]
