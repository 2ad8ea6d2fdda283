"""The model in a process of its own (``STREAMREC_MODEL_PROCESS``).

One Python process has one GIL. In a worker whose model runs on a thread beside the event loop,
the two take turns: the loop parses and publishes, the model thread scores, and neither runs while
the other holds the interpreter (``bench/RESULTS.md``, Pipeline, eighteenth session: the loop idle
53 % of the time and the model thread 41 % while a backlog waited). With ``model_process`` the
model, its index, the catalog's vectors and the hot swaps live in a second process:

- the worker (:class:`RemotePipeline`) keeps everything that touches Kafka, the users table and
  the web views, and sends the model side what it needs, in order, over a pipe: catalog changes,
  the catalog-loaded signal, each batch to score, memory reports, index saves, swaps;
- the model process (:func:`serve`) runs an ordinary :class:`~streamrec.streams.pipeline.Pipeline`
  (the same code as in one process: one model thread, one swap thread) and answers each request
  with its result, the model version that made it and, for a batch, the time of each stage.

Messages are JSON (orjson) frames of :class:`multiprocessing.connection.Connection`'s
``send_bytes``: no pickle crosses the pipe (the child's start arguments are plain strings).

The worker's own model thread then only encodes a batch, writes it and waits for the answer
(without the GIL), so the event loop parses batch N+1 and publishes batch N-1 while batch N is
scored: ``model_process`` turns on the overlap of batches (``consume_events(overlap=True)``).

If the model process dies, the worker exits at once (exit code :data:`EXIT_MODEL_PROCESS`),
without committing: its orchestrator restarts it, and the events not yet committed are read again,
as after a SIGKILL. If the worker dies, the model process reads the end of the pipe and exits.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from streamrec.config import Settings
from streamrec.errors import CheckpointError
from streamrec.schemas import CatalogItem
from streamrec.serving.session import SessionStats
from streamrec.serving.state import UserState
from streamrec.serving.swap import SwapStats
from streamrec.streams.pipeline import MAX_CATALOG_ITEMS, Pipeline, catalog_dict_bytes, catalog_entry, rss_bytes

log = logging.getLogger(__name__)

#: The worker's exit status when its model process died (the orchestrator restarts it).
EXIT_MODEL_PROCESS = 70
#: Longest a model process may take to load its model and answer that it is ready, seconds.
START_TIMEOUT_S = 600.0
#: Longest a request other than a swap may wait for its answer before the worker gives up on the
#: model process (it is then stopped, and the worker exits), seconds.
CALL_TIMEOUT_S = 300.0


class RemoteError(RuntimeError):
    """A request the model process answered with an error (its reason, one line)."""


class Fresh(NamedTuple):
    """An event counted into popularity (what :meth:`Pipeline.score` reads of one)."""

    item_id: str
    type: str
    ts: int


def settings_json(settings: Settings) -> str:
    """The settings as JSON for the model process, secrets included (they stay in memory and the
    pipe between the two processes; never written to a file)."""
    data = settings.model_dump(mode="json")
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            data[name] = value.get_secret_value()
    return orjson.dumps(data).decode()


# -- the model process -----------------------------------------------------------------------


class StageClock:
    """The scorer's stage timer in the model process: the seconds of each stage of the request
    being scored, sent back with its answer (the worker observes them in its /metrics)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def scoring_row(state: UserState, *, explain: bool) -> list[Any]:
    """What the scorer reads of a user state, as a request sends it: the history's
    ``[item_id, type]`` pairs, the purchases and (for the purchase intent) the session counters."""
    return [[h[:2] for h in state.history], state.purchased_list, state.session.to_json() if explain else None]


def scoring_state(row: Sequence[Any]) -> UserState:
    """A user state as the scorer reads it (:func:`scoring_row`'s fields; a history entry holds
    only ``[item_id, type]``, all that the scorer reads of one)."""
    history, purchased, session = row
    return UserState(
        history=history,
        purchased_list=purchased,
        session=SessionStats() if session is None else SessionStats.from_json(session),
    )


class ModelServer:
    """The model process's side: answers the worker's requests with its own :class:`Pipeline`.

    Requests other than swaps run on the pipeline's model thread in the order they arrive (so a
    batch is scored after the catalog changes sent before it); a swap builds on the swap thread
    while batches keep being scored, as in one process."""

    def __init__(self, pipeline: Pipeline, send: Any) -> None:
        self.pipeline = pipeline
        self.clock = StageClock()
        pipeline.scorer.stage = self.clock
        self._send = send  # bytes -> None (thread-safe)

    def answer(self, rid: int, result: Any = None, error: BaseException | None = None) -> None:
        if error is not None:
            reason = str(error).splitlines()[0][:500] if str(error) else type(error).__name__
            msg: dict[str, Any] = {"id": rid, "error": f"{type(error).__name__}: {reason}"}
        else:
            msg = {"id": rid, "ok": result}
        self._send(orjson.dumps(msg, option=orjson.OPT_SERIALIZE_NUMPY))

    def handle(self, data: bytes) -> None:
        """(the child's event loop) Dispatch one request; it is queued on the model thread now."""
        msg = orjson.loads(data)
        rid, method = msg["id"], msg["m"]
        if method == "swap":
            asyncio.get_running_loop().create_task(self._swap(rid, msg["version"], msg["path"]))
            return
        fn = getattr(self, f"do_{method}", None)
        if fn is None:
            self.answer(rid, error=ValueError(f"unknown request {method!r}"))
            return
        fut = self.pipeline.submit(self._run, rid, fn, msg)
        fut.add_done_callback(lambda f: f.exception())  # errors were answered; mark them seen

    def _run(self, rid: int, fn: Any, msg: dict[str, Any]) -> None:
        """(model thread) One request, answered from this thread."""
        try:
            result = fn(msg)
        except Exception as exc:
            log.error("model request failed request=%s", msg.get("m"), exc_info=exc)
            self.answer(rid, error=exc)
            return
        self.answer(rid, result)

    async def _swap(self, rid: int, version: str, path: str) -> None:
        started = time.perf_counter()
        stats = await self.pipeline.swap_model(version, path)
        self.answer(
            rid,
            None
            if stats is None
            else {
                "stats": {
                    "version": stats.version,
                    "items": stats.items,
                    "titles_reused": stats.titles_reused,
                    "titles_encoded": stats.titles_encoded,
                    "build_s": stats.build_s,
                },
                "total_s": time.perf_counter() - started,
                **self.model_facts(),
            },
        )

    def model_facts(self) -> dict[str, Any]:
        index = self.pipeline.scorer.index
        return {"version": self.pipeline.model_version, "items": len(index), "kind": str(getattr(index, "kind", ""))}

    # -- requests (model thread) --

    def do_catalog(self, msg: dict[str, Any]) -> dict[str, Any]:
        changes = [
            (item_id, None if item is None else CatalogItem.model_validate(item)) for item_id, item in msg["changes"]
        ]
        self.pipeline.apply_catalog(changes)
        return self.model_facts()

    def do_loaded(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.pipeline.catalog_loaded()
        self.pipeline.catalog_ready.set()
        return self.model_facts()

    def do_score(self, msg: dict[str, Any]) -> dict[str, Any]:
        states = [scoring_state(row) for row in msg["states"]]
        fresh = [Fresh(*ev) for ev in msg["fresh"]]
        self.clock.take()
        out: dict[str, Any] = {"version": self.pipeline.model_version}
        if msg["explain"]:
            out["lists"], out["intents"] = self.pipeline.score_explained(states, fresh)  # type: ignore[arg-type]
        else:
            out["lists"] = self.pipeline.score(states, fresh)  # type: ignore[arg-type]
        out["stages"] = self.clock.take()
        return out

    def do_memory(self, msg: dict[str, Any]) -> dict[str, Any]:
        parts = self.pipeline.memory_bytes()
        parts["model_process_rss"] = parts.pop("rss", rss_bytes())
        index = self.pipeline.scorer.index
        rebuilding = getattr(index, "rebuilding", None)
        cache = getattr(self.pipeline.scorer.recommender, "text_cache", None)
        titles = None if cache is None else [cache.embedded, cache.hits, cache.embed_seconds]
        return {
            "parts": parts,
            "rebuilding": bool(rebuilding()) if rebuilding else False,
            "titles": titles,
            **self.model_facts(),
        }

    def do_save(self, msg: dict[str, Any]) -> bool:
        return self.pipeline.save_index()

    def do_ping(self, msg: dict[str, Any]) -> dict[str, Any]:
        return self.model_facts()


def serve(conn: Any, settings_text: str, path: str, version: str | None, log_level: str) -> None:
    """The model process's main: load the model side as a worker does, say ``ready`` (or why it
    could not), then answer requests until the worker closes the pipe."""
    import signal

    # the worker decides when this process ends (it closes the pipe): a Ctrl-C or a SIGTERM sent
    # to the whole process group must not take the model away from a worker that is still
    # shutting down cleanly
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [model-process] %(name)s: %(message)s")
    send_lock = threading.Lock()

    def send(data: bytes) -> None:
        with send_lock:
            conn.send_bytes(data)

    try:
        from streamrec.streams.app import new_pipeline
        from streamrec.streams.catalog import read_catalog_topic
        from streamrec.streams.cli import load_model_side

        settings = Settings(**orjson.loads(settings_text))
        recommender, index, loader = load_model_side(settings, path, version)
        pipeline = new_pipeline(settings, recommender=recommender, index=index, loader=loader)
        pipeline.catalog_source = lambda: read_catalog_topic(settings)
    except Exception as exc:  # noqa: BLE001 - the worker reports it and exits
        reason = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        send(orjson.dumps({"id": 0, "error": reason, "kind": type(exc).__name__}))
        conn.close()
        return
    server = ModelServer(pipeline, send)
    send(orjson.dumps({"id": 0, "ok": {**server.model_facts(), "dim": int(recommender.dim), "pid": os.getpid()}}))
    asyncio.run(_serve(conn, server))


async def _serve(conn: Any, server: ModelServer) -> None:
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def read() -> None:  # a thread: blocks in recv_bytes without the GIL
        try:
            while True:
                data = conn.recv_bytes()
                loop.call_soon_threadsafe(server.handle, data)
        except (EOFError, OSError):
            loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=read, name="streamrec-model-pipe", daemon=True).start()
    await closed.wait()
    log.info("the worker closed the pipe: model process exiting")
    pipeline = server.pipeline
    if pipeline.catalog_ready.is_set():  # the index as the worker left it, for the next start
        await pipeline.run(pipeline.save_index)
    logging.shutdown()
    os._exit(0)  # the model and swap threads may still hold work that no one will read


# -- the worker's side -----------------------------------------------------------------------


class ModelClient:
    """The worker's end of the pipe: numbered requests, answers matched by a reader thread.

    :meth:`call` may be used from any thread; it returns a :class:`concurrent.futures.Future`."""

    def __init__(self, conn: Any, process: Any, *, on_lost: Any = None) -> None:
        self.conn = conn
        self.process = process
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._closing = False
        #: called (on the reader thread) when the model process is gone while not closing;
        #: the worker's default exits the process (see the module docstring)
        self.on_lost = on_lost or _exit_worker
        self._reader: threading.Thread | None = None

    def start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read, name="streamrec-model-client", daemon=True)
        self._reader.start()

    def call(self, method: str, **payload: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        rid = next(self._ids)
        data = orjson.dumps({"id": rid, "m": method, **payload})
        with self._lock:
            if self._closing:
                raise RemoteError("the model process is stopped")
            self._pending[rid] = fut
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError) as exc:
                self._pending.pop(rid, None)
                raise RemoteError(f"the model process is gone: {exc}") from None
        return fut

    def request(self, method: str, timeout: float = CALL_TIMEOUT_S, **payload: Any) -> Any:
        """:meth:`call` and wait for the answer (on the worker's model thread: it waits without
        the GIL). A model process that does not answer in ``timeout`` seconds is taken for lost."""
        fut = self.call(method, **payload)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            self._lost(f"no answer to {method!r} in {timeout:.0f} s")
            raise RemoteError(f"the model process did not answer {method!r} in {timeout:.0f} s") from None

    def _read(self) -> None:
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                break
            msg = orjson.loads(data)
            fut = self._pending.pop(msg["id"], None)
            if fut is None:
                continue
            if "error" in msg:
                fut.set_exception(RemoteError(msg["error"]))
            else:
                fut.set_result(msg["ok"])
        self._lost("its pipe closed")

    def _lost(self, why: str) -> None:
        with self._lock:
            closing, self._closing = self._closing, True
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(RemoteError(f"the model process is gone ({why})"))
        if not closing:
            code = self.process.exitcode if self.process is not None else None
            self.on_lost(f"{why}; exit code {code}")

    def close(self, timeout: float = 30.0) -> None:
        """Stop the model process: close the pipe (it saves its index and exits), then wait."""
        with self._lock:
            self._closing = True
        self.conn.close()
        if self.process is not None:
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)


def _exit_worker(why: str) -> None:
    log.critical(
        "model process lost (%s): the worker exits now without committing, so that it is restarted "
        "and the events not yet committed are read again",
        why,
    )
    logging.shutdown()
    os._exit(EXIT_MODEL_PROCESS)


class RemoteModel:
    """What a batch holds of the model in the worker (``Pipeline.model``): the version that
    scored it (set from the answer) and the size of its index."""

    def __init__(self, version: str, items: int) -> None:
        self.version = version
        self.index = range(items)  # len() only


class RemotePipeline(Pipeline):
    """A :class:`Pipeline` whose model side lives in a model process (see the module docstring).

    The worker keeps the catalog's ids and (category, brand) groups (for the interest profile and
    the size reports) and the metrics; each model call is a request, sent and awaited on the
    worker's model thread in the order submitted, so ordering is as in one process."""

    def __init__(self, client: ModelClient, settings: Settings, facts: dict[str, Any]) -> None:
        super().__init__(
            recommender=None,
            index=None,
            top_k=settings.top_k,
            history_len=settings.history_len,
            purchased_max=settings.purchased_max,
            trigger_types=settings.trigger_types,
            profile_weights=settings.profile_weights(),
            profile_publish_s=settings.profile_publish_s,
            index_dir=None,  # the model process saves its index
            compute_threads=None,  # this process's model thread only waits for answers
        )
        self.client = client
        self.model_pid: int | None = facts.get("pid")
        self._facts = facts
        self._kind = facts.get("kind", "")
        self._rebuilding = False
        self.metrics.catalog_items.set(facts.get("items", 0))

    @classmethod
    def start(cls, settings: Settings, *, path: str, version: str | None) -> RemotePipeline:
        """Spawn the model process, wait until it has loaded the model, and return the pipeline
        that talks to it; a model that cannot be loaded raises :class:`CheckpointError` with the
        model process's reason."""
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        ours, theirs = ctx.Pipe(duplex=True)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        process = ctx.Process(
            target=serve,
            args=(theirs, settings_json(settings), str(path), version, level),
            name="streamrec-model",
            daemon=True,
        )
        process.start()
        theirs.close()
        client = ModelClient(ours, process)
        if not ours.poll(START_TIMEOUT_S):
            client.close(5)
            raise CheckpointError(f"the model process did not load {path} in {START_TIMEOUT_S:.0f} s")
        try:
            hello = orjson.loads(ours.recv_bytes())
        except (EOFError, OSError):
            process.join(5)
            hello = {"error": f"it exited with code {process.exitcode}"}
        if "error" in hello:
            client.close(5)
            raise CheckpointError(f"the model process could not load {path}: {hello['error']}")
        client.start_reader()
        atexit.register(client.close)  # before multiprocessing's own exit handler joins the child
        facts = hello["ok"]
        log.info(
            "model process ready pid=%s version=%s items=%s", facts.get("pid"), facts.get("version"), facts.get("items")
        )
        return cls(client, settings, facts)

    def close(self) -> None:
        self.client.close()

    def _learn(self, facts: dict[str, Any]) -> None:
        self._facts = {**self._facts, **{k: facts[k] for k in ("version", "items", "kind") if k in facts}}
        if "items" in facts:
            self.metrics.catalog_items.set(facts["items"])
        if "kind" in facts:
            self._kind = facts["kind"]

    # -- what the worker reads --

    @property
    def model(self) -> RemoteModel:  # type: ignore[override]
        return RemoteModel(self.model_version, int(self._facts.get("items", 0)))

    @property
    def model_version(self) -> str:
        return str(self._facts.get("version", ""))

    def refresh_gauges(self) -> None:
        self.metrics.set_index(kind=self._kind, rebuilding=self._rebuilding)
        self.metrics.memory_bytes.labels(part="rss").set(rss_bytes())

    # -- requests (each on the worker's model thread, in order) --

    def apply_catalog(self, changes: list[tuple[str, CatalogItem | None]]) -> None:
        latest: dict[str, CatalogItem | None] = {}
        for item_id, item in changes:
            latest[item_id] = item
        for item_id, item in latest.items():  # the ids and groups this process keeps
            if item is None:
                self.catalog.pop(item_id, None)
                self.item_group.pop(item_id, None)
            elif len(self.catalog) < MAX_CATALOG_ITEMS or item_id in self.catalog:
                self.catalog[item_id] = catalog_entry(item)
                self._set_group(item)
        sent = [[i, None if it is None else it.model_dump(mode="json")] for i, it in latest.items()]
        self._learn(self.client.request("catalog", changes=sent))
        if time.monotonic() - self._memory_at >= 10.0:
            self.update_memory()

    def catalog_loaded(self) -> None:
        self._learn(self.client.request("loaded"))
        self.update_memory()

    def memory_bytes(self) -> dict[str, int]:
        reply = self.client.request("memory")
        self._learn(reply)
        self._rebuilding = bool(reply.get("rebuilding"))
        if reply.get("titles"):
            embedded, hits, seconds = reply["titles"]
            self.metrics.count_titles(embedded=embedded, hits=hits, seconds=seconds)
        parts = dict(reply["parts"])
        parts["catalog_dict"] = parts.get("catalog_dict", 0) + catalog_dict_bytes(self.catalog)  # both keep one
        parts["rss"] = rss_bytes()
        return parts

    def save_index(self, model: Any = None) -> bool:
        return bool(self.client.request("save"))

    def score(self, states: list[UserState], fresh_events: list[Any], model: Any = None) -> Any:
        return self._score(states, fresh_events, model, explain=False)

    def score_explained(self, states: list[UserState], fresh_events: list[Any], model: Any = None) -> Any:
        return self._score(states, fresh_events, model, explain=True)

    def _score(self, states: list[UserState], fresh_events: list[Any], model: Any, *, explain: bool) -> Any:
        reply = self.client.request(
            "score",
            explain=explain,
            states=[scoring_row(s, explain=explain) for s in states],
            fresh=[[ev.item_id, ev.type, ev.ts] for ev in fresh_events],
        )
        if model is not None:
            model.version = reply["version"]
        observe = self.metrics.stage_seconds.labels
        for name, seconds in reply["stages"].items():
            observe(stage=name).observe(seconds)
        if not explain:
            return reply["lists"]
        reasons: dict[tuple[str, str | None], tuple[str, str | None]] = {}  # one tuple per reason
        lists = [
            [(i, s, reasons.setdefault((r[0], r[1]), (r[0], r[1]))) for i, s, r in rows] for rows in reply["lists"]
        ]
        return lists, reply["intents"]

    async def swap_model(self, version: str, path: str | Path) -> SwapStats | None:
        async with self._swap_lock:
            started = time.perf_counter()
            self.swap_pending = version
            self.metrics.model_swap_in_progress.set(1)
            try:
                reply = await asyncio.wrap_future(self.client.call("swap", version=version, path=str(path)))
            except RemoteError as exc:
                log.error("model version refused version=%s path=%s reason=%s", version, path, exc)
                reply = None
            finally:
                self.swap_pending = None
                self.metrics.model_swap_in_progress.set(0)
            if reply is None:  # refused (the model process logged why)
                self.metrics.model_refusals.inc()
                return None
            self._learn(reply)
            stats = SwapStats(**reply["stats"])
            self.count_swap(stats, time.perf_counter() - started)
            log.info("model swapped version=%s items=%d (in the model process)", version, stats.items)
            return stats
