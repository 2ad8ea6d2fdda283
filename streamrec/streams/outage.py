"""Kafka outages in the worker's log: one line when the broker goes away, a reminder while it
stays away, one line when it is back, and a gauge; not thousands of client error lines.

While Kafka is unreachable, aiokafka, Faust and mode log every failed connection, heartbeat and
commit (about 5,000 lines in a 20 s outage). :class:`ClientLogFilter`, installed on those
libraries' loggers, notices their connection errors; :class:`BrokerWatch` then probes the
bootstrap servers (a TCP connect, every ``interval_s`` until one answers) and decides whether the
broker is down. While it is down the filter drops the libraries' warnings and errors (counting
them); while it is up it lets each distinct message through at most once per ``window_s``. A
healthy worker does not probe at all (no connection churn in the broker's log).

>>> import logging
>>> watch = BrokerWatch(["127.0.0.1:1"], clock=lambda: 100.0)
>>> watch.observe(False)   # probe failed: one warning, the gauge drops
>>> watch.available, watch.outages
(False, 1)
>>> watch.observe(True)
>>> watch.available
True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

#: The client libraries whose connection noise is filtered.
CLIENT_LOGGERS = ("aiokafka", "faust", "mode", "kafka")


class BrokerWatch:
    """Broker reachability, with rate-limited log lines about it."""

    def __init__(
        self,
        bootstrap: Iterable[str],
        *,
        interval_s: float = 1.0,
        reminder_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.addresses = [hp.strip() for hp in bootstrap if hp.strip()]
        self.interval_s = interval_s
        self.reminder_s = reminder_s
        self.clock = clock
        self.available = True
        self.outages = 0  #: outages seen since start
        self.suppressed = 0  #: client log lines dropped (while down, or repeated while up)
        self._since = 0.0
        self._reminded = 0.0
        self._suppressed_at_start = 0
        #: set by the log filter when a client library reports a connection error
        self.suspect = False

    def observe(self, reachable: bool) -> None:
        """Record one probe result; logs only on a change, and a reminder every ``reminder_s``."""
        now = self.clock()
        if self.available and not reachable:
            self.available = False
            self.outages += 1
            self._since = self._reminded = now
            self._suppressed_at_start = self.suppressed
            log.warning(
                "kafka unavailable bootstrap=%s: client connection errors are muted until it is back",
                ",".join(self.addresses),
            )
        elif not self.available and not reachable:
            if now - self._reminded >= self.reminder_s:
                self._reminded = now
                log.warning(
                    "kafka still unavailable seconds=%.0f muted_log_lines=%d",
                    now - self._since,
                    self.suppressed - self._suppressed_at_start,
                )
        elif not self.available and reachable:
            self.available = True
            log.warning(
                "kafka available again after seconds=%.1f muted_log_lines=%d",
                now - self._since,
                self.suppressed - self._suppressed_at_start,
            )

    async def probe(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109  # a per-address connect bound, not the call's
        """True when any bootstrap address accepts a TCP connection."""
        for hp in self.addresses:
            host, _, port = hp.rpartition(":")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
            except (TimeoutError, OSError, ValueError):
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def run(self, *, on_change: Callable[[bool], None] | None = None) -> None:
        """A worker task: probe while a connection error is suspected or the broker is down;
        ``on_change(available)`` is called on each change."""
        while True:
            if self.suspect or not self.available:
                self.suspect = False
                before = self.available
                self.observe(await self.probe())
                if on_change is not None and self.available != before:
                    on_change(self.available)
            await asyncio.sleep(self.interval_s)


#: Fragments of the client libraries' connection-error messages (aiokafka 0.14, faust 0.15.3).
CONNECTION_ERRORS = (
    "Unable connect",
    "Connect call failed",
    "KafkaConnectionError",
    "Connection at",
    "NodeNotReadyError",
    "Unable to bootstrap",
    "Connection refused",
    "ConnectionError",
)


class ClientLogFilter(logging.Filter):
    """Drop client-library warnings/errors while the broker is down; rate-limit them while it is up."""

    def __init__(self, watch: BrokerWatch, *, window_s: float = 30.0) -> None:
        super().__init__()
        self.watch = watch
        self.window_s = window_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno >= logging.CRITICAL:
            return True
        if self.watch.available and not self.watch.suspect:
            text = record.getMessage()
            if any(fragment in text for fragment in CONNECTION_ERRORS):
                self.watch.suspect = True  # BrokerWatch.run probes at its next tick
        if not self.watch.available:
            self.watch.suppressed += 1
            return False
        key = (record.name, str(record.msg)[:200])
        now = self.watch.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self.watch.suppressed += 1
            return False
        if len(self._last) > 10_000:  # bounded: forget old keys
            self._last.clear()
        self._last[key] = now
        return True


def install(watch: BrokerWatch, *, window_s: float = 30.0) -> ClientLogFilter:
    """Attach one :class:`ClientLogFilter` to the client loggers and to every handler of the root
    logger (records of child loggers such as ``aiokafka.conn`` skip their parents' filters, but
    every handler sees them). Each record is judged once, whichever filter sees it first. Call it
    after logging is configured (the worker does so when it starts)."""
    flt = ClientLogFilter(watch, window_s=window_s)
    mark = f"_streamrec_outage_{id(flt)}"

    class _OnlyClients(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name.split(".", 1)[0] not in CLIENT_LOGGERS:
                return True
            decided = record.__dict__.get(mark)  # judged by this filter on another handler already
            if decided is None:
                decided = flt.filter(record)
                record.__dict__[mark] = decided
            return decided

    only = _OnlyClients()
    for handler in logging.getLogger().handlers:
        handler.addFilter(only)
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(only)
    return flt
