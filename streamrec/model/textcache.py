"""A persistent, bounded cache of title embeddings shared by the worker, ``train`` and ``evaluate``.

Why: every worker start used to run MiniLM over the title of every catalog item the model was
not trained on; in a big shop that is most of the catalog (hours on 2 cores at 1M items). With
this cache a restart only embeds titles it has never seen.

Store: a RocksDB directory (``rocksdict``, already a dependency; raw bytes, no pickle).

- ``v`` + key -> 8-byte sequence number + the vector (``TEXT_DIM`` little-endian float32). The
  key is a 16-byte BLAKE2b hash of the encoder's identity (model name, package version, pooling,
  max tokens) and the text, so a vector from another encoder or version never matches.
- ``q`` + sequence (big-endian) -> key: insertion order, for eviction.
- ``m:count`` / ``m:seq``: entries held and the next sequence number.

Bounded: at most ``max_items`` entries (about 1.6 KB each on disk); past that the oldest-stamped
entries are evicted. A hit on an entry in the older half of the window is stamped again, so
titles still in use survive (approximate LRU at a cost of at most one rewrite per entry per
``max_items / 2`` inserts; a warm restart that embeds nothing rewrites nothing).

Safe: a bad cache is only a cache. A directory RocksDB cannot open is moved aside and a fresh
one created; a value of the wrong size or with non-finite numbers is a miss (and is replaced);
when another process holds the directory (a worker while ``train`` runs) the cache opens it
read-only and keeps the new vectors in memory for this process only.

>>> cache = TextCache("data/text-cache", encoder=TextEncoder(device="cpu"))  # doctest: +SKIP
>>> cache.encode(["red nail polish", None]).shape                            # doctest: +SKIP
(2, 384)
>>> cache.embedded, cache.hits                                                 # doctest: +SKIP
(1, 0)
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self, cast

import numpy as np

from streamrec.model.text import TEXT_DIM, TextEncoder

if TYPE_CHECKING:
    from rocksdict import Rdict

log = logging.getLogger(__name__)

_VEC_BYTES = TEXT_DIM * 4
_SEQ = 8
_COUNT, _NEXT = b"m:count", b"m:seq"
_READ_CHUNK = 4096  # keys per multi-get
DEFAULT_MAX_ITEMS = 2_000_000


def text_key(encoder_id: str, text: str) -> bytes:
    """16-byte key of ``text`` embedded by the encoder named ``encoder_id``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(encoder_id.encode("utf-8"))
    h.update(b"\0")
    h.update(text.encode("utf-8"))
    return h.digest()


def _clean(t: object) -> str | None:
    if t is None:
        return None
    s = str(t)
    return s if s.strip() else None


class TextCache:
    """Title -> MiniLM vector, persisted in ``path`` (None: in memory only, for tests and tools).

    ``embedded`` counts the titles this process sent to the encoder, ``hits`` those the cache
    answered. Thread-safe (one lock around each call).
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        encoder: TextEncoder | None = None,
        encoder_id: str | None = None,
        max_items: int = DEFAULT_MAX_ITEMS,
        device: str = "auto",
    ) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"max_items must be a positive int, got {max_items!r}")
        self.path = None if path is None else Path(path)
        self.max_items = max_items
        self._encoder = encoder
        self._device = device
        self.encoder_id = encoder_id or (encoder.identity if encoder is not None else TextEncoder.identity_of())
        self.embedded = 0  # titles embedded by this process
        self.hits = 0  # titles answered from the cache
        self.evicted = 0
        self.embed_seconds = 0.0  # time spent in the encoder
        self.read_only = False
        self._lock = threading.Lock()
        self._mem: dict[bytes, np.ndarray] = {}  # used when the store is read-only or absent
        self._db: Rdict | None = None
        self._count = 0
        self._seq = 0
        if self.path is not None:
            self._open()

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        from rocksdict import AccessType, Options, Rdict

        assert self.path is not None
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        if self.path.exists() and not self.path.is_dir():  # e.g. an old safetensors cache file
            log.warning("text cache path is a file, not a directory; using memory only path=%s", self.path)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = Rdict(str(self.path), opts)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            msg = str(exc)
            if "lock" in msg.lower() and self.path.is_dir():
                try:  # another process writes it: read what it has, keep new vectors in memory
                    self._db = Rdict(str(self.path), Options(raw_mode=True), access_type=AccessType.read_only())
                    self.read_only = True
                    log.warning("text cache in use by another process, opened read-only path=%s", self.path)
                except Exception as exc2:  # noqa: BLE001
                    log.warning("text cache unavailable, using memory only path=%s reason=%s", self.path, exc2)
                    self._db = None
                    return
            else:
                self._db = self._recreate(msg)
                if self._db is None:
                    return
        self._read_meta()

    def _recreate(self, reason: str):
        """Move an unusable cache aside and start an empty one (a bad cache is only a cache)."""
        from rocksdict import Options, Rdict

        assert self.path is not None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.warning("text cache unusable, starting a new one path=%s moved_to=%s reason=%s", self.path, aside, reason)
        try:
            if self.path.exists():
                self.path.rename(aside)
                shutil.rmtree(aside, ignore_errors=True) if aside.is_dir() else aside.unlink()
            opts = Options(raw_mode=True)
            opts.create_if_missing(True)
            return Rdict(str(self.path), opts)
        except Exception as exc:  # noqa: BLE001
            log.warning("text cache unavailable, using memory only path=%s reason=%s", self.path, exc)
            return None

    def _open_db(self) -> Rdict:
        """The store, for the methods that run only while it is open."""
        assert self._db is not None
        return self._db

    def _read_meta(self) -> None:
        def num(key: bytes) -> int | None:
            raw = self._open_db().get(key)
            return int.from_bytes(raw, "big") if raw is not None and len(raw) == 8 else None

        count, seq = num(_COUNT), num(_NEXT)
        if count is None or seq is None:
            count, seq = self._recount()
        self._count, self._seq = count, seq

    def _recount(self) -> tuple[int, int]:
        """Count entries and find the next sequence number by a scan (a fresh or damaged meta)."""
        count, seq = 0, 0
        it = self._open_db().iter()
        it.seek(b"q")
        while it.valid() and it.key()[:1] == b"q":
            count += 1
            seq = int.from_bytes(it.key()[1:], "big") + 1
            it.next()
        return count, seq

    # -- the API ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count + len(self._mem)

    def encode(self, texts: Sequence[str | None], batch_size: int = 128) -> np.ndarray:
        """(len(texts), TEXT_DIM) float32: cached vectors where known, MiniLM for the rest (then
        cached). Empty or missing texts give the zero vector and are neither counted nor cached."""
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        want: dict[bytes, list[int]] = {}  # key -> positions (a text may repeat)
        clean: dict[bytes, str] = {}
        for i, t in enumerate(texts):
            s = _clean(t)
            if s is None:
                continue
            k = text_key(self.encoder_id, s)
            want.setdefault(k, []).append(i)
            clean[k] = s
        if not want:
            return out
        with self._lock:
            found = self._lookup(list(want))
            for k, v in found.items():
                out[want[k]] = v
            self.hits += len(found)
            todo = [k for k in want if k not in found]
            if todo:
                t0 = time.perf_counter()
                vecs = self._encode([clean[k] for k in todo], batch_size)
                self.embed_seconds += time.perf_counter() - t0
                for k, v in zip(todo, vecs):
                    out[want[k]] = v
                self.embedded += len(todo)
                self._store(dict(zip(todo, vecs)))
        return out

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self._encoder is None:
            self._encoder = TextEncoder(device=self._device)
        return self._encoder.encode(texts, batch_size=batch_size)

    def _lookup(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for k in keys:
            v = self._mem.get(k)
            if v is not None:
                found[k] = v
        if self._db is None:
            return found
        rest = [k for k in keys if k not in found]
        touch: list[tuple[bytes, int, np.ndarray]] = []
        old_edge = self._seq - self.max_items // 2
        for s in range(0, len(rest), _READ_CHUNK):
            chunk = rest[s : s + _READ_CHUNK]
            try:
                # rocksdict's stub types get() as one value; a list of keys gives a list of values
                raws = cast("list[bytes | None]", self._db.get([b"v" + k for k in chunk]))
            except Exception as exc:  # noqa: BLE001 - a read error is a miss, never a crash
                log.warning("text cache read failed, treating as misses reason=%s", exc)
                continue
            for k, raw in zip(chunk, raws):
                if raw is None or len(raw) != _SEQ + _VEC_BYTES:
                    continue
                vec = np.frombuffer(raw, dtype="<f4", offset=_SEQ).astype(np.float32)
                if not np.isfinite(vec).all():
                    continue
                found[k] = vec
                seq = int.from_bytes(raw[:_SEQ], "big")
                if seq < old_edge:
                    touch.append((k, seq, vec))
        if touch and not self.read_only:
            self._write(touch, new={})
        return found

    def _store(self, vecs: dict[bytes, np.ndarray]) -> None:
        if self._db is None or self.read_only:
            self._remember(vecs)
            return
        self._write([], new=vecs)

    def _write(self, touch: list[tuple[bytes, int, np.ndarray]], new: dict[bytes, np.ndarray]) -> None:
        """One write batch: restamp ``touch`` entries, insert ``new`` ones, evict past the bound.
        A key already present (a bad value being replaced) is restamped, not counted twice."""
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        seq, count = self._seq, self._count
        if new:  # replaced entries (bad values) already hold a q-record: drop it
            olds = cast("list[bytes | None]", self._open_db().get([b"v" + k for k in new]))  # see _lookup
            for k, raw in zip(new, olds):
                if raw is not None and len(raw) >= _SEQ:
                    touch.append((k, int.from_bytes(raw[:_SEQ], "big"), new[k]))
        replaced = {k for k, _, _ in touch}
        for k, old_seq, vec in touch:
            wb.delete(b"q" + old_seq.to_bytes(8, "big"))
            wb.put(b"q" + seq.to_bytes(8, "big"), k)
            wb.put(b"v" + k, seq.to_bytes(8, "big") + np.asarray(vec, "<f4").tobytes())
            seq += 1
        for k, vec in new.items():
            if k in replaced:
                continue
            wb.put(b"q" + seq.to_bytes(8, "big"), k)
            wb.put(b"v" + k, seq.to_bytes(8, "big") + np.asarray(vec, "<f4").tobytes())
            seq += 1
            count += 1
        try:
            self._open_db().write(wb)
        except Exception as exc:  # noqa: BLE001
            log.warning("text cache write failed, keeping vectors in memory reason=%s", exc)
            self._remember(new)
            return
        self._seq, self._count = seq, count
        if self._count > self.max_items:
            self._evict(self._count - self.max_items + self.max_items // 20)  # 5% slack
        self._write_meta()

    def _remember(self, vecs: dict[bytes, np.ndarray]) -> None:
        """Keep vectors in this process only, within the same bound (oldest dropped first)."""
        self._mem.update(vecs)
        over = len(self._mem) - self.max_items
        if over > 0:
            for k in list(self._mem)[:over]:
                del self._mem[k]
            self.evicted += over

    def _evict(self, n: int) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        it = self._open_db().iter()
        it.seek(b"q")
        dropped = 0
        while dropped < n and it.valid() and it.key()[:1] == b"q":
            wb.delete(it.key())
            wb.delete(b"v" + it.value())
            dropped += 1
            it.next()
        del it
        self._open_db().write(wb)
        self._count -= dropped
        self.evicted += dropped
        log.info("text cache evicted entries=%d kept=%d max_items=%d", dropped, self._count, self.max_items)

    def _write_meta(self) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        wb.put(_COUNT, self._count.to_bytes(8, "big"))
        wb.put(_NEXT, self._seq.to_bytes(8, "big"))
        self._open_db().write(wb)

    def disk_bytes(self) -> int:
        """Bytes of the store on disk (0 for an in-memory cache)."""
        if self.path is None or not self.path.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                finally:
                    self._db = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cache(
    path: str | Path | None,
    *,
    encoder: TextEncoder | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
    device: str = "auto",
) -> TextCache:
    """The shared entry point: a persistent cache at ``path``, or an in-memory one for None."""
    return TextCache(path, encoder=encoder, max_items=max_items, device=device)
