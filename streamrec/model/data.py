"""Reading interaction files, the item vocabulary and leave-one-out splits.

File formats:

- sequences: one user per line, ``user item item ...`` oldest first, whitespace separated. A
  token may carry an event type as ``item:purchase`` (``view``, ``add_to_cart``,
  ``remove_from_cart``, ``purchase``); a bare item is a ``view``.
- item text: TSV ``item_id<TAB>title`` with a header line; the title may be empty.

Both are parsed (and validated) by :mod:`streamrec.datafiles`, the reader the replay tool uses too.

Leave-one-out (the published protocol): per user the last item is the test target, the one
before it the validation target, everything earlier is training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from streamrec import datafiles
from streamrec.fsutil import atomic_write_text
from streamrec.model.sasrec import DEFAULT_EVENT_TYPE, EVENT_TYPE_IDS, PAD_ID

if TYPE_CHECKING:
    from streamrec.model.augment import Augmenter


@dataclass
class Interactions:
    """Users' histories, oldest first, with the external ids as in the file."""

    users: list[str] = field(default_factory=list)
    items: list[list[str]] = field(default_factory=list)
    types: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, idx: Iterable[int]) -> Interactions:
        idx = list(idx)
        return Interactions([self.users[i] for i in idx], [self.items[i] for i in idx], [self.types[i] for i in idx])


def read_sequences(path: str | Path) -> Interactions:
    """Parse a sequences file (with :func:`streamrec.datafiles.read_sequences`, the one reader:
    ``DatasetError``, a ValueError, naming the file and line when it is unusable). A bare item's
    type is ``view``."""
    out = Interactions()
    for user, tokens in datafiles.read_sequences(path).items():
        toks = [datafiles.split_token(t) for t in tokens]
        out.users.append(user)
        out.items.append([item for item, _ in toks])
        out.types.append([kind or DEFAULT_EVENT_TYPE for _, kind in toks])
    return out


def read_item_text(path: str | Path | None) -> dict[str, str | None]:
    """Parse an ``item_id<TAB>title`` TSV (with :func:`streamrec.datafiles.read_item_text`); an
    empty title is ``None`` (nothing to embed). ``None`` -> ``{}``; a missing file -> ValueError."""
    if path is None:
        return {}
    return {item: title or None for item, title in datafiles.read_item_text(path).items()}


class ItemVocab:
    """External item id (str) <-> row (1..n). Row 0 is PAD. Saved as ``item_map.json``.

    A serving model may :meth:`remove` items: their rows become free (``ids[row - 1]`` is None)
    and :meth:`add` fills free rows first. ``len`` counts rows (the table size); a vocabulary
    with free rows cannot be saved as a checkpoint's item map.
    """

    def __init__(self, ids: Sequence[str] = ()) -> None:
        self.ids: list[str | None] = []
        self.rows: dict[str, int] = {}
        self.free: list[int] = []  # rows of removed items, reused by add()
        self.add(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item: str) -> bool:
        return item in self.rows

    @property
    def n_live(self) -> int:
        return len(self.rows)

    def add(self, ids: Iterable[str]) -> list[str]:
        """Give unseen ids a row (a free one first, else the next); returns the new ids."""
        new = []
        for i in ids:
            if i not in self.rows:
                if self.free:
                    row = self.free.pop()
                    self.ids[row - 1] = i
                else:
                    self.ids.append(i)
                    row = len(self.ids)
                self.rows[i] = row
                new.append(i)
        return new

    def remove(self, ids: Iterable[str]) -> list[int]:
        """Forget ``ids`` (unknown ones are ignored); returns the rows freed."""
        freed = []
        for i in ids:
            row = self.rows.pop(i, None)
            if row is not None:
                self.ids[row - 1] = None
                freed.append(row)
        self.free.extend(freed)
        return freed

    def row(self, item: str) -> int:
        return self.rows.get(item, PAD_ID)

    def save(self, path: Path) -> None:
        if self.free:
            raise ValueError(f"item map has {len(self.free)} free rows; a checkpoint needs rows 1..n")
        atomic_write_text(path, json.dumps(self.rows, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> ItemVocab:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, dict):
            raise ValueError("item map must be a JSON object {item_id: row}")
        ordered = sorted(rows.items(), key=lambda kv: kv[1])
        if [r for _, r in ordered] != list(range(1, len(ordered) + 1)):
            raise ValueError("item map rows must be 1..n without gaps")
        return cls([str(k) for k, _ in ordered])


def vocab_from(data: Interactions) -> ItemVocab:
    """Items in order of first appearance (deterministic for a given file)."""
    vocab = ItemVocab()
    for seq in data.items:
        vocab.add(seq)
    return vocab


@dataclass
class Encoded:
    """Histories as rows and event-type ids (PAD-free python lists)."""

    items: list[list[int]]
    types: list[list[int]]


def encode(data: Interactions, vocab: ItemVocab, *, drop_unknown: bool = True) -> Encoded:
    items, types = [], []
    for seq, ts in zip(data.items, data.types):
        r = [(vocab.row(i), EVENT_TYPE_IDS.get(t, 1)) for i, t in zip(seq, ts)]
        if drop_unknown:
            r = [x for x in r if x[0] != PAD_ID]
        items.append([x[0] for x in r])
        types.append([x[1] for x in r])
    return Encoded(items, types)


@dataclass
class Split:
    """Leave-one-out split. ``train`` sequences; eval = (input history, target row) pairs."""

    train: Encoded
    val_inputs: Encoded
    val_targets: np.ndarray
    test_inputs: Encoded
    test_targets: np.ndarray


def leave_one_out(enc: Encoded, *, val_users: int | None = None, seed: int = 0, train_on_last: bool = False) -> Split:
    """Users with >= 3 items give a test case (last item, history = all before it).

    ``val_users=None`` (the classic split): every such user also gives a validation case (the
    second-last item, history = all before it) and trains on what precedes it. ``val_users=N``:
    only N random users are held out for validation; all others also train on their second-last
    item (more and fresher training data, same test). Users with < 3 items only train.
    ``train_on_last=True``: users not held out for validation also train on their last item
    (for callers that keep their own hold-out, such as the retraining gate); the test pairs are
    then trained on and must not be reported.
    """
    eligible = [k for k, s in enumerate(enc.items) if len(s) >= 3]
    if val_users is None or val_users >= len(eligible):
        held = set(eligible)
    else:
        rng = np.random.default_rng(seed)
        held = set(rng.choice(eligible, size=max(val_users, 0), replace=False).tolist())
    tr_i, tr_t, vi, vt, vy, ti, tt, ty = [], [], [], [], [], [], [], []
    for k, (s, t) in enumerate(zip(enc.items, enc.types)):
        if len(s) >= 3:
            ti.append(s[:-1])
            tt.append(t[:-1])
            ty.append(s[-1])
            if k in held:
                tr_i.append(s[:-2])
                tr_t.append(t[:-2])
                vi.append(s[:-2])
                vt.append(t[:-2])
                vy.append(s[-2])
            elif train_on_last:
                tr_i.append(s)
                tr_t.append(t)
            else:
                tr_i.append(s[:-1])
                tr_t.append(t[:-1])
        else:
            tr_i.append(s)
            tr_t.append(t)
    return Split(
        Encoded(tr_i, tr_t),
        Encoded(vi, vt),
        np.array(vy, dtype=np.int64),
        Encoded(ti, tt),
        np.array(ty, dtype=np.int64),
    )


def pad_left(seqs: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """Left-pad (and keep the newest ``length``) -> (B, length) int64.

    One numpy scatter for the whole batch (no per-row tensor), as the worker pads every batch.

    >>> pad_left([[1, 2, 3], [4], []], 2).tolist()
    [[2, 3], [0, 4], [0, 0]]
    """
    n = len(seqs)
    if n == 0 or length <= 0:
        return torch.full((n, max(length, 0)), PAD_ID, dtype=torch.long)
    kept = [s[-length:] if isinstance(s, list) else list(s)[-length:] for s in seqs]
    lens = np.fromiter((len(s) for s in kept), dtype=np.int64, count=n)
    out = np.full((n, length), PAD_ID, dtype=np.int64)
    total = int(lens.sum())
    if total:
        flat = np.fromiter((x for s in kept for x in s), dtype=np.int64, count=total)
        rows = np.repeat(np.arange(n), lens)
        # column of each kept value: right-aligned, so row b's values fill length-len_b .. length-1
        starts = np.cumsum(lens) - lens
        cols = np.arange(total) - np.repeat(starts, lens) + np.repeat(length - lens, lens)
        out[rows, cols] = flat
    return torch.from_numpy(out)


def history_batch(
    items: Sequence[Sequence[int]], types: Sequence[Sequence[int]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories -> left-padded (B, T) item rows and type ids, T = min(longest, max_len) >= 1."""
    T = max(1, min(max_len, max((len(s) for s in items), default=1)))
    return pad_left(items, T), pad_left(types, T)


def _chunks(
    train: Encoded, *, max_len: int, batch_size: int, rng: np.random.Generator
) -> Iterable[tuple[list[list[int]], list[list[int]]]]:
    """Shuffled batches of (sequences, types), each sequence its newest ``max_len + 1`` items."""
    idx = np.array([i for i, s in enumerate(train.items) if len(s) >= 2], dtype=np.int64)
    lens = np.array([min(len(train.items[i]), max_len + 1) for i in idx])
    for rows in _bucketed(lens, batch_size, rng):
        chunk = [int(idx[j]) for j in rows]
        yield [train.items[i][-(max_len + 1) :] for i in chunk], [train.types[i][-(max_len + 1) :] for i in chunk]


def _bucketed(lens: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    """Batches of row numbers (of ``lens``), by length bucketing: shuffle, sort within pools of 50
    batches by length, shuffle the batches. Short histories then share a batch and are not padded
    to the longest one (most shop histories are short, so this saves most of the transformer's
    work)."""
    order = rng.permutation(len(lens))
    pool = 50 * batch_size
    batches: list[np.ndarray] = []
    for p in range(0, len(order), pool):
        part = order[p : p + pool]
        part = part[np.argsort(lens[part], kind="stable")]
        batches.extend(part[s : s + batch_size] for s in range(0, len(part), batch_size))
    for b in rng.permutation(len(batches)):
        yield batches[b]


def _tensors(
    seqs: list[list[int]], tys: list[list[int]], augment: Augmenter | None, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if augment is not None:
        xs, xt, ys = augment.batch(seqs, tys, rng)
        T = max(len(x) for x in xs)
        return pad_left(xs, T), pad_left(xt, T), pad_left(ys, T)
    T = max(len(x) for x in seqs) - 1
    return (
        pad_left([x[:-1] for x in seqs], T),
        pad_left([x[:-1] for x in tys], T),
        pad_left([x[1:] for x in seqs], T),
    )


def training_batches(
    train: Encoded,
    *,
    max_len: int,
    batch_size: int,
    rng: np.random.Generator,
    augment: Augmenter | None = None,
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled (inputs, types, targets) batches: input s[:-1] predicts s[1:] at every position.

    ``augment``: each sequence (its newest ``max_len + 1`` items) may be cropped, reordered or
    have input items masked first (:mod:`streamrec.model.augment`; draws from ``rng``). None
    draws nothing more from ``rng``: the same batches as without it."""
    for seqs, tys in _chunks(train, max_len=max_len, batch_size=batch_size, rng=rng):
        yield _tensors(seqs, tys, augment, rng)


def prefix_count(train: Encoded) -> int:
    """How many (prefix, next item) pairs :func:`prefix_batches` draws from ``train``."""
    return sum(max(len(s) - 1, 0) for s in train.items)


def prefix_batches(
    train: Encoded, *, max_len: int, batch_size: int, rng: np.random.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled (inputs, types, targets) batches of one (prefix, next item) pair per row: every
    prefix of every sequence (its newest ``max_len`` items) predicts the item after it, the
    target at the last position and PAD elsewhere (BSARec's and S3-Rec's training samples; for
    a model whose positions read later ones, ``SASRecConfig.freq_kernel`` "window")."""
    seq = np.array([k for k, s in enumerate(train.items) for _ in range(len(s) - 1)], dtype=np.int64)
    end = np.array([i for s in train.items for i in range(1, len(s))], dtype=np.int64)  # target index
    for rows in _bucketed(np.minimum(end, max_len), batch_size, rng):
        xs = [train.items[seq[j]][max(0, end[j] - max_len) : end[j]] for j in rows]
        ts = [train.types[seq[j]][max(0, end[j] - max_len) : end[j]] for j in rows]
        x, t = history_batch(xs, ts, max_len)
        y = torch.zeros_like(x)
        y[:, -1] = torch.as_tensor([train.items[seq[j]][end[j]] for j in rows], dtype=torch.long)
        yield x, t, y


ViewPair = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def contrastive_batches(
    train: Encoded,
    *,
    max_len: int,
    batch_size: int,
    rng: np.random.Generator,
    views: Augmenter,
    augment: Augmenter | None = None,
) -> Iterable[tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ViewPair]]:
    """:func:`training_batches` plus, per batch, two augmented views (items, types) of each
    sequence's input part (:meth:`Augmenter.views`), left-padded, row k of both views from the
    same user: the positive pair of a contrastive term (CL4SRec)."""
    for seqs, tys in _chunks(train, max_len=max_len, batch_size=batch_size, rng=rng):
        batch = _tensors(seqs, tys, augment, rng)
        x1, t1, x2, t2 = views.views([s[:-1] for s in seqs], [t[:-1] for t in tys], rng)
        T1, T2 = max(map(len, x1)), max(map(len, x2))
        yield batch, ((pad_left(x1, T1), pad_left(t1, T1)), (pad_left(x2, T2), pad_left(t2, T2)))
