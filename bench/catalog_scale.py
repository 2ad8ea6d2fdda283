"""Catalog-scale benchmark: a real `streamrec worker` and a real broker at growing catalog sizes.

For each size (``--sizes``, default 12000,100000,1000000): the Amazon Beauty catalog (the items
the model was trained on) plus generated items with generated titles up to that size, on fresh
topics. Measured per size, in one run:
  1. cold start: empty text cache -> /health ready (catalog loaded, every new title embedded);
     titles/s = titles embedded / seconds inside MiniLM (the worker's own counters);
  2. settle: until the background index rebuild (flat -> HNSW past index_exact_max) has swapped;
  3. events/s: a backlog of Beauty events drained by the worker; p99 at --rate events/s
     (produce -> recommendation received); the 12k size is the baseline the others are set
     beside (the first size in the list);
  4. memory: worker RSS (now and peak, from /proc) and the bytes of each part the worker
     measures itself (/metrics streamrec_memory_bytes), per item;
  5. warm start: same data dir (filled cache, the index the worker saved), a restart -> ready;
     titles embedded again, the index kind served at ready (the saved one: no rebuild).

``--prefill-cache``: for sizes where cold-embedding every generated title with MiniLM does not fit
the time at hand (1M titles on 2 cores), the text cache is filled BEFORE the first start with
random unit vectors under the encoder's real key, so the first start finds every title cached
(but no saved index: it builds one); its time to ready, the index kind, events/s, p99 and memory
are the worker's own, but the generated items'
vectors are not MiniLM's (recommendations among them mean nothing), and no cold figure or
titles/s is reported for such a run (null in the JSON).

``--memory-only N``: no Kafka and no worker process: the worker's structures (a Recommender and
an ItemIndex as ``streamrec worker`` builds them, the pipeline's catalog dicts) loaded with N
generated items through ``Pipeline.apply_catalog`` in the catalog reader's batches, the titles'
vectors random unit vectors (a stand-in text cache: no MiniLM, nothing cached in memory); then
the index retuned as after a catalog load, saved and loaded again (a warm restart's index).
Reports ``streamrec_memory_bytes`` parts per item, RSS (now and peak) and the seconds per item of
each step of the catalog load (parse, the pipeline's bookkeeping, vectors, index), one JSON line.

Data: Beauty at ../shared/data/beauty (override: STREAMREC_BENCH_DATA). A model: ``--model DIR``,
else a short training run here. Starts a local Kafka unless STREAMREC_BOOTSTRAP_SERVERS is set.
The last line is one JSON object: {"sizes": [{"items", "cold_ready_s", "warm_ready_s",
"titles_per_s", "events_per_s", "p99_ms", "rss_gib", "index_kind"}, ...]}.

    .venv/bin/python bench/catalog_scale.py --model DIR --sizes 12000,100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import beauty_events, latency_at
from worker_proc import FIELDS, launch, stop, tagged_settings, train_model, wait_healthy, worker_env

from streamrec.client import EventProducer
from streamrec.config import Settings
from streamrec.datafiles import read_item_text, read_sequences
from streamrec.devtools import localkafka
from streamrec.devtools.replay import catalog_from_dataset, dataset_items
from streamrec.indexer.faiss_index import choose_kind
from streamrec.schemas import CatalogItem
from streamrec.streams.topics import create_topics

REPO = Path(__file__).resolve().parents[1]

GIB = 1024**3
ADJ = (
    "Velvet",
    "Matte",
    "Hydrating",
    "Ultra",
    "Gentle",
    "Radiant",
    "Daily",
    "Intense",
    "Silky",
    "Pure",
    "Volumizing",
    "Long-Wear",
    "Sheer",
    "Nourishing",
    "Clarifying",
    "Soothing",
    "Bold",
    "Natural",
)
PRODUCT = (
    "Lipstick",
    "Nail Lacquer",
    "Face Cream",
    "Shampoo",
    "Conditioner",
    "Eye Shadow Palette",
    "Mascara",
    "Body Lotion",
    "Serum",
    "Cleanser",
    "Perfume",
    "Hair Oil",
    "Foundation",
    "Blush",
    "Eyeliner",
    "Sunscreen SPF 30",
    "Lip Gloss",
    "Hand Cream",
    "Toner",
    "Dry Shampoo",
)
BRAND = ("Acme", "Lumina", "Verde", "Nordic Glow", "Aurara", "Belle", "Kaori", "Solenne", "Mira", "Orchid Lab")
SHADE = ("Rose", "Coral", "Nude", "Plum", "Ruby", "Ivory", "Sand", "Mocha", "Berry", "Peach", "Cherry", "Mauve")
SIZE = ("0.5 oz", "1 fl oz", "1.7 oz", "3.4 fl oz", "8 oz", "12 ml", "30 ml", "100 ml")


def bench_data() -> Path:
    return Path(os.environ.get("STREAMREC_BENCH_DATA", REPO.parent / "shared" / "data" / "beauty"))


def generated_title(i: int) -> str:
    """A distinct, Beauty-like title per index (about as long as Beauty's titles)."""
    return (
        f"{BRAND[i % 10]} {ADJ[(i // 10) % 18]} {PRODUCT[(i // 180) % 20]}, {SHADE[(i // 3600) % 12]} "
        f"No. {i}, {SIZE[(i // 7) % 8]}"
    )


def generated_items(n: int, prefix: str) -> list[CatalogItem]:
    return [
        CatalogItem(
            item_id=f"{prefix}{i}",
            title=generated_title(i),
            category="",
            brand="",
            price=0.0,
            in_stock=True,
            updated_ts=1_760_000_000_000,
        )
        for i in range(n)
    ]


def prefill_cache(path: Path, titles: list[str], batch: int = 20_000) -> None:
    """Fill a text cache with random unit vectors for ``titles`` under MiniLM's identity."""
    import numpy as np

    from streamrec.model.text import TEXT_DIM, TextEncoder
    from streamrec.model.textcache import TextCache

    class RandomUnit:
        identity = TextEncoder.identity_of()

        def __init__(self) -> None:
            self.rng = np.random.default_rng(0)

        def encode(self, texts, batch_size: int = 128) -> np.ndarray:
            x = self.rng.standard_normal((len(texts), TEXT_DIM)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

    with TextCache(path, encoder=RandomUnit()) as cache:
        for s in range(0, len(titles), batch):
            cache.encode(titles[s : s + batch])


class RandomTitles:
    """A stand-in text cache: random unit vectors (one generator per call, seeded by its first
    title), nothing kept. Counts like :class:`TextCache` (all hits)."""

    def __init__(self) -> None:
        self.embedded, self.hits, self.embed_seconds = 0, 0, 0.0

    def encode(self, texts, batch_size: int = 128):
        import hashlib

        import numpy as np

        from streamrec.model.text import TEXT_DIM

        seed = int.from_bytes(hashlib.blake2b((texts[0] or "").encode(), digest_size=8).digest(), "big")
        x = np.random.default_rng(seed).standard_normal((len(texts), TEXT_DIM), dtype=np.float32)
        self.hits += len(texts)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def disk_bytes(self) -> int:
        return 0


def memory_only(args: argparse.Namespace) -> int:
    """See the module docstring (``--memory-only``)."""
    import torch

    from streamrec.model.inference import Recommender
    from streamrec.streams.app import index_options, new_index
    from streamrec.streams.pipeline import Pipeline, rss_bytes

    torch.set_num_threads(1)
    n = args.memory_only
    settings = Settings(device="cpu", index_exact_max=args.exact_max, hnsw_ef_construction=args.hnsw_ef_construction)
    model = Path(args.model) if args.model else None
    if model is None:
        print("--memory-only needs --model DIR", file=sys.stderr)
        return 2
    rss0 = rss_bytes()
    rec = Recommender.load(model, device="cpu", text_cache=RandomTitles())
    index = new_index(settings, rec.dim)
    pipe = Pipeline(
        recommender=rec,
        index=index,
        top_k=settings.top_k,
        history_len=settings.history_len,
        purchased_max=settings.purchased_max,
        trigger_types=settings.trigger_types,
    )
    rss_model = rss_bytes()
    items = generated_items(n, prefix="g-")
    raw = [it.to_bytes() for it in items]
    del items
    parse_s = 0.0
    t0 = time.perf_counter()
    batch = 512  # streams.catalog.CATALOG_BATCH
    for s in range(0, n, batch):
        t = time.perf_counter()
        chunk = [CatalogItem.from_bytes(b) for b in raw[s : s + batch]]
        parse_s += time.perf_counter() - t
        pipe.apply_catalog([(it.item_id, it) for it in chunk])
    load_s = time.perf_counter() - t0
    pipe.catalog_ready.set()
    t = time.perf_counter()
    pipe.catalog_loaded()
    while index.rebuilding():
        time.sleep(0.5)
    retune_s = time.perf_counter() - t
    del raw
    import gc

    gc.collect()
    mem = pipe.memory_bytes()
    rss_loaded = rss_bytes()
    # a warm restart's index: saved, then loaded (what the worker does at a start)
    work = Path(tempfile.mkdtemp(prefix="streamrec-memory-"))
    t = time.perf_counter()
    index.save(work / "index")
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    from streamrec.indexer import ItemIndex

    loaded = ItemIndex.load(work / "index", **index_options(settings))
    load_index_s = time.perf_counter() - t
    assert len(loaded) == len(index)
    disk = sum(f.stat().st_size for f in (work / "index").iterdir())
    # the warm restart's catalog pass over that loaded index: a new model and pipeline, every item
    # parsed and applied again (unchanged items are taken back from the index, nothing embedded)
    rec2 = Recommender.load(model, device="cpu", text_cache=RandomTitles())
    pipe2 = Pipeline(
        recommender=rec2,
        index=loaded,
        top_k=settings.top_k,
        history_len=settings.history_len,
        purchased_max=settings.purchased_max,
        trigger_types=settings.trigger_types,
    )
    raw = [it.to_bytes() for it in generated_items(n, prefix="g-")]
    warm_parse = 0.0
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        t = time.perf_counter()
        chunk = [CatalogItem.from_bytes(b) for b in raw[s : s + batch]]
        warm_parse += time.perf_counter() - t
        pipe2.apply_catalog([(it.item_id, it) for it in chunk])
    warm_s = time.perf_counter() - t0
    pipe2.catalog_loaded()
    warm_embedded = rec2.text_cache.hits + rec2.text_cache.embedded
    slots_after = loaded._state.n_slots
    del raw
    peak = proc_mem(os.getpid())[1]
    row = {
        "items": n,
        "dim": rec.dim,
        "index_kind": index.kind,
        "hnsw_storage": settings.hnsw_storage,
        "hnsw_ef_construction": settings.hnsw_ef_construction,
        "bytes_per_item": {k: round(v / n) for k, v in mem.items() if k != "rss"},
        "rss_gib": round(rss_loaded / GIB, 3),
        "rss_before_items_gib": round(rss_model / GIB, 3),
        "rss_per_item": round((rss_loaded - rss_model) / n),
        "peak_rss_gib": round(peak / GIB, 3),
        "process_start_rss_gib": round(rss0 / GIB, 3),
        "catalog_load_s": round(load_s, 1),
        "parse_us_per_item": round(parse_s / n * 1e6, 1),
        "apply_us_per_item": round((load_s - parse_s) / n * 1e6, 1),
        "retune_s": round(retune_s, 1),
        "index_save_s": round(save_s, 1),
        "index_load_s": round(load_index_s, 1),
        "index_disk_bytes_per_item": round(disk / n),
        "warm_catalog_load_s": round(warm_s, 1),
        "warm_parse_us_per_item": round(warm_parse / n * 1e6, 1),
        "warm_apply_us_per_item": round((warm_s - warm_parse) / n * 1e6, 1),
        "warm_titles_looked_up": warm_embedded,
        "warm_slots_added": slots_after - len(index),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }
    print()
    print(f"| bytes per item ({n:,} items, {rec.dim}-d, index {index.kind}) | |")
    print("|---|---:|")
    for k, v in row["bytes_per_item"].items():
        print(f"| {k} | {v:,} |")
    print(f"| RSS above the loaded model, per item | {row['rss_per_item']:,} |")
    print()
    print(json.dumps(row))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value}."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[k] = float(v)
    return out


def proc_mem(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) bytes of ``pid``."""
    fields = dict(re.findall(r"^(Vm\w+):\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE))
    return int(fields.get("VmRSS", 0)) * 1024, int(fields.get("VmHWM", 0)) * 1024


class Worker:
    def __init__(self, settings: Settings, model: Path, log: Path) -> None:
        self.port = localkafka.free_port()
        env = worker_env(
            settings,
            (*FIELDS, "index_exact_max", "hnsw_ef_construction"),
            STREAMREC_TEXT_CACHE_DIR=str(settings.text_cache_path),
            STREAMREC_WEB_PORT=str(self.port),
        )
        self.t0 = time.perf_counter()
        self.proc = launch(["--log-level", "INFO", "worker", "--model", str(model)], env, log, append=True)
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float) -> float:
        """Seconds from process start to /health 200."""
        return wait_healthy(self.proc, self.port, self.log, timeout, since=self.t0)

    def metrics(self) -> dict[str, float]:
        return scrape(self.url("/metrics"))

    def settle(self, want_kind: str, timeout: float) -> tuple[float, str]:
        """Wait until the index serves ``want_kind`` with no rebuild in flight; (seconds, kind)."""
        deadline = time.perf_counter() + timeout
        kind = "?"
        while time.perf_counter() < deadline:
            m = self.metrics()
            kind = next((k.split('"')[1] for k, v in m.items() if k.startswith("streamrec_index_info") and v), "?")
            if kind == want_kind and m.get("streamrec_index_rebuilding", 1) == 0:
                break
            time.sleep(1.0)
        return time.perf_counter() - self.t0, kind

    def stop(self) -> None:
        stop(self.proc, 120)


def ensure_model(args: argparse.Namespace, work: Path) -> Path:
    if args.model:
        return Path(args.model)
    out, d = work / "model", bench_data()
    print(f"training a model on Beauty for {args.train_seconds}s (pass --model DIR to skip)...", flush=True)
    return train_model(
        d / "sequences.txt", d / "item_text.tsv", out, args.train_seconds, cli_opts=("--data-dir", str(work))
    )


def drain_rate(w: Worker, settings: Settings, events, tag: str, timeout: float = 900) -> float:
    """Events/s of the worker draining a backlog of ``events`` produced at once."""
    base = w.metrics().get("streamrec_events_in_total", 0)
    now = int(time.time() * 1000)
    with EventProducer.from_settings(settings) as producer:
        for e in events:
            producer.send(e.model_copy(update={"event_id": f"{tag}-{e.event_id}", "ts": now}))
    first = None
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        n = w.metrics().get("streamrec_events_in_total", 0) - base
        if n > 0 and first is None:
            first = (time.perf_counter(), n)
        if n >= len(events):
            break
        time.sleep(0.2)
    else:
        raise SystemExit(f"backlog of {len(events)} events not drained in {timeout:.0f}s")
    t1 = time.perf_counter()
    return (n - first[1]) / (t1 - first[0]) if first and t1 > first[0] else float("nan")


def run_size(size: int, args, model: Path, bootstrap: str, work: Path, beauty: list[CatalogItem], events) -> dict:
    tag = f"cs{size}-{uuid.uuid4().hex[:6]}"
    d = work / tag
    d.mkdir()
    settings = tagged_settings(
        bootstrap,
        tag,
        d / "data",
        index_exact_max=args.exact_max,
        hnsw_ef_construction=args.hnsw_ef_construction,
    )
    create_topics(settings)
    extra = generated_items(max(0, size - len(beauty)), prefix=f"g{size}-")
    catalog = beauty[:size] + extra
    print(f"[{size}] producing {len(catalog):,} catalog items ({len(extra):,} generated)...", flush=True)
    t = time.perf_counter()
    with EventProducer.from_settings(settings) as producer:
        for c in catalog:
            producer.send_catalog(c)
    print(f"[{size}] produced in {time.perf_counter() - t:.0f}s; cold start...", flush=True)

    log = d / "worker.log"
    prefilled = (args.prefill_cache or args.prefill_dir is not None) and bool(extra)
    if prefilled:
        t = time.perf_counter()
        if args.prefill_dir is not None:  # shared across sizes: titles depend on the index only
            settings = settings.model_copy(update={"text_cache_dir": args.prefill_dir})
        prefill_cache(settings.text_cache_path, [c.text() for c in extra])
        print(
            f"[{size}] text cache prefilled with random vectors for {len(extra):,} generated titles "
            f"in {time.perf_counter() - t:.0f}s (first start is warm)",
            flush=True,
        )
    w = Worker(settings, model, log)
    try:
        cold = w.wait_ready(args.ready_timeout)
        m = w.metrics()
        embedded = int(m.get("streamrec_titles_embedded_total", 0))
        embed_s = m.get("streamrec_title_embed_seconds_total", 0.0)
        tps = embedded / embed_s if embed_s > 0 else float("nan")
        print(
            f"[{size}] {'first (prefilled) start' if prefilled else 'cold'} ready {cold:.1f}s, embedded "
            f"{embedded:,} titles in {embed_s:.0f}s ({tps:.0f}/s)",
            flush=True,
        )
        want = choose_kind("auto", len(catalog), args.exact_max, "cpu")
        settled, kind = w.settle(want, args.settle_timeout)
        print(f"[{size}] index {kind} (wanted {want}) at {settled:.1f}s", flush=True)
        backlog = drain_rate(w, settings, events[: args.events], tag)
        print(f"[{size}] backlog drain {backlog:,.0f} events/s", flush=True)
        lat = latency_at(settings, events, float(args.rate), args.rate_seconds)
        print(f"[{size}] at {args.rate} ev/s: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms", flush=True)
        time.sleep(11)  # the memory gauges refresh every 10 s
        m = w.metrics()
        mem = {k.split('"')[1]: v for k, v in m.items() if k.startswith("streamrec_memory_bytes")}
        rss, peak = proc_mem(w.proc.pid)
    finally:
        w.stop()
    # warm restart: the text cache is filled and the worker saved its index (after the rebuild
    # and at its clean stop): it loads that index and serves ANN search from the start
    print(f"[{size}] warm restart...", flush=True)
    w = Worker(settings, model, log)
    try:
        warm = w.wait_ready(args.ready_timeout)
        m = w.metrics()
        warm_embedded = int(m.get("streamrec_titles_embedded_total", 0))
        warm_kind = next((k.split('"')[1] for k, v in m.items() if k.startswith("streamrec_index_info") and v), "?")
        warm_rss = proc_mem(w.proc.pid)[0]
    finally:
        w.stop()
    print(f"[{size}] warm ready {warm:.1f}s serving {warm_kind}, embedded {warm_embedded} titles again", flush=True)
    return {
        "items": len(catalog),
        "new_titles": embedded,
        "prefilled": prefilled,
        "first_ready_s": round(cold, 1),
        "cold_ready_s": None if prefilled else round(cold, 1),
        "warm_ready_s": round(warm, 1),
        "titles_per_s": round(tps, 1) if not math.isnan(tps) else None,
        "settled_s": round(settled, 1),
        "index_kind": kind,
        "events_per_s": round(backlog, 1),
        "p99_ms": round(lat["p99"], 1),
        "p50_ms": round(lat["p50"], 1),
        "answered": lat["answered"],
        "sent": lat["sent"],
        "rss_gib": round(rss / GIB, 3),
        "peak_rss_gib": round(peak / GIB, 3),
        "warm_rss_gib": round(warm_rss / GIB, 3),
        "warm_embedded": warm_embedded,
        "warm_index_kind": warm_kind,
        "memory": mem,
    }


def report(rows: list[dict], args) -> None:
    base = rows[0]
    print()
    print(
        "| items | new titles | cold ready s | MiniLM titles/s | warm ready s "
        "| titles re-embedded warm (index at ready) "
        f"| index (settled s) | events/s backlog | vs {base['items']:,} | p50 / p99 ms at {args.rate}/s "
        f"| RSS GiB (peak) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        tps = "-" if r["titles_per_s"] is None else f"{r['titles_per_s']:.0f}"
        cold = (
            "- (prefilled: first start " + f"{r['first_ready_s']:.1f})"
            if r["prefilled"]
            else f"{r['cold_ready_s']:.1f}"
        )
        print(
            f"| {r['items']:,} | {r['new_titles']:,} | {cold} | {tps} | {r['warm_ready_s']:.1f} "
            f"| {r['warm_embedded']} ({r['warm_index_kind']}) | {r['index_kind']} ({r['settled_s']:.0f}) "
            f"| {r['events_per_s']:,.0f} "
            f"| {r['events_per_s'] / base['events_per_s']:.2f} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} "
            f"| {r['rss_gib']:.2f} ({r['peak_rss_gib']:.2f}) |"
        )
    parts = sorted({p for r in rows for p in r["memory"]} - {"rss"})
    print()
    print("| bytes per catalog item | " + " | ".join(f"{r['items']:,}" for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for p in [*parts, "rss"]:
        print(f"| {p} | " + " | ".join(f"{r['memory'].get(p, 0) / r['items']:,.0f}" for r in rows) + " |")
    # RSS is mostly fixed cost (torch, MiniLM, Faust) at small sizes: the marginal figure is the
    # RSS above the first size's, per item added
    print(
        f"| rss above the {base['items']:,} run, per added item | - | "
        + " | ".join(
            f"{(r['rss_gib'] - base['rss_gib']) * GIB / (r['items'] - base['items']):,.0f}"
            if r["items"] > base["items"]
            else "-"
            for r in rows[1:]
        )
        + " |"
    )
    print()
    keys = ("items", "cold_ready_s", "warm_ready_s", "titles_per_s", "events_per_s", "p99_ms", "rss_gib", "index_kind")
    print(json.dumps({"sizes": [{k: r[k] for k in keys} for r in rows]}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        default="12000,100000,1000000",
        help="comma-separated catalog sizes; the first is the events/s baseline",
    )
    ap.add_argument("--model", help="checkpoint dir trained on Beauty (default: train one now)")
    ap.add_argument("--train-seconds", type=int, default=120)
    ap.add_argument("--events", type=int, default=20_000, help="backlog drained for events/s")
    ap.add_argument("--rate", type=int, default=500, help="events/s offered for the latency figure")
    ap.add_argument("--rate-seconds", type=float, default=20.0)
    ap.add_argument("--exact-max", type=int, default=Settings.model_fields["index_exact_max"].default)
    ap.add_argument(
        "--prefill-cache",
        action="store_true",
        help="fill the text cache with random vectors first (no cold/MiniLM figures; see above)",
    )
    ap.add_argument(
        "--prefill-dir",
        type=Path,
        default=None,
        help="like --prefill-cache, in this text-cache dir (kept, reused by later runs)",
    )
    ap.add_argument(
        "--memory-only",
        type=int,
        default=0,
        metavar="N",
        help="measure the worker's structures at N items without Kafka or a worker (needs --model)",
    )
    ap.add_argument(
        "--hnsw-ef-construction",
        type=int,
        default=Settings.model_fields["hnsw_ef_construction"].default,
        help="the worker's HNSW build breadth (memory does not depend on it; build time does)",
    )
    ap.add_argument("--ready-timeout", type=float, default=4 * 3600)
    ap.add_argument("--settle-timeout", type=float, default=1800)
    args = ap.parse_args()
    if args.memory_only:
        return memory_only(args)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"--sizes {args.sizes!r}: expected comma-separated positive integers", file=sys.stderr)
        return 2
    d = bench_data()
    if not (d / "sequences.txt").is_file():
        print(f"Beauty data not found at {d} (set STREAMREC_BENCH_DATA)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="streamrec-catalog-scale-"))
    model = ensure_model(args, work)
    sequences = read_sequences(d / "sequences.txt")
    texts = read_item_text(d / "item_text.tsv")
    beauty = catalog_from_dataset(dataset_items(sequences, texts), texts)
    events = beauty_events(sequences, max(args.events, int(args.rate * args.rate_seconds)), prefix="cs")
    started = None
    bootstrap = os.environ.get("STREAMREC_BOOTSTRAP_SERVERS")
    if not bootstrap:
        started = work / "kafka"
        bootstrap = localkafka.start(started, libs=Settings().kafka_libs.expanduser()).bootstrap
    rows = []
    try:
        for size in sizes:
            rows.append(run_size(size, args, model, bootstrap, work, beauty, events))
            print(json.dumps({"partial": rows[-1]}), flush=True)
    finally:
        if started is not None:
            localkafka.stop(started)
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
