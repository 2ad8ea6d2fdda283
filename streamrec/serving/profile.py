"""Interest profiles: each user's top categories and brands, weighted by event type, decayed.

An entry's weight is the sum of its events' type weights, each halved every ``half_life_s``
since it happened. Weights are kept as ``[weight, as_of_ms]`` pairs and decayed lazily, so an
update costs O(entries) and no timer is needed. At most ``max_entries`` categories (and as
many brands) are kept: past that, the entry with the lowest decayed weight is dropped.

>>> w = ProfileWeights(half_life_s=3600.0, max_entries=2)
>>> p = InterestProfile()
>>> p.update(category="shoes", brand="Acme", type="view", ts_ms=0, weights=w)
>>> p.update(category="bags", brand=None, type="purchase", ts_ms=0, weights=w)
>>> p.top("categories", now_ms=3_600_000, weights=w)
[('bags', 2.5), ('shoes', 0.5)]
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["categories", "brands"]


@dataclass(frozen=True)
class ProfileWeights:
    """How much each event type counts, how fast it fades, and how many entries are kept."""

    view: float = 1.0
    add_to_cart: float = 3.0
    purchase: float = 5.0
    remove_from_cart: float = 0.0
    half_life_s: float = 7 * 24 * 3600.0
    max_entries: int = 20

    def __post_init__(self) -> None:
        for name in ("view", "add_to_cart", "purchase", "remove_from_cart"):
            if not 0.0 <= getattr(self, name) <= 1e6:
                raise ValueError(f"profile weight {name} must be in 0..1e6, got {getattr(self, name)}")
        if not self.half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {self.half_life_s}")
        if not 1 <= self.max_entries <= 1000:
            raise ValueError(f"max_entries must be in 1..1000, got {self.max_entries}")

    def of(self, type: str) -> float:
        return float(
            getattr(self, type, self.view)
            if type in ("view", "add_to_cart", "purchase", "remove_from_cart")
            else self.view
        )


def _decay(weight: float, since_ms: float, until_ms: float, half_life_s: float) -> float:
    if until_ms <= since_ms:
        return weight
    return weight * 0.5 ** ((until_ms - since_ms) / (half_life_s * 1000.0))


@dataclass
class InterestProfile:
    """``{name: [weight, as_of_ms]}`` for categories and brands (JSON-able, bounded)."""

    categories: dict[str, list[float]] = field(default_factory=dict)
    brands: dict[str, list[float]] = field(default_factory=dict)
    updated_ms: int = 0
    #: an entry was counted since this object was loaded (not stored: the worker loads each
    #: user's state once per batch, so this says "changed in this batch")
    changed: bool = field(default=False, compare=False, repr=False)

    def update(
        self, *, category: str | None, brand: str | None, type: str, ts_ms: int, weights: ProfileWeights
    ) -> None:
        """Count one event of an item with this category and brand (empty or None: skipped)."""
        w = weights.of(type)
        self.updated_ms = max(self.updated_ms, int(ts_ms))
        if w <= 0:
            return
        for table, name in ((self.categories, category), (self.brands, brand)):
            if not name:
                continue
            name = name[:512]
            self.changed = True
            entry = table.get(name)
            if entry is None:
                table[name] = [w, float(ts_ms)]
            else:
                at = max(entry[1], float(ts_ms))
                # an out-of-order (older) event is decayed to the entry's time instead
                entry[0] = _decay(entry[0], entry[1], at, weights.half_life_s) + _decay(
                    w, float(ts_ms), at, weights.half_life_s
                )
                entry[1] = at
            if len(table) > weights.max_entries:
                now = float(ts_ms)
                worst = min(table, key=lambda k: (_decay(table[k][0], table[k][1], now, weights.half_life_s), k))
                del table[worst]

    def top(
        self, kind: Kind, *, now_ms: int | None = None, n: int | None = None, weights: ProfileWeights | None = None
    ) -> list[tuple[str, float]]:
        """Entries by decayed weight (highest first, ties by name), decayed to ``now_ms``
        (default: the latest event) with the half-life of ``weights`` (default settings)."""
        half_life_s = (weights or ProfileWeights()).half_life_s
        table = self.categories if kind == "categories" else self.brands
        now = float(self.updated_ms if now_ms is None else now_ms)
        ranked = sorted(
            ((k, _decay(v[0], v[1], now, half_life_s)) for k, v in table.items()), key=lambda kv: (-kv[1], kv[0])
        )
        return ranked if n is None else ranked[:n]

    def to_json(self) -> dict[str, Any]:
        return {"c": self.categories, "b": self.brands, "t": self.updated_ms}

    def is_empty(self) -> bool:
        """True while no category or brand has been counted."""
        return not (self.categories or self.brands)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> InterestProfile:
        """Decode a stored profile; ``TypeError`` / ``ValueError`` when it does not have this shape."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise TypeError(f"profile must be an object, got {type(data).__name__}")
        return cls(
            categories={str(k): [float(v[0]), float(v[1])] for k, v in (data.get("c") or {}).items()},
            brands={str(k): [float(v[0]), float(v[1])] for k, v in (data.get("b") or {}).items()},
            updated_ms=int(data.get("t") or 0),
        )


def ranking_signature(categories: list[tuple[str, float]], brands: list[tuple[str, float]]) -> int:
    """A stable 32-bit checksum of the ranked names (not the weights): equal while the ranking is.

    >>> ranking_signature([("a", 2.0), ("b", 1.0)], []) == ranking_signature([("a", 5.0), ("b", 0.5)], [])
    True
    >>> ranking_signature([("a", 2.0), ("b", 1.0)], []) == ranking_signature([("b", 2.0), ("a", 1.0)], [])
    False
    """
    text = "\x00".join(n for n, _ in categories) + "\x01" + "\x00".join(n for n, _ in brands)
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))
