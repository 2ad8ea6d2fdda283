"""Rate-limited logging of Kafka outages (no broker: probe results and log records are fed in)."""

from __future__ import annotations

import asyncio
import logging

from streamrec.streams.outage import CLIENT_LOGGERS, BrokerWatch, install


def uninstall() -> None:
    """Remove every outage filter this module's tests installed (loggers and root handlers)."""
    for logger in [logging.getLogger(n) for n in CLIENT_LOGGERS]:
        for f in list(logger.filters):
            logger.removeFilter(f)
    for h in logging.getLogger().handlers:
        for f in list(h.filters):
            if type(f).__name__ == "_OnlyClients":
                h.removeFilter(f)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_one_line_down_reminders_one_line_back_and_client_noise_muted(caplog):
    clock = Clock()
    watch = BrokerWatch(["127.0.0.1:9"], reminder_s=30, clock=clock)
    handler = logging.Handler()
    seen: list[logging.LogRecord] = []
    handler.emit = seen.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    flt = install(watch, window_s=10)
    try:
        noisy = logging.getLogger("aiokafka.conn")
        noisy.error("Unable connect to %r", "127.0.0.1:9")
        noisy.error("Unable connect to %r", "127.0.0.1:9")  # the same message again within 10 s: muted
        assert [r.getMessage() for r in seen if r.name.startswith("aiokafka")] == ["Unable connect to '127.0.0.1:9'"]
        watch.observe(False)  # broker gone
        for i in range(5000):  # a 20 s outage's worth of client errors
            clock.t = 1 + i * 20 / 5000
            noisy.error("Unable connect to %r", "127.0.0.1:9")
            logging.getLogger("faust.transport").warning("Heartbeat failed %d", i)
            if i % 50 == 0:
                watch.observe(False)
        clock.t = 35.0
        watch.observe(False)  # a reminder after 30 s
        clock.t = 36.0
        watch.observe(True)  # back
        logging.getLogger("streamrec.streams.app").warning("not a client line: never muted")
        logging.getLogger("aiokafka.conn").critical("critical lines always pass")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        uninstall()
    outage = [r.getMessage() for r in seen if r.name == "streamrec.streams.outage"]
    assert len(outage) == 3, outage
    assert outage[0].startswith("kafka unavailable")
    assert outage[1].startswith("kafka still unavailable seconds=35 muted_log_lines=10000")
    assert outage[2].startswith("kafka available again after seconds=36.0 muted_log_lines=10000")
    assert sum(1 for r in seen if r.name.startswith(("aiokafka", "faust"))) == 2  # first line + critical
    assert any(r.name == "streamrec.streams.app" for r in seen)
    assert watch.available and watch.outages == 1 and watch.suppressed == 10001 and flt is not None


def test_probe_sees_a_listening_port_and_a_closed_one():
    async def main() -> tuple[bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        up = await BrokerWatch([f"127.0.0.1:{port}"]).probe()
        server.close()
        await server.wait_closed()
        down = await BrokerWatch([f"127.0.0.1:{port}"]).probe()
        return up, down

    assert asyncio.run(main()) == (True, False)


def test_a_healthy_worker_does_not_probe_until_a_client_reports_a_connection_error():
    probes: list[int] = []

    class Watch(BrokerWatch):
        async def probe(self, timeout: float = 2.0) -> bool:
            probes.append(1)
            return len(probes) > 1  # down at the first probe, back at the second

    watch = Watch(["127.0.0.1:9"], interval_s=0.01)
    flt = install(watch)
    changes: list[bool] = []

    async def main() -> None:
        task = asyncio.create_task(watch.run(on_change=changes.append))
        await asyncio.sleep(0.1)
        assert probes == []  # nothing suspected: no probe
        logging.getLogger("aiokafka").warning("Heartbeat session expired")  # not a connection error
        await asyncio.sleep(0.1)
        assert probes == []
        logging.getLogger("aiokafka.conn").error("Unable connect to node with id 1: [Errno 111]")
        for _ in range(100):
            if len(changes) == 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()

    try:
        asyncio.run(main())
    finally:
        uninstall()
    assert changes == [False, True] and len(probes) == 2 and flt is not None
