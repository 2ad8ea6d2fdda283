"""Per-user session counters and the purchase-intent features computed from them.

One incremental tracker is used both offline (training and ``bench/intent.py`` replay each user's
events through it) and in the worker (it lives in the user's state), so the model sees exactly
the same features in both places.

A session is a run of events with no gap longer than ``gap_s`` (30 min, as in the Taobao data);
in the worker a new ``session_id`` also starts one. Features at an event describe the session
*up to and including* that event plus the user's earlier sessions; the label offline is "a
purchase happens later in this session" (see ``bench/intent.py`` for the masking).

>>> s = SessionStats()
>>> s.update("a", "view", 0); s.update("a", "add_to_cart", 60_000)
>>> s.n_view, s.n_cart, s.n_events
(1, 1, 2)
>>> features([s]).shape == (1, len(FEATURE_NAMES))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SESSION_GAP_MS = 30 * 60 * 1000
#: Items remembered per session (for the repeat / carted-item features); older ones are dropped.
MAX_SESSION_ITEMS = 64

FEATURE_NAMES: tuple[str, ...] = (
    "log_views",
    "log_carts",
    "log_favs",
    "log_purchases_before",
    "log_events",
    "log_duration_s",
    "log_gap_s",
    "last_is_cart",
    "last_is_fav",
    "log_distinct_items",
    "log_repeat_events",
    "view_of_carted_item",
    "log_carted_items_open",
    "log_past_sessions",
    "log_past_purchases",
    "past_buy_session_rate",
    "log_past_carts",
    "log_hours_since_last_session",
    "has_bought_before",
)
#: The counts-only baseline of issue #15: views, carts, favs, session length, time since start.
BASELINE_FEATURES: tuple[str, ...] = ("log_views", "log_carts", "log_favs", "log_events", "log_duration_s")


@dataclass
class SessionStats:
    """Counters of the current session and of the user's past sessions (JSON-able, bounded)."""

    session_id: str | None = None
    start_ms: int | None = None
    last_ms: int | None = None
    last_type: str = ""
    n_view: int = 0
    n_cart: int = 0
    n_fav: int = 0
    n_purchase: int = 0
    n_events: int = 0
    n_repeat: int = 0
    #: item -> 1 seen, 2 carted (and not yet bought in this session); at most MAX_SESSION_ITEMS
    items: dict[str, int] = field(default_factory=dict)
    last_item_state: int = 0  # the current item's state before this event
    gap_ms: int = 0  # time since the previous event of this session
    past_sessions: int = 0
    past_buy_sessions: int = 0
    past_purchases: int = 0
    past_carts: int = 0
    prev_session_end_ms: int | None = None

    def _close(self) -> None:
        if self.n_events:
            self.past_sessions += 1
            self.past_buy_sessions += int(self.n_purchase > 0)
            self.past_purchases += self.n_purchase
            self.past_carts += self.n_cart
            self.prev_session_end_ms = self.last_ms
        self.start_ms = None
        self.last_type = ""
        self.n_view = self.n_cart = self.n_fav = self.n_purchase = self.n_events = self.n_repeat = 0
        self.items = {}

    def update(
        self, item_id: str, kind: str, ts_ms: int, session_id: str | None = None, gap_ms: int = SESSION_GAP_MS
    ) -> None:
        """Count one event. ``kind``: an event type, or ``favorite`` (offline Taobao data)."""
        new_session = (
            self.last_ms is None
            or ts_ms - self.last_ms > gap_ms
            or (session_id is not None and self.session_id is not None and session_id != self.session_id)
        )
        if new_session:
            self._close()
            self.start_ms = ts_ms
        self.gap_ms = 0 if new_session or self.last_ms is None else max(0, ts_ms - self.last_ms)
        self.session_id = session_id
        if self.last_ms is None or ts_ms >= self.last_ms:
            self.last_ms = ts_ms
        prev = self.items.get(item_id, 0)
        self.last_item_state = prev
        if prev:
            self.n_repeat += 1
        self.n_events += 1
        if kind == "view":
            self.n_view += 1
        elif kind == "favorite":
            self.n_fav += 1
        elif kind == "add_to_cart":
            self.n_cart += 1
        elif kind == "purchase":
            self.n_purchase += 1
        self.last_type = kind
        state = 2 if kind == "add_to_cart" else (1 if kind in ("purchase", "remove_from_cart") else max(prev, 1))
        if item_id in self.items or len(self.items) < MAX_SESSION_ITEMS:
            self.items[item_id] = state

    def row(self, now_ms: int | None = None) -> list[float]:
        """The feature vector (order of FEATURE_NAMES) at the latest event (or at ``now_ms``)."""
        now = self.last_ms if now_ms is None else now_ms
        dur = max(0, (now or 0) - (self.start_ms or now or 0)) / 1000.0
        gap = (self.gap_ms + max(0, (now or 0) - (self.last_ms or now or 0))) / 1000.0
        since = 0.0
        if self.prev_session_end_ms is not None and self.start_ms is not None:
            since = max(0, self.start_ms - self.prev_session_end_ms) / 3.6e6
        carted_open = sum(1 for v in self.items.values() if v == 2)
        l1p = math.log1p
        return [
            l1p(self.n_view),
            l1p(self.n_cart),
            l1p(self.n_fav),
            l1p(self.n_purchase - (1 if self.last_type == "purchase" else 0)),
            l1p(self.n_events),
            l1p(dur),
            l1p(gap),
            float(self.last_type == "add_to_cart"),
            float(self.last_type == "favorite"),
            l1p(len(self.items)),
            l1p(self.n_repeat),
            float(self.last_type == "view" and self.last_item_state == 2),
            l1p(carted_open),
            l1p(self.past_sessions),
            l1p(self.past_purchases),
            self.past_buy_sessions / (self.past_sessions + 1.0),
            l1p(self.past_carts),
            l1p(since),
            float(self.past_purchases > 0),
        ]

    # -- persistence in the user's state ------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)  # the dataclass fields (the worker writes it as JSON at once)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SessionStats:
        """Decode stored counters; ``TypeError`` / ``ValueError`` when they do not have this shape."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise TypeError(f"session counters must be an object, got {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for k, v in known.items():
            if k in ("session_id", "last_type"):
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"session counter {k} must be a string")
            elif k == "items":
                if not isinstance(v, dict) or not all(isinstance(i, str) and isinstance(n, int) for i, n in v.items()):
                    raise ValueError("session items must be an object of item -> int")
            elif v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ValueError(f"session counter {k} must be an integer")
        s = cls(**known)
        s.items = dict(list(s.items.items())[:MAX_SESSION_ITEMS])
        return s


#: columns of :func:`features` that are ``log1p`` of a count or a duration (the rest are as is)
_LOG_COLUMNS = np.array([n.startswith("log_") for n in FEATURE_NAMES])
_DIVISOR = np.ones(len(FEATURE_NAMES))
_DIVISOR[FEATURE_NAMES.index("log_duration_s")] = 1000.0  # ms -> s
_DIVISOR[FEATURE_NAMES.index("log_gap_s")] = 1000.0
_DIVISOR[FEATURE_NAMES.index("log_hours_since_last_session")] = 3.6e6  # ms -> h


def _raw(s: SessionStats) -> tuple[float, ...]:
    """The inputs of :meth:`SessionStats.row` at the latest event, before logs and scaling."""
    last = s.last_ms or 0
    start = s.start_ms or last  # as row() reads it
    since = 0
    if s.prev_session_end_ms is not None and s.start_ms is not None:
        since = max(0, s.start_ms - s.prev_session_end_ms)
    t = s.last_type
    return (
        s.n_view,
        s.n_cart,
        s.n_fav,
        s.n_purchase - (t == "purchase"),
        s.n_events,
        max(0, last - start),
        s.gap_ms,
        t == "add_to_cart",
        t == "favorite",
        len(s.items),
        s.n_repeat,
        t == "view" and s.last_item_state == 2,
        list(s.items.values()).count(2),
        s.past_sessions,
        s.past_purchases,
        s.past_buy_sessions / (s.past_sessions + 1.0),
        s.past_carts,
        since,
        s.past_purchases > 0,
    )


def features(stats: list[SessionStats]) -> np.ndarray:
    """(B, F) float32 feature matrix, columns in FEATURE_NAMES order: the rows of
    :meth:`SessionStats.row`, computed with one tuple of counters per state and numpy for the
    logs (the worker calls this once per batch)."""
    if not stats:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    x = np.array([_raw(s) for s in stats], dtype=np.float64) / _DIVISOR
    x[:, _LOG_COLUMNS] = np.log1p(x[:, _LOG_COLUMNS])
    return x.astype(np.float32)


def columns(names: tuple[str, ...]) -> list[int]:
    """Indices of ``names`` in FEATURE_NAMES."""
    return [FEATURE_NAMES.index(n) for n in names]
