"""Per-user state kept in the worker's RocksDB-backed table, as a small JSON-able dict.

>>> s = UserState()
>>> s.update(event_id="e1", item_id="a", type="purchase", ts=1, session_id="s1", history_len=3, purchased_max=5)
True
>>> s.history_pairs(), sorted(s.purchased)
([('a', 'purchase')], ['a'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from streamrec.serving.profile import InterestProfile, ProfileWeights
from streamrec.serving.session import SessionStats

#: a history entry's event id (entries are ``[item_id, type, ts, event_id]``)
_EVENT_ID = itemgetter(3)


@dataclass
class UserState:
    """The last N interactions, a bounded set of purchases, the session and the latest list."""

    #: ``[item_id, type, ts, event_id]`` oldest first, at most ``history_len`` long.
    history: list[list[Any]] = field(default_factory=list)
    #: purchased item ids, oldest first, at most ``purchased_max`` long (a list keeps the order).
    purchased_list: list[str] = field(default_factory=list)
    session_id: str | None = None
    #: the latest recommendation sent: ``{"items": [[id, score], ...], "model_version", "event_id", "produced_ts"}``
    #: (with insights also ``"reasons": [[kind, item_id|None], ...]`` beside the items and ``"purchase_intent"``)
    latest: dict[str, Any] | None = None
    #: counters of the current and past sessions (purchase-intent features)
    session: SessionStats = field(default_factory=SessionStats)
    #: decayed category / brand weights (the interest profile)
    profile: InterestProfile = field(default_factory=InterestProfile)
    #: the last Profile message sent: ``[produced_ms, ranking_signature]`` (None: none yet)
    profile_sent: list[int] | None = None

    @property
    def purchased(self) -> set[str]:
        return set(self.purchased_list)

    def seen(self, event_id: str) -> bool:
        """True when this event is already in the history (a redelivery after a crash)."""
        # ``in`` over a map compares in C: a quarter faster than a generator over 50 entries
        return event_id in map(_EVENT_ID, self.history)

    def update(
        self,
        *,
        event_id: str,
        item_id: str,
        type: str,
        ts: int,
        session_id: str,
        history_len: int,
        purchased_max: int,
        category: str | None = None,
        brand: str | None = None,
        profile_weights: ProfileWeights | None = None,
    ) -> bool:
        """Apply one event; returns False (and changes nothing) for a duplicate event id.

        ``category`` / ``brand`` (the item's, from the catalog) feed the interest profile when
        ``profile_weights`` is given."""
        if self.seen(event_id):
            return False
        self.session.update(item_id, type, ts, session_id)
        if profile_weights is not None:
            self.profile.update(category=category, brand=brand, type=type, ts_ms=ts, weights=profile_weights)
        self.history.append([item_id, type, ts, event_id])
        if len(self.history) > history_len:
            del self.history[: len(self.history) - history_len]
        if type == "purchase" and purchased_max > 0:
            if item_id in self.purchased_list:
                self.purchased_list.remove(item_id)
            self.purchased_list.append(item_id)
            if len(self.purchased_list) > purchased_max:
                del self.purchased_list[: len(self.purchased_list) - purchased_max]
        self.session_id = session_id
        return True

    def history_pairs(self) -> list[tuple[str, str]]:
        """``(item_id, event_type)`` oldest first: what the model encodes."""
        return [(h[0], h[1]) for h in self.history]

    def to_json(self) -> dict[str, Any]:
        return {
            "h": self.history,
            "p": self.purchased_list,
            "s": self.session_id,
            "r": self.latest,
            "x": self.session.to_json(),
            "i": self.profile.to_json(),
            "q": self.profile_sent,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> UserState:
        """Decode a stored state; ``ValueError`` or ``TypeError`` when it does not have this release's shape."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise TypeError(f"user state must be an object, got {type(data).__name__}")
        history = data.get("h") or []
        purchased = data.get("p") or []
        latest = data.get("r")
        if not isinstance(history, list) or not all(
            isinstance(h, list) and len(h) == 4 and isinstance(h[0], str) and isinstance(h[3], str) for h in history
        ):
            raise ValueError("user state history must be a list of [item_id, type, ts, event_id]")
        if not isinstance(purchased, list) or not all(isinstance(p, str) for p in purchased):
            raise ValueError("user state purchases must be a list of item ids")
        if latest is not None and not isinstance(latest, dict):
            raise ValueError("user state latest recommendation must be an object")
        sent = data.get("q")
        if sent is not None and not (
            isinstance(sent, list)
            and len(sent) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in sent)
        ):
            raise ValueError("user state profile_sent must be [produced_ms, signature]")
        return cls(
            history=[list(h) for h in history],
            purchased_list=list(purchased),
            session_id=data.get("s"),
            latest=latest,
            session=SessionStats.from_json(data.get("x")),
            profile=InterestProfile.from_json(data.get("i")),
            profile_sent=None if sent is None else list(sent),
        )
