"""Sequence data augmentation for training: CL4SRec's crop, mask and reorder operators.

Training is next-item prediction at every position (input ``s[:-1]`` predicts ``s[1:]``), so an
operator must keep inputs and targets consistent:

- ``crop`` (ratio eta) keeps a random contiguous sub-sequence of ``max(2, int(eta * L))`` items;
  inputs and targets are then both taken from the crop, so every target is a real item of the
  user that follows its input in the cropped sequence.
- ``reorder`` (ratio beta) shuffles a random contiguous sub-sequence of ``int(beta * L)`` items
  (with their event types); inputs and targets come from the reordered sequence.
- ``mask`` (ratio gamma) hides ``int(gamma * n)`` of the ``n`` INPUT items: they become
  :data:`~streamrec.model.sasrec.MASK_ID`, a real position whose vector carries neither the item's
  id nor its text (the item table's row 0: the id row of PAD is zero and so is its title vector,
  i.e. the model's default vector of an item with no id and no title). The targets stay the real,
  unmasked items, so the model learns to predict the next item with part of the history hidden.

A sequence is augmented with probability ``prob``, by ONE operator drawn uniformly from the list
(as CL4SRec draws one operator per view). All draws come from the numpy generator the caller passes,
so a seeded run is repeatable.

>>> import numpy as np
>>> aug = Augmenter(("crop",), prob=1.0, crop=0.5)
>>> x, t, y = aug.batch([[1, 2, 3, 4, 5, 6]], [[1] * 6], np.random.default_rng(0))
>>> len(x[0]) == len(y[0]) == 2 and x[0][1] == y[0][0]
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamrec.model.sasrec import MASK_ID

OPS = ("crop", "mask", "reorder")


def parse_ops(text: str) -> tuple[str, ...]:
    """``"crop,mask"`` -> ``("crop", "mask")``; ``""`` -> ``()`` (off). ValueError names a bad one.

    >>> parse_ops(" reorder, crop ")
    ('reorder', 'crop')
    """
    ops = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise ValueError(
            f"unknown augmentation {bad[0]!r} in {text!r}: use a comma list of {', '.join(OPS)} (or '' for none)"
        )
    return ops


@dataclass(frozen=True)
class Augmenter:
    """Which operators (one drawn per augmented sequence), how often and how strong."""

    ops: tuple[str, ...]
    prob: float = 0.5  # share of the sequences augmented
    crop: float = 0.6  # eta: share of the sequence a crop keeps
    mask: float = 0.3  # gamma: share of the input items hidden
    reorder: float = 0.6  # beta: share of the sequence shuffled

    def __post_init__(self) -> None:
        parse_ops(",".join(self.ops))
        for name in ("prob", "crop", "mask", "reorder"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"augment_{name} {v!r}: must be a number in [0, 1]")

    @classmethod
    def views_from_settings(cls, s: Any) -> Augmenter | None:
        """The contrastive term's view maker (``s.augment``'s operators, else all three); None
        when ``s.contrastive`` is 0."""
        if not (isinstance(s.contrastive, int | float) and s.contrastive >= 0):
            raise ValueError(f"contrastive {s.contrastive!r}: must be a weight >= 0")
        if not (isinstance(s.contrastive_temp, int | float) and s.contrastive_temp > 0):
            raise ValueError(f"contrastive_temp {s.contrastive_temp!r}: must be > 0")
        if s.contrastive == 0:
            return None
        ops = parse_ops(s.augment) or OPS
        return cls(ops, prob=1.0, crop=s.augment_crop, mask=s.augment_mask, reorder=s.augment_reorder)

    @classmethod
    def from_settings(cls, s: Any) -> Augmenter | None:
        """From a :class:`~streamrec.model.train.TrainSettings`; None when ``augment`` is empty."""
        ops = parse_ops(s.augment)
        if not ops:
            return None
        return cls(ops, prob=s.augment_prob, crop=s.augment_crop, mask=s.augment_mask, reorder=s.augment_reorder)

    def batch(
        self, seqs: Sequence[Sequence[int]], types: Sequence[Sequence[int]], rng: np.random.Generator
    ) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        """Sequences (each >= 2 items) -> (inputs, input types, targets), one list per sequence,
        inputs[k][j] predicting targets[k][j]."""
        n = len(seqs)
        hit = rng.random(n) < self.prob
        which = rng.integers(len(self.ops), size=n)
        xs, ts, ys = [], [], []
        for k in range(n):
            s, t = list(seqs[k]), list(types[k])
            op = self.ops[which[k]] if hit[k] else None
            if op == "crop":
                s, t = self._crop(s, t, rng)
            elif op == "reorder":
                s, t = self._reorder(s, t, rng)
            x = s[:-1]
            if op == "mask":
                x = self._mask(x, rng)
            xs.append(x)
            ts.append(t[:-1])
            ys.append(s[1:])
        return xs, ts, ys

    def views(
        self, seqs: Sequence[Sequence[int]], types: Sequence[Sequence[int]], rng: np.random.Generator
    ) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[list[int]]]:
        """Two augmented views (items, types, items, types) of each (non-empty) sequence, for a
        contrastive term: each view by one operator drawn uniformly from the list, always applied
        (``prob`` is for :meth:`batch`)."""
        which = rng.integers(len(self.ops), size=(2, len(seqs)))
        out: tuple[list[list[int]], ...] = ([], [], [], [])
        for v in range(2):
            for k in range(len(seqs)):
                s, t = list(seqs[k]), list(types[k])
                op = self.ops[which[v, k]]
                if op == "crop":
                    s, t = self._crop(s, t, rng)
                elif op == "reorder":
                    s, t = self._reorder(s, t, rng)
                else:
                    s = self._mask(s, rng)
                out[2 * v].append(s)
                out[2 * v + 1].append(t)
        return out[0], out[1], out[2], out[3]

    def _crop(self, s: list[int], t: list[int], rng: np.random.Generator) -> tuple[list[int], list[int]]:
        L = len(s)
        k = min(L, max(2, int(self.crop * L)))
        a = int(rng.integers(0, L - k + 1))
        return s[a : a + k], t[a : a + k]

    def _reorder(self, s: list[int], t: list[int], rng: np.random.Generator) -> tuple[list[int], list[int]]:
        L = len(s)
        k = int(self.reorder * L)
        if k < 2:
            return s, t
        a = int(rng.integers(0, L - k + 1))
        perm = rng.permutation(k) + a
        s[a : a + k] = [s[i] for i in perm]
        t[a : a + k] = [t[i] for i in perm]
        return s, t

    def _mask(self, x: list[int], rng: np.random.Generator) -> list[int]:
        k = int(self.mask * len(x))
        if k < 1:
            return x
        for i in rng.choice(len(x), size=k, replace=False):
            x[int(i)] = MASK_ID
        return x


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """NT-Xent of two views (B, d): row k of ``z1`` and of ``z2`` are the positive pair, the other
    2B - 2 rows of the batch the negatives; dot-product similarity / ``temperature`` (CL4SRec's
    choice). Mean over the 2B rows.

    >>> z = torch.eye(3) * 20
    >>> bool(info_nce(z, z) < 1e-6)
    True
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2B, d)
    sim = (z @ z.T) / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, pos)
