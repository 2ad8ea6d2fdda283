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

An empty history (or one with only unknown items) encodes to the zero vector: every item then
scores 0, so callers should fall back to popularity for such users.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamrec.model.checkpoint import load_checkpoint
from streamrec.model.data import ItemVocab, history_batch
from streamrec.model.sasrec import DEFAULT_EVENT_TYPE, EVENT_TYPE_IDS, PAD_ID, SASRec
from streamrec.model.text import TEXT_DIM, TextEncoder, resolve_device

log = logging.getLogger(__name__)


class Recommender:
    version: str  # registry version or checkpoint dir name
    dim: int  # vector dimension d of user and item vectors

    def __init__(self, model: SASRec, vocab: ItemVocab, *, version: str, device: str = "auto",
                 text_encoder: TextEncoder | None = None, impute_neighbors: int = 0,
                 impute_temperature: float = 0.05) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.version = version
        self.dim = int(model.output_dim)  # d, or d + text channel + 1 with hybrid scoring
        self._encoder = text_encoder
        self._lock = threading.RLock()
        self._table: torch.Tensor | None = None  # (N+1, d) cached input item vectors
        self._out: torch.Tensor | None = None  # (N+1, dim) cached scored item vectors
        if impute_neighbors < 0 or impute_temperature <= 0:
            raise ValueError(f"impute_neighbors must be >= 0 and impute_temperature > 0, got "
                             f"{impute_neighbors}, {impute_temperature}")
        self.impute_neighbors = impute_neighbors
        self.impute_temperature = impute_temperature
        self._n_trained = int(model.config.n_items)  # rows 1..n learned in training

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", version: str | None = None,
             **options: float) -> "Recommender":
        """Load a checkpoint dir. CheckpointError (clear message) when missing/corrupt/incompatible.
        ``options`` go to the constructor (``impute_neighbors``, ``impute_temperature``)."""
        dev = resolve_device(device)
        model, vocab = load_checkpoint(path, device=dev)
        return cls(model, vocab, version=version or Path(path).name, device=str(dev), **options)

    # -- items --------------------------------------------------------------------------------------

    def _item_table(self) -> torch.Tensor:
        if self._table is None:
            with torch.inference_mode():
                self._table = self.model.item_table()  # (N+1, d)
        return self._table

    def _out_table(self) -> torch.Tensor:
        if self._out is None:
            with torch.inference_mode():
                self._out = self.model.output_table(self._item_table())  # (N+1, dim)
        return self._out

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        """All items the model knows (incl. added ones): ids and (N, d) float32 vectors."""
        with self._lock:
            table = self._out_table()
            return list(self.vocab.ids), table[1:].float().cpu().numpy().copy()

    def add_items(self, items: Sequence[tuple[str, str | None]]) -> np.ndarray:
        """Vectors (len(items), d) float32 for the index; unknown ids join the vocabulary."""
        items = [(str(i), t if (t is not None and str(t).strip()) else None) for i, t in items]
        with self._lock:
            # Unknown ids (first occurrence wins) and known ids that lack text but now have it.
            new: dict[str, str | None] = {}
            fill: dict[str, str] = {}
            for i, t in items:
                if i in self.vocab:
                    row = self.vocab.row(i)
                    if t is not None and not bool(self.model.text_emb[row].any()):
                        fill[i] = t
                elif i not in new:
                    new[i] = t
                elif new[i] is None and t is not None:
                    new[i] = t
            to_encode = [t for t in list(new.values()) + list(fill.values()) if t is not None]
            vecs = self._encode_texts(to_encode) if to_encode else torch.zeros(0, TEXT_DIM)
            it = iter(vecs)
            new_emb = torch.stack([next(it) if t is not None else torch.zeros(TEXT_DIM)
                                   for t in new.values()]) if new else torch.zeros(0, TEXT_DIM)
            for i in fill:
                self.model.text_emb[self.vocab.row(i)] = next(it).to(self.device)
            if new:
                first = int(self.model.config.n_items) + 1
                self.model.grow(new_emb)
                self.vocab.add(list(new))
                self._impute_ids(first, new_emb)
            if new or fill:
                self._table = self._out = None
            table = self._out_table()
            rows = torch.as_tensor([self.vocab.row(i) for i, _ in items], dtype=torch.long,
                                   device=table.device)
            return table[rows].float().cpu().numpy().copy() if items else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def _impute_ids(self, first_row: int, text: torch.Tensor, chunk: int = 1024) -> None:
        """Give new rows ``first_row..`` (with text) the similarity-weighted mean id embedding of
        the trained items with the most similar titles (cosine of MiniLM vectors)."""
        n, k = self._n_trained, min(self.impute_neighbors, self._n_trained)
        if k == 0:
            return
        known_text = self.model.text_emb[1 : n + 1]  # (n, TEXT_DIM)
        has_text = known_text.abs().sum(1) > 0  # (n,)
        if not bool(has_text.any()):
            return
        known = torch.nn.functional.normalize(known_text, dim=1)
        known_ids = self.model.id_emb.weight[1 : n + 1]  # (n, d)
        text = text.to(known.device, torch.float32)
        for start in range(0, text.shape[0], chunk):
            q = text[start : start + chunk]  # (c, TEXT_DIM)
            with_text = q.abs().sum(1) > 0  # (c,)
            sim = torch.nn.functional.normalize(q, dim=1) @ known.T  # (c, n)
            sim[:, ~has_text] = -2.0
            top, idx = sim.topk(k, dim=1)  # (c, k)
            w = torch.softmax(top / self.impute_temperature, dim=1)  # (c, k)
            imputed = (w.unsqueeze(-1) * known_ids[idx]).sum(1)  # (c, d)
            rows = torch.arange(first_row + start, first_row + start + q.shape[0], device=known.device)
            self.model.id_emb.weight[rows[with_text]] = imputed[with_text]

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self._encoder is None:
            self._encoder = TextEncoder(device=str(self.device))
        return torch.from_numpy(self._encoder.encode(texts))

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
                rows.append(r[-self.model.config.max_len:])
                types.append(t[-self.model.config.max_len:])
            table = self._item_table()
            x, t = history_batch(rows, types, self.model.config.max_len)
            with torch.inference_mode():
                h = self.model.user_vectors(x.to(self.device), t.to(self.device), table)  # (B, dim)
        return h.float().cpu().numpy().copy()

    def score(self, user_vecs: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """(B, len(item_ids)) inner products; unknown ids score with the default item vector."""
        u = np.asarray(user_vecs, dtype=np.float32)
        if u.ndim != 2 or u.shape[1] != self.dim:
            raise ValueError(f"user_vecs must have shape (B, {self.dim}), got {u.shape}")
        with self._lock:
            table = self._out_table()
            default = self.model.default_vector().to(table.device)
            rows = [self.vocab.row(str(i)) for i in item_ids]
            idx = torch.as_tensor(rows, dtype=torch.long, device=table.device)
            vecs = table[idx] if rows else torch.zeros(0, self.dim, device=table.device)
            if rows:
                vecs = torch.where((idx == PAD_ID)[:, None], default[None], vecs)
            v = vecs.float().cpu().numpy()
        return u @ v.T
