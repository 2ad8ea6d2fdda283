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
from typing import Any

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
    if not dbs:
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

        class StateCodec(codecs.json):  # type: ignore[misc, valid-type]
            def _loads(self, s: bytes) -> Any:
                try:
                    return super()._loads(s)
                except ValueError:  # includes UnicodeDecodeError
                    return bytes(s)

        codecs.register(STATE_CODEC, StateCodec())
    return STATE_CODEC
