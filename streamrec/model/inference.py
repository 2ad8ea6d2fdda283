"""The inference API the stream workers call: user vectors, item vectors, scores.

A score is always the inner product ``user_vec . item_vec`` (the FAISS index uses inner
product), so everything the model does to score lives inside the two vectors.

>>> rec = Recommender.load("data/models/versions/v0001-...")            # doctest: +SKIP
>>> ids, vecs = rec.item_vectors()                                       # (N, d) for the index  # doctest: +SKIP
>>> u = rec.encode_users([[("42", "view"), ("7", "add_to_cart")]])       # (1, d)  # doctest: +SKIP
>>> rec.score(u, ["42", "99"])                                           # (1, 2)  # doctest: +SKIP

Item vectors: a known item gets its learned id embedding + the projection of its cached title
embedding; an unknown item with text gets the projection of its text (zero-shot: no click on
the new item is needed). Optionally (``impute_neighbors`` > 0) it also borrows an id embedding:
the similarity-weighted mean of the learned id embeddings of the trained items whose titles are
closest to its own. That helped on the simulator's templated titles but hurt on Amazon Beauty
(bench/RESULTS.md, zero-shot section), so it is off by default. An unknown item
without text gets the model's default vector (the projection of the zero text vector). Items
added with :meth:`Recommender.add_items` become part of the vocabulary and may appear in user
histories afterwards. A known item's cached title embedding is kept (re-encoding the whole
catalog on every worker start would be slow); an item that had no text gets the one given.

Growth is amortised: the cached item vectors live in storage that doubles when full, and adding
items computes vectors for the new rows only (``rows_computed`` / ``rows_copied`` count the work;
loading N items in batches is O(N)). Per row it keeps the scored vector (its first d columns are
the encoder's input vector; with hybrid scoring the title channel's reduced title is read back
from the scored vector's text part and the row's title norm, so no second 384-float copy is
held) and the new-item flag.

One copy of the vectors: a recommender serving beside an index (:class:`~streamrec.serving.scorer.
ServingModel` calls :meth:`Recommender.attach_vectors` with ``index.vectors``) keeps only the
trained rows' vectors; those of the items added at serving time are read from the index, which
holds them anyway (1M items of 449-d: 1.8 GB less in the worker); :meth:`Recommender.register_items`
takes items of a saved index back after a restart without reading their titles. Items added at
serving time are not appended to the model's own tables (no per-item 384-float title vector is
kept in memory): a new row's vector is its text projection plus the optional imputed id part,
written into the cache of item vectors (attached: handed to the index).
:meth:`Recommender.remove_items` frees a deleted item's row for the next new item. Titles go
through a :class:`streamrec.model.textcache.TextCache`, so a restart re-embeds no known title.

An empty history (or one with only unknown items) encodes to the zero vector: every item then
scores 0, so callers should fall back to popularity for such users.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from streamrec.model.checkpoint import load_checkpoint
from streamrec.model.data import ItemVocab, history_batch
from streamrec.model.intent import IntentModel
from streamrec.model.sasrec import DEFAULT_EVENT_TYPE, EVENT_TYPE_IDS, PAD_ID, SASRec
from streamrec.model.text import TEXT_DIM, TextEncoder, resolve_device
from streamrec.model.textcache import TextCache

log = logging.getLogger(__name__)


class Recommender:
    version: str  # registry version or checkpoint dir name
    dim: int  # vector dimension d of user and item vectors

    def __init__(
        self,
        model: SASRec,
        vocab: ItemVocab,
        *,
        version: str,
        device: str = "auto",
        text_encoder: TextEncoder | None = None,
        impute_neighbors: int = 0,
        impute_temperature: float = 0.05,
        text_cache: TextCache | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.version = version
        self.dim = int(model.output_dim)  # d, or d + text channel + 1 with hybrid scoring
        self._d = int(model.config.d_model)  # size of the input item vectors (the encoder's)
        self._hybrid = bool(model.config.hybrid)
        self._encoder = text_encoder
        self.text_cache = text_cache
        self._lock = threading.RLock()
        # (capacity, dim) scored item vectors, rows 0..len(vocab) (attached: the trained rows
        # only); their first d columns are the input item vectors the encoder reads. With hybrid
        # scoring also the rows' title norms and new-item flags (capacity,), which the user's text
        # channel reads (the reduced title = unit(text part of the scored vector) * norm).
        self._store: torch.Tensor | None = None
        self._norm: torch.Tensor | None = None
        self._new: torch.Tensor | None = None
        #: where the vectors of added rows are read when attached (``ItemIndex.vectors``)
        self._source: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]] | None = None
        self.rows_computed = 0  # item vectors computed (initial table + added/changed rows)
        self.rows_copied = 0  # item vectors moved when the storage grew
        if impute_neighbors < 0 or impute_temperature <= 0:
            raise ValueError(
                f"impute_neighbors must be >= 0 and impute_temperature > 0, got "
                f"{impute_neighbors}, {impute_temperature}"
            )
        self.impute_neighbors = impute_neighbors
        self.impute_temperature = impute_temperature
        self._n_trained = int(model.config.n_items)  # rows 1..n learned in training
        self.intent: Any = None  # the checkpoint's IntentModel, if it has one (see load)
        # learned[r]: row r still holds the trained item it was learned for (False once freed)
        self._learned = np.ones(self._n_trained + 1, dtype=bool)
        self._learned[PAD_ID] = False

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", version: str | None = None, **options: Any) -> Recommender:
        """Load a checkpoint dir. CheckpointError (clear message) when missing/corrupt/incompatible.
        ``options`` go to the constructor (``impute_neighbors``, ``impute_temperature``,
        ``text_cache``)."""
        dev = resolve_device(device)
        model, vocab = load_checkpoint(path, device=dev)
        rec = cls(model, vocab, version=version or Path(path).name, device=str(dev), **options)
        rec.intent = IntentModel.load(path)
        return rec

    # -- items --------------------------------------------------------------------------------------

    def _item_table(self) -> torch.Tensor:
        """The storage of scored item vectors (rows 0..len(vocab), or the trained rows only when
        attached), created on first use."""
        if self._store is None:
            with torch.inference_mode():
                table = self.model.output_table(self.model.item_table())  # (n_trained+1, dim)
                low, new = (self.model.text_low(), self.model.item_new()) if self._hybrid else (None, None)
            if low is not None and new is not None:  # clones made outside inference mode: writable
                self._norm = low.float().norm(dim=1).clone()  # (n_trained+1,)
                self._new = new.clone()  # (n_trained+1,)
            self._store = table.clone()
            self.rows_computed += table.shape[0] - 1
        return self._store

    def _own(self, rows: np.ndarray) -> np.ndarray:
        """Which ``rows`` this recommender holds itself (all unless attached: then the PAD row
        and the trained rows still learned)."""
        if self._source is None:
            return np.ones(len(rows), dtype=bool)
        own = rows == PAD_ID
        inside = rows < len(self._learned)
        own[inside] |= self._learned[rows[inside]]
        return own

    def _row_vectors(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), dim) scored vectors of vocabulary ``rows`` (float32, on the model's device):
        from the storage, or for added rows of an attached recommender from the index (an id the
        index lacks: the default vector)."""
        table = self._item_table()
        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(table.device)
        own = self._own(rows)
        if own.all():
            return table[idx].float()
        out = torch.empty((len(rows), self.dim), dtype=torch.float32, device=table.device)
        mine = np.flatnonzero(own)
        if mine.size:
            out[torch.from_numpy(mine).to(table.device)] = table[idx[torch.from_numpy(mine)]].float()
        other = np.flatnonzero(~own)
        assert self._source is not None
        ids = [self.vocab.ids[int(r) - 1] or "" for r in rows[other]]
        vecs, found = self._source(ids)
        if not found.all():
            vecs = np.array(vecs, dtype=np.float32)
            vecs[~found] = self.model.default_vector().float().cpu().numpy()
        out[torch.from_numpy(other).to(table.device)] = torch.from_numpy(np.asarray(vecs, np.float32)).to(table.device)
        return out

    def _text_inputs(self, vecs: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Reduced titles (k, r) and new-flags (k,) of ``rows`` whose scored vectors are ``vecs``
        (hybrid), else (None, None): unit(text part) * the row's title norm."""
        if not self._hybrid:
            return None, None
        assert self._norm is not None and self._new is not None
        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self._norm.device)
        r = int(self.model.text_basis.shape[1])
        part = vecs[:, self._d : self._d + r]
        low = torch.nn.functional.normalize(part, dim=1) * self._norm[idx].to(part.device)[:, None]
        return low, self._new[idx].to(part.device)

    @torch.no_grad()
    def _write_rows(
        self,
        rows: torch.Tensor,
        vec: torch.Tensor,
        text: torch.Tensor,
        new: bool | torch.Tensor,
        count: torch.Tensor | None = None,
        *,
        store: bool = True,
    ) -> torch.Tensor:
        """Compute (and with ``store``, keep) the scored vectors of ``rows``: input vectors ``vec``
        (k, d) plus, with hybrid scoring, [beta(i) * unit(t_i) ; b(i)] from their titles ``text``
        (k, TEXT_DIM). Returns them (k, dim) float32."""
        assert self._store is not None
        if not self._hybrid:
            full = vec.float()
        else:
            assert self._norm is not None and self._new is not None
            low = self.model.reduce_text(text)  # (k, r)
            flags = torch.as_tensor(new, dtype=torch.bool, device=low.device).expand(low.shape[0])
            counts = torch.zeros(low.shape[0], device=low.device) if count is None else count
            part = self.model.text_part(low, flags, counts.to(low.device))  # (k, r+1)
            full = torch.cat([vec.to(part.device, part.dtype), part], dim=1).float()
            self._norm[rows] = low.norm(dim=1).to(self._norm.dtype)
            self._new[rows] = flags
        if store:
            self._store[rows] = full.to(self._store.device, self._store.dtype)
        return full

    def _reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows (incl. PAD) by doubling: O(1) amortised per row. Attached,
        only the per-row flags grow (the index holds the added rows' vectors)."""
        self._item_table()
        assert self._store is not None
        have = self._store.shape[0] if self._source is None else (self._new.shape[0] if self._new is not None else 0)
        if have >= rows or (self._source is not None and not self._hybrid):
            return
        used = len(self.vocab) + 1
        cap = max(rows, 2 * have, 1024)
        if self._source is None:
            # torch.empty: the spare rows are untouched pages, address space rather than RSS
            store = torch.empty((cap, self.dim), dtype=self._store.dtype, device=self._store.device)
            store[:used] = self._store[:used]
            self.rows_copied += used
            self._store = store
        if self._hybrid:  # the per-row text inputs grow with the rows
            assert self._norm is not None and self._new is not None
            n_old = min(used, self._norm.shape[0])
            norm = self._norm.new_zeros((cap,))
            norm[:n_old] = self._norm[:n_old]
            new = self._new.new_ones((cap,))
            new[:n_old] = self._new[:n_old]
            self._norm, self._new = norm, new

    def title_norms(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids),) float32: the norm of each item's reduced title (what :meth:`register_items`
        needs to take an item back without its title); 0 for unknown ids and without hybrid."""
        with self._lock:
            rows = np.fromiter((self.vocab.row(str(i)) for i in ids), dtype=np.int64, count=len(ids))
            if self._norm is None:
                return np.zeros(len(ids), np.float32)
            out = self._norm[torch.from_numpy(np.minimum(rows, self._norm.shape[0] - 1))].float().cpu().numpy()
            out[rows == PAD_ID] = 0.0
            return out

    def register_items(self, ids: Sequence[str], norms: np.ndarray) -> bool:
        """Take back items added in an earlier run whose vectors the attached source (a saved
        index loaded for this model version) still holds, with their :meth:`title_norms`: they
        join the vocabulary without their titles being read or anything computed. Ids the
        vocabulary knows are skipped. False (nothing done) when not attached."""
        if self._source is None:
            return False
        with self._lock:
            self._item_table()
            fresh = [str(i) for i, _ in zip(ids, norms) if str(i) not in self.vocab]
            keep = np.fromiter((str(i) not in self.vocab for i in ids), dtype=bool, count=len(ids))
            if not fresh:
                return True
            self._reserve(len(self.vocab) + 1 + max(0, len(fresh) - len(self.vocab.free)))
            self.vocab.add(fresh)
            if self._hybrid:
                assert self._norm is not None and self._new is not None
                rows = torch.as_tensor([self.vocab.row(i) for i in fresh], dtype=torch.long, device=self._norm.device)
                self._norm[rows] = torch.from_numpy(np.asarray(norms, np.float32)[keep]).to(self._norm.device)
                self._new[rows] = True
            return True

    def attach_vectors(self, source: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]] | None) -> None:
        """Read the vectors of items added at serving time from ``source`` (``ItemIndex.vectors``:
        ids -> (vectors, found)) instead of keeping a copy: the index that serves this model holds
        every added item's vector. Drops the copies of added rows held so far (they must be in
        the source). ``None`` detaches (only before anything is added: the copies are gone)."""
        with self._lock:
            self._item_table()
            assert self._store is not None
            self._source = source
            if source is not None and self._store.shape[0] > self._n_trained + 1:
                self._store = self._store[: self._n_trained + 1].clone()

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        """All items the model knows (incl. added ones): ids and (N, d) float32 vectors."""
        with self._lock:
            live = sorted((r, i) for i, r in self.vocab.rows.items())  # rows are unique
            rows = np.array([r for r, _ in live], dtype=np.int64)
            ids = [i for _, i in live]  # == vocab.ids[r - 1]: a live row never holds None
            return ids, self._row_vectors(rows).cpu().numpy().copy()

    def is_learned(self, row: int) -> bool:
        return row < len(self._learned) and bool(self._learned[row])

    def add_items(self, items: Sequence[tuple[str, str | None]]) -> np.ndarray:
        """Vectors (len(items), d) float32 for the index; unknown ids join the vocabulary.

        A trained item keeps its vector (a title it lacked in training is added); an item
        added at serving time gets the vector of the text given now (re-embedding a title
        seen before is a text-cache hit). Only the affected rows are computed.
        """
        items = [(str(i), t if (t is not None and str(t).strip()) else None) for i, t in items]
        if not items:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            self._item_table()
            assert self._store is not None
            # per id, the last text given (a missing text does not erase one given in the batch)
            given: dict[str, str | None] = {}
            for i, t in items:
                if t is not None or i not in given:
                    given[i] = t
            fill: dict[str, str] = {}  # trained items that had no title and now have one
            fresh: dict[str, str | None] = {}  # new ids and added (non-trained) ids: recompute
            for i, t in given.items():
                row = self.vocab.row(i)
                if row != PAD_ID and self.is_learned(row):
                    if t is not None and not bool(self.model.text_emb[row].any()):
                        fill[i] = t
                else:
                    fresh[i] = t
            texts = [t for t in list(fresh.values()) + list(fill.values()) if t is not None]
            vecs = self._encode_texts(texts) if texts else torch.zeros(0, TEXT_DIM)
            it = iter(vecs)
            fresh_text = (
                torch.stack([next(it) if t is not None else torch.zeros(TEXT_DIM) for t in fresh.values()])
                if fresh
                else torch.zeros(0, TEXT_DIM)
            )
            for i in fill:
                self.model.text_emb[self.vocab.row(i)] = next(it).to(self.model.text_emb.device)
            done: dict[str, torch.Tensor] = {}  # id -> its scored vector, computed in this call
            if fill:
                rows = torch.as_tensor(
                    [self.vocab.row(i) for i in fill], dtype=torch.long, device=self.model.id_emb.weight.device
                )
                with torch.inference_mode():
                    count = self.model.item_count[rows] if self._hybrid else None
                    new = self.model.item_new()[rows] if self._hybrid else False
                    full = self._write_rows(rows, self.model.item_table(rows), self.model.text_emb[rows], new, count)
                done.update(zip(fill, full))
                self.rows_computed += len(fill)
            if fresh:
                n_new = sum(1 for i in fresh if i not in self.vocab)
                self._reserve(len(self.vocab) + 1 + max(0, n_new - len(self.vocab.free)))
                self.vocab.add(list(fresh))
                rows = torch.as_tensor([self.vocab.row(i) for i in fresh], dtype=torch.long, device=self._store.device)
                with torch.inference_mode():
                    full = self._write_rows(
                        rows, self._text_only_vectors(fresh_text), fresh_text, True, store=self._source is None
                    )
                done.update(zip(fresh, full))
                self.rows_computed += len(fresh)
            rest = [i for i in given if i not in done]  # trained items, unchanged: stored rows
            if rest:
                rows_np = np.fromiter((self.vocab.row(i) for i in rest), dtype=np.int64, count=len(rest))
                done.update(zip(rest, self._row_vectors(rows_np)))
            return torch.stack([done[i] for i, _ in items]).float().cpu().numpy()

    def remove_items(self, ids: Sequence[str]) -> int:
        """Forget deleted items: their rows are freed for the next new items (a trained item's
        learned row too). They leave user histories' encodings from now on. Returns rows freed."""
        with self._lock:
            self._item_table()
            freed = self.vocab.remove(str(i) for i in ids)
            for row in freed:
                if row < len(self._learned):
                    self._learned[row] = False
            return len(freed)

    @torch.no_grad()
    def _text_only_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """Vectors of items without a learned row: projection of their title embedding (the
        default vector when they have none) plus the optional imputed id part. (k, d)"""
        dev = self.model.text_proj.weight.device
        text = text.to(dev, torch.float32)
        if self.model.config.use_text:
            vec = self.model.text_proj(text)  # (k, d)
        else:
            vec = torch.zeros(text.shape[0], self._d, device=dev)
        return self.model.item_vec(self._impute_ids(text), vec)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per part (measured from the arrays, not estimated)."""
        with self._lock:
            store = 0 if self._store is None else self._store.numel() * self._store.element_size()
            used = (len(self.vocab) + 1 if self._source is None else min(len(self.vocab), self._n_trained) + 1) * (
                self.dim * 4
            )
            for extra in (self._norm, self._new):
                if extra is not None:
                    store += extra.numel() * extra.element_size()
                    used += (len(self.vocab) + 1) * extra.element_size()
            model = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            text = self.model.text_emb.numel() * self.model.text_emb.element_size()
            table = self.model.transitions
            return {
                "item_vectors_used": used,
                "item_vectors_capacity": store,
                "model_weights": model,
                "model_text_emb": text,
                "transitions": 0 if table is None else int(table.indptr.nbytes + table.cols.nbytes + table.vals.nbytes),
            }

    @torch.no_grad()
    def _impute_ids(self, text: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Id part of new items (k, d): with ``impute_neighbors`` > 0, the similarity-weighted
        mean id embedding of the trained items with the most similar titles (cosine of MiniLM
        vectors); zeros otherwise and for items without text."""
        out = torch.zeros(text.shape[0], self._d, device=text.device)
        n, k = self._n_trained, min(self.impute_neighbors, self._n_trained)
        if k == 0:
            return out
        known_text = self.model.text_emb[1 : n + 1].to(text.device)  # (n, 384)
        learned = torch.as_tensor(self._learned[1 : n + 1], device=text.device)
        has_text = (known_text.abs().sum(1) > 0) & learned  # (n,)
        if not bool(has_text.any()):
            return out
        known = torch.nn.functional.normalize(known_text, dim=1)
        known_ids = self.model.id_emb.weight[1 : n + 1].to(text.device)  # (n, d)
        for start in range(0, text.shape[0], chunk):
            q = text[start : start + chunk]  # (c, TEXT_DIM)
            with_text = q.abs().sum(1) > 0  # (c,)
            sim = torch.nn.functional.normalize(q, dim=1) @ known.T  # (c, n)
            sim[:, ~has_text] = -2.0
            top, idx = sim.topk(k, dim=1)  # (c, k)
            w = torch.softmax(top / self.impute_temperature, dim=1)  # (c, k)
            imputed = (w.unsqueeze(-1) * known_ids[idx]).sum(1)  # (c, d)
            out[start : start + q.shape[0]] = imputed * with_text[:, None]
        return out

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.text_cache is None:  # no shared cache given: one in memory for this process
            if self._encoder is None:
                self._encoder = TextEncoder(device=str(self.device))
            self.text_cache = TextCache(None, encoder=self._encoder)
        return torch.from_numpy(self.text_cache.encode(texts))

    # -- users --------------------------------------------------------------------------------------

    def encode_users(self, histories: Sequence[Sequence[tuple[str, str]]]) -> np.ndarray:
        """(B, d) float32 user vectors; one batched forward. Unknown items are skipped; only the
        newest ``max_len`` are read; an empty history gives the zero vector."""
        if len(histories) == 0:
            return np.zeros((0, self.dim), np.float32)
        default_type = EVENT_TYPE_IDS[DEFAULT_EVENT_TYPE]
        rows, types = [], []
        with self._lock:
            for h in histories:
                r, t = [], []
                for item, etype in h:
                    row = self.vocab.row(str(item))
                    if row != PAD_ID:
                        r.append(row)
                        t.append(EVENT_TYPE_IDS.get(etype, default_type))
                rows.append(r[-self.model.config.max_len :])
                types.append(t[-self.model.config.max_len :])
            x, xt = history_batch(rows, types, self.model.config.max_len)
            # only the rows this batch reads (PAD first: row 0 stays the padding row)
            uniq, inv = np.unique(np.concatenate([[PAD_ID], x.numpy().ravel()]), return_inverse=True)
            local = torch.from_numpy(inv[1:].reshape(tuple(x.shape)).astype(np.int64))
            with torch.inference_mode():
                vecs = self._row_vectors(uniq)  # (U, dim)
                low, new = self._text_inputs(vecs, uniq)
                h = self.model.user_vectors(
                    local.to(self.device), xt.to(self.device), vecs[:, : self._d], low=low, new_rows=new
                )  # (B, dim)
        return h.float().cpu().numpy().copy()

    def lookup(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(len(item_ids), d) float32 item vectors (unknown ids: the default vector) and an int8
        array of what each is: 0 learned in training, 1 added since (zero-shot, from its text),
        2 unknown to the model."""
        with self._lock:
            table = self._item_table()
            rows = self.rows_of(item_ids)
            vecs = self._row_vectors(rows)
            unknown = rows == PAD_ID
            if unknown.any():
                default = self.model.default_vector().to(table.device)
                vecs = torch.where(torch.from_numpy(unknown).to(table.device)[:, None], default[None], vecs)
            learned = np.zeros(len(rows), dtype=bool)
            inside = rows < len(self._learned)
            learned[inside] = self._learned[rows[inside]]
            kind = (~learned).astype(np.int8)  # a row freed and reused by a new item is not learned
            kind[unknown] = 2
            return vecs.float().cpu().numpy(), kind

    @property
    def transitions(self) -> Any:
        """The model's item-to-item transitions with a weight (:mod:`streamrec.model.transitions`), or None."""
        table = self.model.transitions
        return table if table is not None and table.served else None

    def transition_terms(
        self, histories: Sequence[Sequence[tuple[str, str]]]
    ) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """The items the histories' newest items were followed by in training, and each one's term
        of the served score (``weight * log1p(score)``), flat: ``(rows, ids, terms, cut)``,
        history ``u``'s part being ``[cut[u]:cut[u + 1]]``. Rows that a new item has taken over
        since training (or freed) neither give nor get transitions. Empty without a table."""
        table = self.transitions
        if table is None:
            return np.zeros(0, np.int64), [], np.zeros(0, np.float32), np.zeros(len(histories) + 1, np.int64)
        with self._lock:
            get = self.vocab.rows.get
            rows = [[get(str(item), PAD_ID) for item, _ in h[-table.recent :]] for h in histories]
            user, col, term = table.sparse(rows, usable=self._learned)
            # a learned row always holds its item (remove_items clears the flag with the row)
            names = cast(list[str], list(map(self.vocab.ids.__getitem__, (col - 1).tolist())))
        cut = np.searchsorted(user, np.arange(len(histories) + 1))
        return col, names, term * np.float32(table.weight), cut

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Each id's row (int64; 0 for an id the model does not know), without a Python-level call per id."""
        with self._lock:
            return np.fromiter(
                map(self.vocab.rows.get, map(str, item_ids), itertools.repeat(PAD_ID)), np.int64, len(item_ids)
            )

    def row_scores(self, user_vecs: np.ndarray, users: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Inner products of pairs: ``user_vecs[users[j]] . vector(rows[j])`` (float32), rows being
        live rows (:meth:`rows_of`, :meth:`transition_terms`)."""
        if len(rows) == 0:
            return np.zeros(0, np.float32)
        with self._lock:
            v = self._row_vectors(np.asarray(rows, dtype=np.int64)).float().cpu().numpy()
        u = np.asarray(user_vecs, dtype=np.float32)[np.asarray(users, dtype=np.int64)]
        return np.einsum("ij,ij->i", u, v)

    def score(self, user_vecs: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """(B, len(item_ids)) inner products; unknown ids score with the default item vector."""
        u = np.asarray(user_vecs, dtype=np.float32)
        if u.ndim != 2 or u.shape[1] != self.dim:
            raise ValueError(f"user_vecs must have shape (B, {self.dim}), got {u.shape}")
        with self._lock:
            table = self._item_table()
            default = self.model.default_vector().to(table.device)
            rows = [self.vocab.row(str(i)) for i in item_ids]
            idx = torch.as_tensor(rows, dtype=torch.long, device=table.device)
            vecs = self._row_vectors(np.array(rows, dtype=np.int64)) if rows else torch.zeros(0, self.dim)
            if rows:
                vecs = torch.where((idx == PAD_ID)[:, None], default[None], vecs)
            v = vecs.float().cpu().numpy()
        return u @ v.T
