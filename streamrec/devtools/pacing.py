"""Sending a stream of events and catalog items at a fixed rate: what the simulator and the
replay share.

:class:`Pacer` is a token bucket; :func:`emit` sends a stream through a producer
(:class:`EventSink`, which :class:`~streamrec.client.EventProducer` fits), paced, restamped with
the send time, until a duration, a count or a stop signal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from streamrec.schemas import CatalogItem, ShopEvent

log = logging.getLogger(__name__)

#: Default simulated start time: 2026-01-01T00:00:00Z. Fixed, so that output is reproducible.
DEFAULT_BASE_TS_MS = 1_767_225_600_000


def wall_clock_ms() -> int:
    """Current epoch time in milliseconds: the ``ts`` of live events (latency is measured from it)."""
    return time.time_ns() // 1_000_000


class EventSink(Protocol):
    """What the runners need from a producer (:class:`~streamrec.client.EventProducer` fits)."""

    def send(self, event: ShopEvent) -> object: ...
    def send_catalog(self, item: CatalogItem) -> object: ...
    def flush(self, timeout: float = 30.0) -> None: ...


class Pacer:
    """Token bucket that holds a stream to ``rate`` events per second.

    It keeps the due time of the next event rather than sleeping per event: sleeps happen only
    once the schedule is ``min_sleep`` ahead, so 50k events/s cost a few hundred sleeps a
    second, not 50k. After a stall (GC pause, slow broker) at most ``max_burst_s`` worth of
    events are sent at once to catch up; the rest of the lost time is written off.

    >>> t = [0.0]
    >>> p = Pacer(10.0, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    >>> for _ in range(21): p.wait()
    >>> round(t[0], 3)
    2.0
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        min_sleep: float = 0.005,
        max_burst_s: float = 0.1,
    ) -> None:
        if rate is not None and not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate={rate!r}: must be a positive number of events per second, or None")
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self.min_sleep, self.max_burst_s = min_sleep, max_burst_s
        self._due: float | None = None

    def wait(self) -> None:
        """Return when the next event may be sent (at once when ``rate`` is None)."""
        if self.rate is None:
            return
        now = self._clock()
        if self._due is None:
            self._due = now
        elif now - self._due > self.max_burst_s:
            self._due = now - self.max_burst_s
        ahead = self._due - now
        if ahead >= self.min_sleep:
            self._sleep(ahead)
        self._due += 1.0 / self.rate


def emit(
    producer: EventSink,
    stream: Iterable[ShopEvent | CatalogItem],
    *,
    rate: float | None,
    duration: float | None,
    max_events: int | None,
    clock: Callable[[], int] | None = wall_clock_ms,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send ``stream`` paced to ``rate`` until ``duration`` s, ``max_events`` or ``stop``; flush.

    Shared by :func:`run_simulation` and :func:`streamrec.devtools.replay.run_replay`. ``clock`` (epoch
    ms, default wall time) restamps each record as it is sent -- events' ``ts``, new items'
    ``updated_ts`` -- never going backwards, so that a consumer can measure latency from ``ts``;
    ``clock=None`` sends the stream's own timestamps. Only events count against ``rate`` and
    ``max_events``. ``progress`` is called with the running count about once a second and once
    at the end. Returns the number of events sent.
    """
    if duration is not None and not duration >= 0:
        raise ValueError(f"duration={duration!r}: must be >= 0 seconds or None")
    if max_events is not None and (not isinstance(max_events, int) or max_events < 0):
        raise ValueError(f"max_events={max_events!r}: must be a non-negative int or None")
    pacer = Pacer(rate, clock=monotonic, sleep=sleep)
    start = last_report = monotonic()
    sent, last_ts = 0, 0
    try:
        for rec in stream:
            if max_events is not None and sent >= max_events:
                break
            if stop is not None and stop.is_set():
                break
            if duration is not None and monotonic() - start >= duration:
                break
            if clock is not None:
                last_ts = max(int(clock()), last_ts)
            if isinstance(rec, CatalogItem):
                producer.send_catalog(rec if clock is None else rec.model_copy(update={"updated_ts": last_ts}))
                continue
            pacer.wait()
            if clock is not None:
                last_ts = max(int(clock()), last_ts)  # stamp after the wait: ts = send time
                rec = rec.model_copy(update={"ts": last_ts})
            producer.send(rec)
            sent += 1
            if progress is not None and monotonic() - last_report >= 1.0:
                last_report = monotonic()
                progress(sent)
    except BaseException:
        try:  # deliver what was sent, but let the original error through
            producer.flush(5.0)
        except Exception as exc:  # noqa: BLE001 - secondary to the error being raised
            log.error("flush after error failed: %s", exc)
        raise
    producer.flush()
    if progress is not None:
        progress(sent)
    elapsed = monotonic() - start
    log.info("emitted events=%d seconds=%.1f rate=%.0f/s", sent, elapsed, sent / elapsed if elapsed > 0 else 0.0)
    return sent
