"""Fail fast on errors that retrying cannot fix (librdkafka clients).

librdkafka treats a refused SASL password or an untrusted broker certificate like any other
connection failure: it logs it, backs off and retries for ever, so a producer's ``flush`` or an
admin call just waits out its timeout. :class:`ConnectionWatch` is an ``error_cb`` that notices
those errors; the clients call :meth:`ConnectionWatch.check` while they wait and raise
:class:`~streamrec.errors.KafkaAuthError` with one line that says what to fix.

>>> watch = ConnectionWatch("127.0.0.1:9093")
>>> watch.check()   # nothing seen yet: no error
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError

from streamrec.errors import KafkaAuthError

log = logging.getLogger(__name__)

#: librdkafka's own log lines (levels as syslog's: 3 is ERROR, 4 WARNING, 7 DEBUG) go through this
#: logger instead of straight to stderr. Its name starts with "kafka" so that the worker's outage
#: filter (streams.outage.CLIENT_LOGGERS) rate-limits them like aiokafka's.
LIBRDKAFKA_LOGGER = "kafka.librdkafka"

#: librdkafka error codes that mean "this configuration will never connect".
FATAL_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED})


def describe_auth_failure(bootstrap: str, detail: str) -> str:
    """The one line shown to the operator."""
    if "certificate" in detail or "SSL" in detail:
        hint = "check STREAMREC_SSL_CAFILE (the CA that signed the broker's certificate)"
    else:
        hint = "check STREAMREC_SASL_USERNAME / STREAMREC_SASL_PASSWORD / STREAMREC_SASL_MECHANISM"
    detail = detail.split(": ", 1)[-1] if detail.startswith(("sasl_", "ssl://")) else detail
    return f"Kafka at {bootstrap} refused the connection: {detail}; {hint}"


class ConnectionWatch:
    """An ``error_cb`` for confluent-kafka clients that remembers the first fatal error."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.error: str | None = None

    def __call__(self, err: KafkaError) -> None:
        if err.code() in FATAL_CODES or err.fatal():
            if self.error is None:
                self.error = describe_auth_failure(self.bootstrap, err.str())
        else:
            log.debug("kafka client error code=%s %s", err.name(), err.str())

    def check(self) -> None:
        """Raise :class:`KafkaAuthError` if a fatal error was seen."""
        if self.error is not None:
            raise KafkaAuthError(self.error)

    def install(self, conf: dict[str, Any]) -> dict[str, Any]:
        """``conf`` with this watch as its ``error_cb`` (a caller's own ``error_cb`` is kept and
        chained), and librdkafka's log lines routed to Python logging (:func:`route_logs`)."""
        route_logs(conf)
        theirs = conf.get("error_cb")
        if theirs is None:
            conf["error_cb"] = self
        else:

            def both(err: KafkaError) -> None:
                self(err)
                theirs(err)

            conf["error_cb"] = both
        return conf


def route_logs(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with librdkafka's log lines going to the :data:`LIBRDKAFKA_LOGGER` logger (a
    caller's own ``logger`` is kept). librdkafka hands them over in the thread that calls the
    client's ``poll``/``flush``/``consume``, at their own level, so an application's logging
    config decides where they go; without it they were raw ``%3|...|FAIL|`` lines on stderr.

    >>> route_logs({})["logger"].name
    'kafka.librdkafka'
    """
    conf.setdefault("logger", logging.getLogger(LIBRDKAFKA_LOGGER))
    return conf
