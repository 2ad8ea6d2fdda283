"""Item-to-item transitions: what followed each item in the training sequences, added to the
model's score.

The sequential model generalises; it does not memorise which exact item tends to follow which.
A count does: on Beauty, adding ``weight * log1p(transition score)`` to the model's score lifts
validation NDCG@10 by 5-7 % and test by 6.9 % (``bench/RESULTS.md``, sixteenth session), where
neither the model's width nor its regularisation moved it. The table is built from the same
training part the model learns from (never a validation or test item), and the weight is chosen on
validation pairs (:func:`streamrec.model.evaluate.fit_transition_weight`); 0 when no weight helps,
as on the simulator's shop, whose sequences follow tastes rather than items: the table is then not
served. Off by default (``TrainSettings.transitions``, ``--transitions``): a new catalog item has no
followers yet, so the items the table names rise above it.

- :meth:`Transitions.fit`: for each item row ``a``, the rows ``b`` that followed it within
  ``window`` steps of a training sequence, weighted ``1 / distance``, at most ``top_m`` per item
  (the heaviest): memory is bounded by ``top_m`` per item, whatever the catalog's size.
- A user's transition score of row ``b``: the sum over the user's newest ``recent`` history rows
  (newest first, weight ``decay ** age``) of their weight to ``b``. The served term is
  ``weight * log1p(score)``.
- :meth:`Transitions.sparse` gives each user's candidates and terms (a few hundred at most);
  serving adds them to the index's results and scores the candidates the index did not return
  (:mod:`streamrec.serving.scorer`): the top k of the full sum is then exact for an exact index.

Rows are the model's item rows; a row that a serving model frees and gives to a new item must not
take the old item's transitions (the caller filters by its own record of learned rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FILE = "transitions.safetensors"
WINDOW = 3  # a follower counts within this many steps (chosen on Beauty's validation split)
TOP_M = 50  # followers kept per item
RECENT = 3  # history items that contribute, newest first
DECAY = 0.5  # weight of the k-th newest of them: DECAY ** k
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)  # the grid fit_weight chooses from
MAX_TOP_M = 1000
MAX_RECENT = 50


def _flag(flags: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``flags[rows]``, False for rows beyond ``flags`` (rows added after it was made)."""
    return (rows < len(flags)) & flags[np.minimum(rows, len(flags) - 1)]


@dataclass
class Transitions:
    """A CSR table over item rows 0..n: the followers of row ``a`` are
    ``cols[indptr[a]:indptr[a + 1]]`` with weights ``vals[...]``."""

    indptr: np.ndarray  # (n + 2,) int64
    cols: np.ndarray  # (nnz,) int64
    vals: np.ndarray  # (nnz,) float32
    weight: float = 0.0  # of log1p(score) in the served score; 0 = not served
    recent: int = RECENT
    decay: float = DECAY

    def __post_init__(self) -> None:
        self.indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        self.cols = np.ascontiguousarray(self.cols, dtype=np.int64)
        self.vals = np.ascontiguousarray(self.vals, dtype=np.float32)
        n = len(self.indptr) - 2
        if (
            n < 0
            or self.indptr[0] != 0
            or self.indptr[-1] != len(self.cols)
            or len(self.vals) != len(self.cols)
            or np.any(np.diff(self.indptr) < 0)
            or (len(self.cols) and (self.cols.min() < 1 or self.cols.max() > n))
            or not np.all(np.isfinite(self.vals))
        ):
            raise ValueError("transitions table is malformed (indptr, cols and vals do not fit together)")
        if not (0.0 <= self.weight <= 100.0 and 1 <= self.recent <= MAX_RECENT and 0.0 < self.decay <= 1.0):
            raise ValueError(
                f"transitions: weight must be in [0, 100], recent in 1..{MAX_RECENT} and decay in (0, 1]; "
                f"got {self.weight}, {self.recent}, {self.decay}"
            )

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 2

    @property
    def served(self) -> bool:
        """Whether the term is part of the served score (a weight of 0 keeps the table unused)."""
        return self.weight > 0

    @classmethod
    def fit(
        cls, sequences: Sequence[Sequence[int]], n_items: int, *, window: int = WINDOW, top_m: int = TOP_M
    ) -> Transitions:
        """Count, over ``sequences`` of item rows (0 = padding, skipped), each ``b`` that follows
        ``a`` within ``window`` steps (weight 1 / steps; an item following itself is not counted),
        and keep the ``top_m`` heaviest followers of each ``a``. Vectorised: one pass per step."""
        if not 1 <= window <= 20 or not 1 <= top_m <= MAX_TOP_M:
            raise ValueError(f"window must be in 1..20 and top_m in 1..{MAX_TOP_M}, got {window}, {top_m}")
        lens = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
        flat = np.fromiter((i for s in sequences for i in s), np.int64, int(lens.sum()))
        if len(flat) and (flat.min() < 0 or flat.max() > n_items):
            raise ValueError(f"item rows must lie in 0..{n_items}")
        seq = np.repeat(np.arange(len(lens)), lens)
        keys, weights = [], []
        for d in range(1, window + 1):
            a, b = flat[:-d], flat[d:]
            ok = (seq[:-d] == seq[d:]) & (a != b) & (a > 0) & (b > 0)
            keys.append(a[ok] * (n_items + 1) + b[ok])
            weights.append(np.full(int(ok.sum()), 1.0 / d))
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        uniq, inv = np.unique(key, return_inverse=True)
        w = np.bincount(inv, weights=np.concatenate(weights) if weights else None, minlength=len(uniq))
        src, dst = uniq // (n_items + 1), uniq % (n_items + 1)
        order = np.lexsort((-w, src))  # by source, heaviest first
        src, dst, w = src[order], dst[order], w[order]
        start = np.searchsorted(src, src, side="left")
        keep = (np.arange(len(src)) - start) < top_m
        src, dst, w = src[keep], dst[keep], w[keep]
        indptr = np.zeros(n_items + 2, np.int64)
        np.add.at(indptr, src + 1, 1)
        return cls(np.cumsum(indptr), dst, w.astype(np.float32))

    def sparse(
        self, histories: Sequence[Sequence[int]], *, usable: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(user, row, log1p(score))``, one triple per user and candidate row (sorted by user).
        ``usable`` (bool per row): rows that still hold the item the table was built for; other
        rows neither contribute nor are candidates."""
        n = self.n_items
        newest = [h[-self.recent :] for h in histories]
        lens = np.fromiter(map(len, newest), np.int64, len(newest))
        src = np.fromiter(itertools.chain.from_iterable(newest), np.int64, int(lens.sum()))
        user = np.repeat(np.arange(len(newest)), lens)
        age = np.repeat(np.cumsum(lens), lens) - 1 - np.arange(len(src))  # 0 = the newest
        ok = (src > 0) & (src <= n)
        if usable is not None:
            ok &= _flag(usable, src)
        src, user = src[ok], user[ok]
        w = self.decay ** age[ok].astype(np.float64)
        start, cnt = self.indptr[src], self.indptr[src + 1] - self.indptr[src]
        total = int(cnt.sum())
        empty = np.zeros(0, np.int64)
        if total == 0:
            return empty, empty, np.zeros(0, np.float32)
        offs = np.repeat(start - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        col = self.cols[offs]
        val = self.vals[offs] * np.repeat(w, cnt)
        row_user = np.repeat(user, cnt)
        if usable is not None:
            keep = _flag(usable, col)
            col, val, row_user = col[keep], val[keep], row_user[keep]
        uniq, inv = np.unique(row_user * (n + 1) + col, return_inverse=True)
        score = np.log1p(np.bincount(inv, weights=val, minlength=len(uniq))).astype(np.float32)
        return uniq // (n + 1), uniq % (n + 1), score

    def dense(self, histories: Sequence[Sequence[int]], n_rows: int) -> torch.Tensor:
        """(B, n_rows) ``log1p(score)`` (zeros where no transition): for full-ranking evaluation."""
        u, c, s = self.sparse(histories)
        out = torch.zeros(len(histories), n_rows)
        keep = c < n_rows
        out[torch.from_numpy(u[keep]), torch.from_numpy(c[keep])] = torch.from_numpy(s[keep])
        return out

    # -- files ----------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        from streamrec.fsutil import atomic_write

        path = Path(directory) / FILE
        tensors = {"indptr": self.indptr, "cols": self.cols, "vals": self.vals}
        meta = {"weight": repr(float(self.weight)), "recent": str(int(self.recent)), "decay": repr(float(self.decay))}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Transitions | None:
        """The table saved in ``directory``, or None when it has none. ValueError when corrupt."""
        from safetensors import safe_open

        path = Path(directory) / FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in ("indptr", "cols", "vals")}
            return cls(
                **arrays,
                weight=float(meta.get("weight", "0")),
                recent=int(meta.get("recent", str(RECENT))),
                decay=float(meta.get("decay", str(DECAY))),
            )
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: unreadable transitions table: {exc}") from None
