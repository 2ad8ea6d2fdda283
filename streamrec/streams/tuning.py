"""How the worker spends its 2 cores: threads, log levels, and an event-loop lag probe.

Threads of one worker process (``streamrec_thread_cpu_seconds{thread=...}`` in ``/metrics``
shows each one's CPU time):

* the **event loop** (``MainThread``): Faust's streams, the events agent (parse, state, produce),
  table writes, the web views, the producer;
* Faust's **consumer thread** (aiokafka's consumer on its own loop, fetches and commits);
* the **model thread** (``streamrec-model``, one, so the model is never used by two threads):
  the user encoder and the FAISS search of a batch;
* torch's intra-op pool and FAISS's OpenMP pool, and RocksDB's background threads.

On 2 cores shared with the broker, the model thread runs torch and FAISS on ONE thread each
(``STREAMREC_TORCH_THREADS`` = 0 picks "all cores but one", which is 1 here): a second intra-op
thread would only take CPU from the event loop, which does most of the per-event work (see
``bench/RESULTS.md``). FAISS's OpenMP threads spin while idle; with one of them nothing spins.
OpenMP's thread count is a per-thread setting, so the model and swap threads set it themselves
(their executors' initializer, :class:`streamrec.streams.pipeline.Pipeline`): set only in the
thread that starts the worker, the model thread's FAISS searches ran on 2 OpenMP threads.

The loop and the model thread take turns on a batch by default: the loop waits while the batch
is scored. ``STREAMREC_OVERLAP_BATCHES`` lets them work on two batches at once
(:func:`streamrec.streams.agents.consume_events`), but both are Python threads under one GIL:
the model thread's many small torch calls each wait for the loop to release it, and on 2 cores
the model stage took about twice as long and the worker drained less (``bench/RESULTS.md``,
Pipeline, sixth session). So it is off.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Third-party loggers that build DEBUG records on the hot path (aiokafka's ``send``, Faust's
#: ``publish_message``) unless their own level stops them before the record is made.
QUIET_LOGGERS = ("aiokafka", "kafka", "faust", "mode")

#: How often the loop-lag probe wakes, seconds.
LOOP_PROBE_S = 0.05


def compute_threads(torch_threads: int) -> int:
    """Threads for torch and FAISS on the model thread: the setting, else all cores but one."""
    return torch_threads or max(1, (os.cpu_count() or 2) - 1)


def set_compute_threads(n: int) -> None:
    """Give torch, FAISS and numpy's BLAS ``n`` threads each (they run one after the other on the
    model thread). numpy's OpenBLAS (the "numpy" exact search) would otherwise start one
    spinning thread per core; its setting is process-wide, FAISS's OpenMP one per thread."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")


def quiet_third_party_loggers(level: int = logging.WARNING) -> None:
    """Set the hot-path libraries' loggers (aiokafka, kafka, faust, mode) to ``level`` (WARNING),
    so that their DEBUG and INFO calls return at the level check instead of building a record,
    whatever the root level (Faust's worker may set the root to DEBUG, see
    :func:`streamrec.streams.cli.disable_spinner`). Left alone when the process runs at DEBUG
    (``--log-level DEBUG``: then their records are wanted).
    """
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)


def watch_gc_pauses(metrics: Any) -> Callable[[str, dict[str, int]], None]:
    """Observe every cyclic garbage collection's duration in ``streamrec_gc_pause_seconds`` (by
    generation); returns the callback, installed in ``gc.callbacks``."""
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            metrics.gc_pause.labels(generation=str(info.get("generation", -1))).observe(
                time.perf_counter() - started.pop()
            )

    gc.callbacks.append(on_gc)
    return on_gc


def freeze_heap() -> int:
    """Collect once, then move every object alive now into the collector's permanent generation
    (``gc.freeze``): later full collections scan only what was made after. A worker that has
    loaded its model, its libraries and its catalog holds several hundred thousand such objects,
    and a full collection over them paused a worker for 263-286 ms here, a stall of the event
    loop and the model thread alike (``bench/RESULTS.md``, Pipeline, sixth session). Objects
    frozen are still freed by reference counting; only garbage cycles among them are kept. A
    model version replaced by a hot swap holds no such cycle (the model, its torch module and its
    index are freed by reference counting alone: unit test), and a new version adds only
    thousands of objects to what full collections scan. Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: Catalog items added since the last freeze after which the heap is frozen again: each added
#: item leaves about two objects for the cyclic collector (24,202 items added to a frozen worker:
#: 51,654 objects, a full collection 18 ms; bench/RESULTS.md, Pipeline, seventh session), so a
#: catalog that grows by hundreds of thousands of items would bring the long pauses back.
REFREEZE_ITEMS = 100_000


class Refreezer:
    """Freezes the heap again (:func:`freeze_heap`) once the catalog has grown by ``every`` items
    since the last freeze; that one collection scans only what was made since (tens of ms)."""

    def __init__(self, catalog_size: int, every: int = REFREEZE_ITEMS) -> None:
        self.frozen_at = catalog_size
        self.every = every

    def maybe(self, catalog_size: int) -> int | None:
        """Freeze if due; returns the number of objects frozen then, else None."""
        if catalog_size - self.frozen_at < self.every:
            self.frozen_at = min(self.frozen_at, catalog_size)  # removals: count growth from here
            return None
        self.frozen_at = catalog_size
        return freeze_heap()


async def watch_loop_lag(metrics: Any, interval: float = LOOP_PROBE_S) -> None:
    """Observe how late the event loop wakes a ``interval`` timer (``streamrec_loop_lag_seconds``):
    the stalls every event in flight waits out."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(interval)
        metrics.loop_lag.observe(max(0.0, time.perf_counter() - t0 - interval))
