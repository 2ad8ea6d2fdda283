"""The trainer's durable training log: append-only Parquet segments of shop events.

Why a log of its own: the trainer must learn from what the shop streamed, long after Kafka's
retention dropped it, and a trainer killed at any moment must neither lose nor double an event.
This is the Kafka Connect HDFS/S3 sink pattern:

* a segment is written to a temp file, ``fsync``-ed, renamed into place (atomic) and the
  directory ``fsync``-ed; only then does the caller commit the Kafka offsets it holds;
* a segment is named by topic, partition and the first/last Kafka offset it covers
  (``shop.events+0+00000000000000000100+00000000000000000199.parquet``; ``+`` never occurs in a
  topic name), so a restarted trainer resumes after the newest segment (:meth:`TrainLog.next_offsets`)
  even when the commit after the last write was lost;
* every event is de-duplicated by ``event_id`` against the whole retained log, so redelivery
  (a commit lost, a producer retry, a shop resending) never adds a row twice;
* retention deletes whole segments: those whose newest event is older than ``max_age_s`` and,
  oldest first, those beyond ``max_bytes``.

Leftover temp files (``.<segment>.<pid>-<id>.tmp``) (a crash mid-write) are deleted on open: their offsets were never
committed, so Kafka redelivers their events.

Erasure (:meth:`TrainLog.purge_user`): the deletion is first recorded durably in
``deletions.json`` as *pending* (with the user id), then every segment holding the user's rows is
rewritten without them (atomically: readers see the old file or the new one; a segment left
empty stays as an empty file so its offsets stay covered), then the entry becomes *done*, which
keeps only a SHA-256 of the user id and ``requested_ts``. Opening the log redoes pending purges
(a crash mid-purge). :meth:`TrainLog.append` drops every event of a deleted user whose ``ts`` is
not after the deletion's ``requested_ts`` (a replay of old events does not bring them back);
later events start the user afresh.

>>> import tempfile
>>> from streamrec.schemas import ShopEvent
>>> log = TrainLog(tempfile.mkdtemp(), topic="shop.events")
>>> e = ShopEvent(event_id="e1", user_id="u", session_id="s", item_id="i", type="view", ts=1_700_000_000_000)
>>> log.append(0, 5, 6, [(5, e), (6, e)]).written        # the same event twice: one row
1
>>> log.next_offsets(), log.rows
({0: 7}, 1)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import pyarrow as pa
import pyarrow.parquet as pq

from streamrec.errors import SchemaError
from streamrec.fsutil import atomic_write
from streamrec.schemas import ShopEvent

log = logging.getLogger(__name__)

#: Columns of every segment (one row per event). ``partition``/``offset``: where Kafka had it.
_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("event_id", pa.string()),
    ("user_id", pa.string()),
    ("session_id", pa.string()),
    ("item_id", pa.string()),
    ("type", pa.string()),
    ("ts", pa.int64()),
    ("price", pa.float64()),
    ("quantity", pa.int32()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
]
SCHEMA = pa.schema(_COLUMNS)
SUFFIX = ".parquet"
DELETIONS_FILE = "deletions.json"
_NAME_RE = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<first>\d{20})\+(?P<last>\d{20})"
    r"(?:\+(?P<tag>[0-9a-f]{8}))?\.parquet$"
)


def segment_name(topic: str, partition: int, first: int, last: int, tag: str | None = None) -> str:
    """``topic+partition+first+last[.tag].parquet`` with zero-padded offsets (sorts by offset).

    >>> segment_name("shop.events", 3, 0, 41)
    'shop.events+3+00000000000000000000+00000000000000000041.parquet'
    """
    if not 0 <= first <= last:
        raise ValueError(f"segment offsets must satisfy 0 <= first <= last, got {first}..{last}")
    return f"{topic}+{partition}+{first:020d}+{last:020d}" + (f"+{tag}" if tag else "") + SUFFIX


def parse_segment_name(name: str) -> tuple[str, int, int, int] | None:
    """``(topic, partition, first, last)`` of a segment file name, None for any other file."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return m["topic"], int(m["partition"]), int(m["first"]), int(m["last"])


def _event_ids(table: pa.Table) -> list[str]:
    # Every row was a validated ShopEvent, so event_id is never null (Arrow types it optional).
    return cast("list[str]", table.column("event_id").to_pylist())


@dataclass(frozen=True)
class Segment:
    path: Path
    topic: str
    partition: int
    first: int  # first Kafka offset the segment covers (valid, duplicate or malformed)
    last: int  # last Kafka offset it covers: the partition resumes at last + 1
    rows: int  # events in it (after de-duplication)
    bytes: int  # file size
    min_ts: int  # oldest event time, epoch ms
    max_ts: int  # newest event time, epoch ms (age retention looks at this)
    written: float  # unix time the file was written (its mtime)


@dataclass
class AppendResult:
    written: int = 0  # rows in the new segment
    duplicates: int = 0  # events dropped because their event_id was already logged
    erased: int = 0  # events dropped because their user was deleted after them
    segment: Path | None = None  # None when nothing new was left to write


def _is_temp(name: str) -> bool:
    """An unfinished write of :func:`streamrec.fsutil.atomic_write` (``.<name>.<pid>-<id>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def user_hash(user_id: str) -> str:
    """What the deletions file keeps of a purged user: SHA-256 hex of the id.

    >>> user_hash("u")[:12]
    '0bfe935e70c3'
    """
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def events_table(records: Sequence[tuple[int, int, ShopEvent]]) -> pa.Table:
    """``(partition, offset, event)`` records as a table with :data:`SCHEMA`."""
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for partition, offset, e in records:
        cols["event_id"].append(e.event_id)
        cols["user_id"].append(e.user_id)
        cols["session_id"].append(e.session_id)
        cols["item_id"].append(e.item_id)
        cols["type"].append(e.type)
        cols["ts"].append(e.ts)
        cols["price"].append(e.price)
        cols["quantity"].append(e.quantity)
        cols["partition"].append(partition)
        cols["offset"].append(offset)
    return pa.table(cols, schema=SCHEMA)


class TrainLog:
    """Append-only Parquet segments of one topic's events in ``root`` (see module docstring).

    One process opens a log (opening deletes unfinished temp files, which would break another
    writer's rename); other processes may read the segment files directly. Within the trainer
    one thread appends. Readers in the same process
    (the retraining thread) call :meth:`read`, which only opens complete segments.
    """

    def __init__(
        self, root: str | Path, *, topic: str, max_age_s: float | None = None, max_bytes: int | None = None
    ) -> None:
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.root = Path(root)
        self.topic = topic
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._segments: dict[Path, Segment] = {}
        self._ids: set[str] = set()
        self._seg_ids: dict[Path, list[str]] = {}
        self._lock = threading.Lock()  # the segment table is read by the retraining thread
        self._deletions_path = self.root / DELETIONS_FILE
        # user hash -> requested_ts of done purges; user id -> requested_ts of pending ones
        self.deleted: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self._read_deletions()
        self._scan()
        for user_id, ts in sorted(self.pending.items()):
            log.info("redoing an interrupted purge user_hash=%s requested_ts=%d", user_hash(user_id)[:12], ts)
            self.purge_user(user_id, ts)

    # -- opening ------------------------------------------------------------------------------------

    def _scan(self) -> None:
        for p in self.root.iterdir():
            if _is_temp(p.name):
                log.info("removing unfinished segment file=%s (its offsets were never committed)", p)
                p.unlink(missing_ok=True)
        for p in sorted(self.root.iterdir()):
            parsed = parse_segment_name(p.name)
            if parsed is None or parsed[0] != self.topic:
                continue
            try:
                ids = pq.read_table(p, columns=["event_id", "ts"])
            except (OSError, pa.ArrowException) as exc:
                # Renamed into place only after fsync, so this is disk damage: keep it for
                # inspection, out of the log.
                bad = p.with_name(p.name + ".corrupt")
                log.error("unreadable segment file=%s reason=%s moved_to=%s", p, exc, bad)
                os.replace(p, bad)
                continue
            self._add(p, parsed, _event_ids(ids), ids.column("ts"))

    def _add(self, p: Path, parsed: tuple[str, int, int, int], ids: list[str], ts: pa.ChunkedArray) -> None:
        import pyarrow.compute as pc

        st = p.stat()
        _, partition, first, last = parsed
        lo = pc.min(ts).as_py() if len(ts) else 0
        hi = pc.max(ts).as_py() if len(ts) else 0
        with self._lock:
            self._segments[p] = Segment(
                p, self.topic, partition, first, last, len(ids), st.st_size, int(lo or 0), int(hi or 0), st.st_mtime
            )
        self._seg_ids[p] = ids
        self._ids.update(ids)

    def _read_deletions(self) -> None:
        try:
            data = json.loads(self._deletions_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Written atomically, so this is disk damage; refusing to open beats forgetting a deletion.
            raise RuntimeError(f"unreadable deletions file {self._deletions_path}: {exc}") from None
        self.deleted = {str(k): int(v) for k, v in (data.get("deleted") or {}).items()}
        self.pending = {str(k): int(v) for k, v in (data.get("pending") or {}).items()}

    def _write_deletions(self) -> None:
        from streamrec.fsutil import atomic_write_text

        atomic_write_text(
            self._deletions_path, json.dumps({"deleted": self.deleted, "pending": self.pending}, sort_keys=True)
        )

    # -- reading ------------------------------------------------------------------------------------

    @property
    def segments(self) -> list[Segment]:
        """Complete segments, oldest offsets first per partition."""
        with self._lock:
            segs = list(self._segments.values())
        return sorted(segs, key=lambda s: (s.partition, s.first, s.path.name))

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def next_offsets(self) -> dict[int, int]:
        """Per partition, the offset after the newest segment: where a restart resumes."""
        out: dict[int, int] = {}
        for s in self.segments:
            out[s.partition] = max(out.get(s.partition, 0), s.last + 1)
        return out

    def rows_written_since(self, unix_ts: float) -> int:
        """Events in segments written after ``unix_ts`` (the trainer's "new events" count)."""
        return sum(s.rows for s in self.segments if s.written > unix_ts)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every retained event (a snapshot of the complete segments), ordered by (ts, partition,
        offset). Segments deleted by retention meanwhile are skipped."""
        tables = []
        for s in self.segments:
            try:
                tables.append(pq.read_table(s.path, columns=list(columns) if columns else None))
            except FileNotFoundError:
                continue
        if not tables:
            schema = SCHEMA if not columns else pa.schema([SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        t = pa.concat_tables(tables)
        keys: list[tuple[str, Literal["ascending", "descending"]]] = [
            (k, "ascending") for k in ("ts", "partition", "offset") if k in t.column_names
        ]
        return t.sort_by(keys) if keys else t

    # -- writing ------------------------------------------------------------------------------------

    def append(self, partition: int, first: int, last: int, records: Iterable[tuple[int, ShopEvent]]) -> AppendResult:
        """Durably write the events of offsets ``first..last`` of ``partition`` not logged yet.

        Returns when the segment is on disk (fsync + atomic rename + directory fsync): only then
        may the caller commit offset ``last + 1``. Writes nothing when every event is a
        duplicate (committing is still right: the events are in the log already).
        """
        if partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        res = AppendResult()
        fresh: list[tuple[int, int, ShopEvent]] = []
        batch_ids: set[str] = set()
        for offset, e in records:
            if not first <= offset <= last:
                raise ValueError(f"offset {offset} outside the segment range {first}..{last}")
            if e.event_id in self._ids or e.event_id in batch_ids:
                res.duplicates += 1
                continue
            if self.is_erased(e.user_id, e.ts):
                res.erased += 1
                continue
            batch_ids.add(e.event_id)
            fresh.append((partition, offset, e))
        if not fresh:
            return res
        table = events_table(fresh)
        name = segment_name(self.topic, partition, first, last)
        final = self.root / name
        if final.exists():  # the same range logged twice can only hold new ids: keep both files
            final = self.root / segment_name(self.topic, partition, first, last, uuid.uuid4().hex[:8])
        # temp file beside it, fsync, os.replace, directory fsync
        atomic_write(final, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        parsed = parse_segment_name(final.name)
        assert parsed is not None
        self._add(final, parsed, _event_ids(table), table.column("ts"))
        res.written = table.num_rows
        res.segment = final
        log.debug("segment written file=%s rows=%d duplicates=%d", final.name, res.written, res.duplicates)
        return res

    def is_erased(self, user_id: str, ts: int) -> bool:
        """Whether an event of ``user_id`` at ``ts`` predates (or equals) a deletion of the user."""
        if not self.deleted and not self.pending:
            return False
        cut = self.pending.get(user_id)
        if cut is None:
            cut = self.deleted.get(user_hash(user_id))
        return cut is not None and ts <= cut

    def purge_user(self, user_id: str, requested_ts: int) -> int:
        """Erase ``user_id``'s events (``ts <= requested_ts``) from every segment; returns the rows
        removed. Durable and redone on open if interrupted (see the module docstring)."""
        import pyarrow.compute as pc

        h = user_hash(user_id)
        requested_ts = max(
            int(requested_ts), self.deleted.get(h, requested_ts), self.pending.get(user_id, requested_ts)
        )
        self.pending[user_id] = requested_ts
        self._write_deletions()  # first: a crash from here on redoes the purge on open
        removed = 0
        for s in self.segments:
            try:
                users = pq.read_table(s.path, columns=["user_id", "ts"])
            except FileNotFoundError:  # deleted by retention meanwhile
                continue
            doomed = pc.and_(
                pc.equal(users.column("user_id"), pa.scalar(user_id, pa.string())),
                pc.less_equal(users.column("ts"), pa.scalar(requested_ts, pa.int64())),
            )
            n = int(pc.sum(doomed).as_py() or 0)  # type: ignore[type-var]  # a bool sum counts
            if n == 0:
                continue
            table = pq.read_table(s.path).filter(pc.invert(doomed))

            def write(tmp: Path, t: pa.Table = table) -> None:
                pq.write_table(t, tmp, compression="zstd")

            atomic_write(s.path, write)  # readers see the old segment or the new one
            parsed = parse_segment_name(s.path.name)
            assert parsed is not None
            self._ids.difference_update(self._seg_ids.pop(s.path, []))
            self._add(s.path, parsed, [str(i) for i in table.column("event_id").to_pylist()], table.column("ts"))
            removed += n
            log.info("segment rewritten for an erasure file=%s removed=%d rows=%d", s.path.name, n, table.num_rows)
        del self.pending[user_id]
        self.deleted[h] = requested_ts
        self._write_deletions()
        log.info(
            "user purged from the training log user_hash=%s requested_ts=%d removed=%d purged_ts=%d",
            h[:12],
            requested_ts,
            removed,
            int(time.time() * 1000),
        )
        return removed

    def enforce_retention(self, now_ms: int | None = None) -> list[Path]:
        """Delete segments past ``max_age_s`` (by their newest event) and, oldest first, beyond
        ``max_bytes``. Returns the deleted paths. Their event ids leave the de-dup set (Kafka
        will not redeliver them: their offsets were committed long ago)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        doomed: list[Segment] = []
        if self.max_age_s is not None:
            horizon = now_ms - int(self.max_age_s * 1000)
            doomed.extend(s for s in self._segments.values() if s.max_ts < horizon)
        if self.max_bytes is not None:
            keep = sorted(
                (s for s in self._segments.values() if s not in doomed), key=lambda s: (s.max_ts, s.path.name)
            )
            total = sum(s.bytes for s in keep)
            for s in keep:
                if total <= self.max_bytes:
                    break
                doomed.append(s)
                total -= s.bytes
        for s in doomed:
            with self._lock:
                self._segments.pop(s.path, None)
            s.path.unlink(missing_ok=True)
            self._ids.difference_update(self._seg_ids.pop(s.path, []))
            log.info("segment deleted by retention file=%s rows=%d max_ts=%d", s.path.name, s.rows, s.max_ts)
        return [s.path for s in doomed]


@dataclass
class PendingPartition:
    first: int
    last: int
    records: list[tuple[int, ShopEvent]] = field(default_factory=list)


class SegmentBuffer:
    """Kafka records waiting to become a segment, per partition (pure: no Kafka, no disk).

    ``add`` parses a record: a malformed one is counted and skipped (the workers dead-letter
    it; the trainer must not do so twice) but its offset still counts as consumed.
    ``due`` says when to flush: ``max_events`` buffered or ``max_age_s`` since the first one.
    """

    def __init__(self, *, max_events: int, max_age_s: float) -> None:
        if max_events < 1 or max_age_s <= 0:
            raise ValueError(f"max_events must be >= 1 and max_age_s > 0, got {max_events}, {max_age_s}")
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.pending: dict[int, PendingPartition] = {}
        self.malformed = 0
        self._count = 0
        self._since: float | None = None

    def add(self, partition: int, offset: int, value: bytes | None, *, now: float | None = None) -> str | None:
        """Buffer one record; returns the reason when it is malformed (and skipped)."""
        now = time.monotonic() if now is None else now
        p = self.pending.get(partition)
        if p is None:
            p = self.pending[partition] = PendingPartition(offset, offset)
        p.first, p.last = min(p.first, offset), max(p.last, offset)
        if self._since is None:
            self._since = now
        self._count += 1
        try:
            e = ShopEvent.from_bytes(value)
        except SchemaError as exc:
            self.malformed += 1
            return str(exc)
        p.records.append((offset, e))
        return None

    def __len__(self) -> int:
        return self._count

    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self._count > 0 and (self._count >= self.max_events or now - (self._since or now) >= self.max_age_s)

    def drop_user(self, user_id: str, requested_ts: int) -> int:
        """Drop the buffered events of ``user_id`` with ``ts <= requested_ts`` (an erasure);
        returns how many. Their offsets stay in the partition's range (consumed)."""
        dropped = 0
        for p in self.pending.values():
            keep = [(o, e) for o, e in p.records if not (e.user_id == user_id and e.ts <= requested_ts)]
            dropped += len(p.records) - len(keep)
            p.records = keep
        return dropped

    def drain(self) -> list[tuple[int, PendingPartition]]:
        """``[(partition, pending), ...]`` and an empty buffer."""
        out = sorted(self.pending.items())
        self.pending = {}
        self._count = 0
        self._since = None
        return out
