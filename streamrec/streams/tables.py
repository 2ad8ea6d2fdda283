"""The users table's changelog settings, and erasing a key from the table's local RocksDB.

A deleted user is a tombstone (a null value) in the ``<app_id>-users-changelog`` topic. Kafka's
log cleaner removes the user's older records only when it compacts, and compacts a record only
once its segment is closed; the settings below bound both, so that erasure has a known deadline:

* ``segment.ms`` and ``max.compaction.lag.ms`` (24 h): any record is compacted away at most 24 h
  after a newer record (the tombstone) of its key was written;
* ``delete.retention.ms`` (24 h): the tombstone itself is kept one more day, long enough for a
  worker that is recovering to see it, then removed too.

So the old records of a deleted user leave the changelog within 24 h, and the tombstone within
48 h (plus the log cleaner's own scheduling delay, a few seconds by default).
Faust applies these settings when it creates the changelog topic; for a topic that already exists,
apply them with ``kafka-configs --alter``.

>>> int(USERS_CHANGELOG_CONFIG["max.compaction.lag.ms"]) // 3_600_000
24
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import faust
from faust.types import TP

if TYPE_CHECKING:
    from streamrec.streams.direct import DirectProducer

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000

#: Topic configs of the users table's changelog (compacted; see the module docstring).
USERS_CHANGELOG_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact",
    "segment.ms": str(DAY_MS),
    "max.compaction.lag.ms": str(DAY_MS),
    "delete.retention.ms": str(DAY_MS),
}


def purge_local(table: Any, key: str) -> int:
    """Compact ``key``'s range in each of the table's local RocksDB partitions, so that the bytes of
    a deleted value leave the memtable, the write-ahead log and the SST files now rather than at
    some later compaction. Returns the number of databases compacted (0 for the memory store).

    Private: Faust has no public handle on the RocksDB databases behind a table. Checked against
    faust-streaming 0.15.3 (``faust.stores.rocksdb.Store._dbs``: partition -> ``rocksdict.Rdict``
    opened in raw mode, ``Store._encode_key``); tests/integration/test_privacy.py fails if the
    bytes stay on disk.
    """
    store = getattr(table, "data", None)
    dbs = getattr(store, "_dbs", None)
    if store is None or not dbs:
        return 0
    from rocksdict import BottommostLevelCompaction, CompactOptions

    raw = store._encode_key(key)
    opts = CompactOptions()
    # the bottommost level too: otherwise the deleted value can stay in its SST file
    opts.set_bottommost_level_compaction(BottommostLevelCompaction.force())
    n = 0
    for db in list(dbs.values()):
        try:
            db.flush()  # memtable -> SST, and the write-ahead log holding the value is dropped
            db.compact_range(raw, raw + b"\x00", opts)
            n += 1
        except Exception:
            log.warning("could not compact the local store for a deleted key", exc_info=True)
    return n


#: Name of the users table's value codec (registered with Faust by :func:`register_state_codec`).
STATE_CODEC = "streamrec-state"


def register_state_codec() -> str:
    """Register (once) the users table's value codec with Faust and return its name.

    It writes the same JSON as Faust's ``json`` codec, so existing changelogs and stores read as
    before. It differs on reading: a stored value that is not JSON (damaged bytes, not UTF-8)
    comes back as the raw ``bytes`` instead of raising. Faust decodes changelog records while a
    worker recovers its table, and one undecodable record there stops the recovery for good (the
    worker hangs at "Still fetching changelog topics"); as ``bytes`` it is restored as it is, and
    the user's next event resets that user (:class:`~streamrec.serving.state.UserState` refuses a
    non-object, and the error policy resets; see :mod:`streamrec.streams.policy`).
    """
    from faust.serializers import codecs

    if STATE_CODEC not in codecs.codecs:

        class StateCodec(codecs.json):
            def _loads(self, s: bytes) -> Any:
                try:
                    return super()._loads(s)
                except ValueError:  # includes UnicodeDecodeError
                    return bytes(s)

        codecs.register(STATE_CODEC, StateCodec())
    return STATE_CODEC


class UsersTable(faust.Table):
    """Faust's table, whose changelog can go through librdkafka (:mod:`streamrec.streams.direct`).

    With :attr:`direct` set (the worker under at_least_once with ``STREAMREC_DIRECT_PRODUCE``), a
    write or a deletion hands its changelog message to the direct producer instead of Faust's
    ``send_changelog`` (``Topic.send_soon``, the producer buffer and aiokafka's sender, all on the
    event loop): same topic, same partition (the current event's), the same key and value bytes
    (the table's own codecs), a tombstone for a deletion. The store is written by Faust as before.

    Faust records, per changelog partition, the offset up to which the local RocksDB store holds
    the changelog (``Store.set_persisted_offset``, read at recovery to skip what is already there);
    it does so on each delivery. Here deliveries are noted (on librdkafka's callback thread) and
    written to the store by :meth:`persist_delivered`, which the worker's commit calls once every
    direct message sent before it is acknowledged (:class:`streamrec.streams.consumer.Consumer`).
    The persisted offset may so lag the store by up to a commit interval; a recovery then reads a
    few records it already holds again, in order, which is harmless.

    Faust internals relied on (faust-streaming 0.15.3; ``tests/unit/streams/test_internals.py``):
    ``Table.on_key_set`` / ``on_key_del`` (called by every write / deletion) and what they call,
    ``partition_for_key``, ``_maybe_set_key_ttl`` / ``_maybe_del_key_ttl`` and the sensors.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the librdkafka producer of the changelog (None: Faust's own, as under exactly_once)
        self.direct: DirectProducer | None = None
        self._delivered: dict[int, int] = {}  # changelog partition -> highest offset acknowledged
        self._delivered_lock = threading.Lock()

    def on_key_set(self, key: Any, value: Any) -> None:
        if self.direct is None:
            super().on_key_set(key, value)
            return
        partition = self._send_direct(key, value)
        self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        if self.direct is None:
            super().on_key_del(key)
            return
        partition = self._send_direct(key, None)
        self._maybe_del_key_ttl(key, partition)
        self._sensor_on_del(self, key)

    def _send_direct(self, key: Any, value: Any) -> int:
        assert self.direct is not None
        partition = self.partition_for_key(key)  # the current event's (the table does not partition)
        if partition is None:
            raise RuntimeError("the users table must not use a partitioner")
        serializers = self.app.serializers
        key_bytes = serializers.dumps_key(self.key_type, key, serializer=self.key_serializer)
        if key_bytes is None:  # a table key is never None (Faust's own path would send it keyless)
            raise ValueError("the users table takes no None key")
        value_bytes = (
            None if value is None else serializers.dumps_value(self.value_type, value, serializer=self.value_serializer)
        )
        self.direct.produce_nowait(
            self.changelog_topic.get_topic_name(), key_bytes, value_bytes, partition=partition, delivered=self._noted
        )
        return partition

    async def wait_backlog(self) -> None:
        """Wait while too many changelog messages wait for room in librdkafka's queue
        (:meth:`~streamrec.streams.direct.DirectProducer.wait_backlog`); at once without one."""
        if self.direct is not None:
            await self.direct.wait_backlog()

    def _noted(self, partition: int, offset: int) -> None:
        with self._delivered_lock:
            if offset > self._delivered.get(partition, -1):
                self._delivered[partition] = offset

    def persist_delivered(self) -> int:
        """Write the acknowledged changelog offsets to the local store (see the class docstring;
        on the event loop, at a commit). Returns how many partitions were written."""
        with self._delivered_lock:
            done, self._delivered = self._delivered, {}
        if not done:
            return 0
        topic = self.changelog_topic.get_topic_name()
        for partition, offset in done.items():
            self.data.set_persisted_offset(TP(topic, partition), offset)
        return len(done)
