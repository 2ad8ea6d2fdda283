"""Exactly-once for the events agent's outputs (``STREAMREC_PROCESSING_GUARANTEE=exactly_once``).

Faust commits one Kafka transaction per events partition: the partition's consumed offsets and
what was produced in that transaction become visible together, to ``read_committed`` readers.
Out of the box (faust-streaming 0.15.3) two gaps broke that promise for this worker (the SIGKILL
drill, ``tests/integration/test_worker.py::test_exactly_once_worker_killed_mid_stream_...``):

1. An agent's ``topic.send`` goes through Faust's ``TransactionManager``, which picks the
   transaction by hashing the key over the destination topic's partitions *as the consumer's
   metadata knows them*; the consumer only knows the topics it reads, so a recommendation (or a
   profile, or a dead letter) got no transaction at all: visible at once, and sent again when a
   crash replayed its event. :class:`TransactionalSink` sends each message in the transaction of
   the partition its triggering event came from, the one that commits that event's offset.
2. Faust commits on a timer, concurrently with the agent: a commit in the middle of a batch
   committed the outputs sent so far without the batch's offsets (acked only when the batch
   ends), and the table's changelog writes wait in Faust's producer buffer, so a commit right
   after a batch could commit its offsets without its state. The worker's consumer
   (:meth:`streamrec.streams.consumer.Consumer.force_commit`) makes each commit wait for the
   batch in progress (the handler's lock, ``app.streamrec_commit_lock``) and drain that buffer
   first.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

log = logging.getLogger(__name__)


class TransactionalSink:
    """A topic whose ``send(key=, value=)`` joins the transaction of the current event's
    partition (see :func:`streamrec.streams.agents.as_current`); without a current event it is a
    plain ``topic.send``. The destination partition is the producer's (murmur2 of the key)."""

    def __init__(self, app: faust.App, topic: Any) -> None:
        self.app = app
        self.topic = topic
        self.name: str = topic.get_topic_name()

    def transactional_id(self, event: Any) -> str:
        """Faust's id for the transaction that commits ``event``'s offset
        (``TransactionManager.transactional_id_format``: app id, topic group, partition)."""
        tp = event.message.tp
        group = self.app.assignor.group_for_topic(tp.topic)
        return f"{self.app.conf.id}-{group}-{tp.partition}"

    async def send(self, *, key: bytes | None, value: bytes | None) -> Any:
        event = faust.current_event()
        if event is None:
            return await self.topic.send(key=key, value=value)
        return await self.app.producer.send(
            self.name, key, value, None, None, None, transactional_id=self.transactional_id(event)
        )
