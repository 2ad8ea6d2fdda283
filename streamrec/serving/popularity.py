"""Exponentially decayed item popularity, kept up to date from the event stream.

Users with no usable history get these items (filtered like any other list), so a
recommendation is never empty while the catalog has eligible items.

>>> p = Popularity(half_life_s=3600)
>>> for item in ["a", "b", "b"]:
...     p.add(item, "view", ts_ms=0)
>>> p.top(2, now_ms=0)
['b', 'a']
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Collection

#: How much one event of each type counts.
TYPE_WEIGHT = {"view": 1.0, "add_to_cart": 3.0, "remove_from_cart": 0.0, "purchase": 5.0}


class Popularity:
    """Decayed counts stored relative to a reference time (no per-tick decay loop needed)."""

    def __init__(self, *, half_life_s: float = 6 * 3600, max_items: int = 1_000_000) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self._rate = math.log(2) / (half_life_s * 1000.0)
        self._ref_ms: float | None = None
        self._scores: dict[str, float] = {}
        self._max_items = max_items
        self._order: list[str] | None = None  # cached ranking, refreshed at most every _refresh_s
        self._order_at = 0.0
        self._scores_at_order: set[str] = set()
        self._refresh_s = 0.5

    def __len__(self) -> int:
        return len(self._scores)

    def add(self, item_id: str, type: str = "view", *, ts_ms: int, weight: float | None = None) -> None:
        w = TYPE_WEIGHT.get(type, 1.0) if weight is None else weight
        if w <= 0:
            return
        if self._ref_ms is None:
            self._ref_ms = float(ts_ms)
        exponent = (ts_ms - self._ref_ms) * self._rate
        if exponent > 50:  # rebase to keep numbers finite
            self._rebase(ts_ms)
            exponent = 0.0
        self._scores[item_id] = self._scores.get(item_id, 0.0) + w * math.exp(exponent)
        if self._order is not None and item_id not in self._scores_at_order:
            self._order = None  # a brand-new item: re-rank at the next call
        if len(self._scores) > self._max_items:
            self._prune()

    def _rebase(self, ts_ms: int) -> None:
        assert self._ref_ms is not None
        factor = math.exp(-(ts_ms - self._ref_ms) * self._rate)
        self._scores = {k: v * factor for k, v in self._scores.items() if v * factor > 1e-12}
        self._ref_ms = float(ts_ms)

    def _prune(self) -> None:
        keep = heapq.nlargest(self._max_items * 9 // 10, self._scores.items(), key=lambda kv: kv[1])
        self._scores = dict(keep)

    def top(
        self,
        k: int,
        *,
        exclude: Collection[str] = (),
        eligible: Callable[[str], bool] | None = None,
        now_ms: int | None = None,
    ) -> list[str]:
        """The ``k`` most popular eligible items not in ``exclude`` (``now_ms`` is unused:
        relative order does not change with decay; kept for a stable signature)."""
        now = time.monotonic()
        if self._order is None or now - self._order_at > self._refresh_s:
            self._order = sorted(self._scores, key=self._scores.__getitem__, reverse=True)
            self._scores_at_order = set(self._order)
            self._order_at = now
        out: list[str] = []
        for item in self._order:
            if item in exclude or (eligible is not None and not eligible(item)):
                continue
            out.append(item)
            if len(out) >= k:
                break
        return out

    def scores(self, items: Collection[str]) -> list[float]:
        return [self._scores.get(i, 0.0) for i in items]
