"""Hot swap without a broker: a real Pipeline, real tiny checkpoints, real FAISS and MiniLM.

The swap builds a whole new ServingModel on its own thread while the serving one keeps
answering, replays catalog changes made meanwhile, and flips ONE reference between two batches.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from streamrec.config import Settings
from streamrec.indexer import ItemIndex
from streamrec.model.inference import Recommender
from streamrec.model.textcache import TextCache
from streamrec.schemas import CatalogItem, ModelUpdate, Recommendation
from streamrec.serving.swap import VersionLoader
from streamrec.streams import pipeline as pipeline_mod
from streamrec.streams.agents import BatchHandler
from streamrec.streams.app import create_app
from streamrec.streams.model_follower import ModelFollower, is_newer, resolve_checkpoint
from streamrec.streams.pipeline import Pipeline
from tests.unit.streams.test_agents import TS, Harness, item


class CountingEncoder:
    """The real MiniLM encoder, counting the titles it is asked to embed."""

    def __init__(self) -> None:
        from streamrec.model.text import TextEncoder

        self.inner = TextEncoder(device="cpu")
        self.identity = self.inner.identity
        self.titles: list[str] = []

    def encode(self, texts: list[str], batch_size: int = 128) -> object:
        self.titles.extend(texts)
        return self.inner.encode(texts, batch_size)


@pytest.fixture(scope="module")
def minilm() -> CountingEncoder:
    return CountingEncoder()


def version_dir(src: Path, root: Path, name: str) -> Path:
    out = root / name
    shutil.copytree(src, out)
    return out


class Gate:
    """Wraps a loader: the build stops inside ``load`` until released, so catalog changes made
    while it waits happen *during* the build."""

    def __init__(self, loader: VersionLoader) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.inner = loader.load
        loader.load = self  # type: ignore[method-assign]

    def __call__(self, path: Path, version: str) -> Recommender:
        self.entered.set()
        assert self.release.wait(60), "test never released the build"
        return self.inner(path, version)

    async def wait_entered(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 60)


def make_pipeline(ckpt: Path, cache: TextCache) -> tuple[Pipeline, Gate]:
    rec = Recommender.load(ckpt, device="cpu", version="v0001-20260101T000000Z", text_cache=cache)
    loader = VersionLoader.with_text_cache(cache, device="cpu")
    gate = Gate(loader)
    p = Pipeline(
        recommender=rec,
        index=ItemIndex(rec.dim, kind="flat", device="cpu"),
        top_k=5,
        history_len=4,
        purchased_max=3,
        trigger_types=("view", "purchase"),
        new_index=lambda dim: ItemIndex(dim, kind="flat", device="cpu"),
        loader=loader,
    )
    topic: list = []  # the catalog topic: what a build reads (a copy as of the call)
    p.catalog_source = lambda: [list(topic)]
    p.topic = topic  # type: ignore[attr-defined]
    return p, gate


async def publish(p: Pipeline, changes: list) -> None:
    """A catalog change as the worker sees it: on the topic, and applied by the catalog reader."""
    p.topic.extend(changes)  # type: ignore[attr-defined]
    await p.run(p.apply_catalog, changes)


def new_item(item_id: str, title: str, *, in_stock: bool = True) -> CatalogItem:
    return CatalogItem(
        item_id=item_id, title=title, category="makeup", brand="Tiny", price=5.0, in_stock=in_stock, updated_ts=TS
    )


@pytest.fixture
async def pipe(tiny_checkpoint, minilm):
    p, gate = make_pipeline(tiny_checkpoint, TextCache(None, encoder=minilm))
    catalog = [(f"i{i}", item(i)) for i in range(1, 25)]
    catalog += [(f"n{i}", new_item(f"n{i}", f"glossy lip balm number {i}")) for i in range(1, 6)]
    await publish(p, catalog)
    p.gate = gate  # type: ignore[attr-defined]
    yield p
    gate.release.set()
    p._executor.shutdown(wait=True)
    p._swap_executor.shutdown(wait=True)


async def test_swap_keeps_catalog_changes_made_during_the_build(pipe, tiny_checkpoint, tmp_path):
    v2 = version_dir(tiny_checkpoint, tmp_path, "v0002-20260101T000100Z")
    old = pipe.model
    swap = asyncio.create_task(pipe.swap_model(v2.name, v2))
    await pipe.gate.wait_entered()  # the build has taken its catalog snapshot and is loading
    assert pipe.swap_pending == v2.name and pipe.model is old
    await publish(
        pipe,
        [
            ("n9", new_item("n9", "matte lip crayon")),  # added
            ("i3", None),  # deleted
            ("i4", item(4).model_copy(update={"in_stock": False})),  # out of stock
            ("n1", new_item("n1", "glossy lip balm number 1", in_stock=False)),
        ],
    )
    assert pipe.model is old  # still the old one until the build is whole
    pipe.gate.release.set()
    stats = await swap
    assert stats is not None and stats.version == v2.name
    new = pipe.model
    assert new is not old and pipe.model_version == v2.name and new.index is not old.index
    assert "n9" in new.index and new.index.is_eligible("n9")
    assert "i3" not in new.index
    assert "i4" in new.index and not new.index.is_eligible("i4")
    assert not new.index.is_eligible("n1")
    assert set(pipe.catalog) == {i for i in pipe.catalog if i in new.index}
    assert len(new.index) == len(pipe.catalog) == 24 - 1 + 5 + 1
    assert pipe.metrics.value("streamrec_model_swaps_total") == 1
    assert pipe.metrics.value("streamrec_model_refusals_total") == 0
    assert pipe.swap_pending is None
    # later catalog changes go to the version now serving
    await publish(pipe, [("n10", new_item("n10", "sheer lip tint"))])
    assert "n10" in new.index and "n10" not in old.index


async def test_catch_up_off_the_model_thread_replays_long_change_logs(pipe, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "SWAP_CATCH_UP", 2)
    v2 = version_dir(tiny_checkpoint, tmp_path, "v0002-20260101T000100Z")
    swap = asyncio.create_task(pipe.swap_model(v2.name, v2))
    await pipe.gate.wait_entered()
    for n in range(10):
        await publish(pipe, [(f"m{n}", new_item(f"m{n}", f"velvet lip stain {n}"))])
    await publish(pipe, [("m0", None)])
    pipe.gate.release.set()
    assert await swap is not None
    assert "m0" not in pipe.model.index and all(f"m{n}" in pipe.model.index for n in range(1, 10))
    assert len(pipe.model.index) == len(pipe.catalog)


async def test_known_titles_are_not_embedded_again(pipe, tiny_checkpoint, tmp_path, minilm):
    """The new version lacks the items added while serving (n1..n5) and the title of i5 (trained
    without one); n2's title changed while serving. Every one of those titles was embedded by the
    serving version already: the swap answers them all from the shared text cache."""
    await publish(pipe, [("n2", new_item("n2", "a new title for n2"))])
    v2 = version_dir(tiny_checkpoint, tmp_path, "v0002-20260101T000100Z")
    pipe.gate.release.set()
    before = len(minilm.titles)
    stats = await pipe.swap_model(v2.name, v2)
    assert stats is not None
    assert minilm.titles[before:] == []  # nothing ran through MiniLM
    assert stats.titles_encoded == 0 and stats.titles_reused >= 6
    # and the new version's vectors for them are the ones MiniLM gives: same as embedding afresh
    ids = ["n1", "n2", "i5"]
    fresh = Recommender.load(v2, device="cpu", version="check", text_cache=TextCache(None, encoder=minilm.inner))
    got = list(pipe.model.index.vectors(ids)[0])
    want = fresh.add_items(
        [
            (i, text)
            for i, text in zip(
                ids,
                [
                    new_item("n1", "glossy lip balm number 1").text(),
                    new_item("n2", "a new title for n2").text(),
                    item(5).text(),
                ],
            )
        ]
    )
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-5, atol=1e-6)
    assert pipe.metrics.value("streamrec_model_swap_titles_total", source="reused") == stats.titles_reused


def corrupt(kind: str, src: Path, dst: Path) -> Path:
    if kind == "missing":
        return dst / "does-not-exist"
    shutil.copytree(src, dst)
    if kind == "truncated weights":
        data = (dst / "model.safetensors").read_bytes()
        (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "garbage item map":
        (dst / "item_map.json").write_text("{not json")
    elif kind == "incompatible config":
        cfg = json.loads((dst / "config.json").read_text())
        cfg["d_model"] = cfg["d_model"] * 2  # the weights no longer fit
        (dst / "config.json").write_text(json.dumps(cfg))
    elif kind == "wrong text width":
        from safetensors.torch import load_file, save_file

        cfg = json.loads((dst / "config.json").read_text())
        cfg["text_dim"] = 100
        (dst / "config.json").write_text(json.dumps(cfg))
        w = load_file(str(dst / "model.safetensors"))
        for k, v in list(w.items()):
            if v.ndim == 2 and v.shape[1] == 384:
                w[k] = v[:, :100].contiguous()
        save_file(w, str(dst / "model.safetensors"))
        t = load_file(str(dst / "text_emb.safetensors"))["text_emb"]
        save_file({"text_emb": t[:, :100].contiguous()}, str(dst / "text_emb.safetensors"))
    return dst


@pytest.mark.parametrize(
    "kind", ["missing", "truncated weights", "garbage item map", "incompatible config", "wrong text width"]
)
async def test_a_version_that_cannot_be_served_is_refused_and_the_old_one_keeps_serving(
    pipe, tiny_checkpoint, tmp_path, kind, caplog
):
    bad = corrupt(kind, tiny_checkpoint, tmp_path / "v0002-20260101T000100Z")
    old = pipe.model
    pipe.gate.release.set()
    assert await pipe.swap_model("v0002-20260101T000100Z", bad) is None
    assert pipe.model is old and pipe.model_version == "v0001-20260101T000000Z"
    assert pipe.metrics.value("streamrec_model_refusals_total") == 1
    assert pipe.metrics.value("streamrec_model_swaps_total") == 0
    assert any("model version refused" in r.message and "v0002" in r.message for r in caplog.records)
    assert not pipe._swap_logs and pipe.swap_pending is None
    # still serving, and still taking catalog changes
    await publish(pipe, [("n7", new_item("n7", "plum lip liner"))])
    assert "n7" in pipe.model.index
    # and a good version after the refusal swaps in
    good = version_dir(tiny_checkpoint, tmp_path, "v0003-20260101T000200Z")
    assert await pipe.swap_model(good.name, good) is not None and pipe.model_version == good.name


@pytest.fixture
async def harness(tiny_checkpoint, tmp_path, minilm):
    settings = Settings(
        data_dir=tmp_path,
        app_id=f"unit-{uuid.uuid4().hex[:8]}",
        top_k=5,
        history_len=4,
        purchased_max=3,
        partitions=2,
        device="cpu",
        index_kind="flat",
    )
    cache = TextCache(None, encoder=minilm)
    rec = Recommender.load(tiny_checkpoint, device="cpu", version="v0001-20260101T000000Z", text_cache=cache)
    app, pipeline = create_app(
        settings,
        recommender=rec,
        index=ItemIndex(rec.dim, kind="flat", device="cpu"),
        store="memory://",
        loader=VersionLoader.with_text_cache(cache, device="cpu"),
        follow_models=False,
    )
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    catalog = [(f"i{i}", item(i)) for i in range(1, 25)]
    pipeline.catalog_source = lambda: [catalog]
    pipeline.apply_catalog(catalog)
    handler = BatchHandler(
        pipeline=pipeline, users=app.streamrec_handler.users, recommendations=app.channel(), dead_letters=app.channel()
    )
    yield Harness(app, handler)
    pipeline._executor.shutdown(wait=True)
    pipeline._swap_executor.shutdown(wait=True)


async def test_version_flips_once_between_batches_and_every_event_is_answered_once(harness, tiny_checkpoint, tmp_path):
    """Batches keep flowing while a version is built and swapped: each batch is labelled by one
    version, the labels go v1 ... v1 v2 ... v2 (never back), every event gets one answer."""
    v2 = version_dir(tiny_checkpoint, tmp_path, "v0002-20260101T000100Z")
    pipeline = harness.pipeline
    swap = asyncio.create_task(pipeline.swap_model(v2.name, v2))
    batches: list[list[Recommendation]] = []
    sent: list[str] = []
    n = 0
    while not swap.done() or n < 5:  # at least a few batches after the swap too
        if swap.done():
            n += 1
        users = [f"u{n}-{k}-{len(batches)}" for k in range(6)]
        batch = [harness.shop(u, 1 + (k * 5 + len(batches)) % 24, n=len(batches)) for k, u in enumerate(users)]
        sent += [json.loads(e.value)["event_id"] for e in batch]
        await harness.handler.handle(batch)
        batches.append(harness.recommendations())
        assert len(batches) < 2000, "the swap never finished"
    assert await swap is not None
    versions = [{r.model_version for r in b} for b in batches]
    assert all(len(v) == 1 for v in versions), versions  # one version per batch
    flat = [v.pop() for v in versions]
    assert flat[0] == "v0001-20260101T000000Z" and flat[-1] == v2.name
    flips = sum(1 for a, b in itertools.pairwise(flat) if a != b)
    assert flips == 1, flat  # v1 ... v1 v2 ... v2
    answered = [r.event_id for b in batches for r in b]
    assert sorted(answered) == sorted(sent)  # every event once, none twice


class FakePipeline:
    def __init__(self, version: str) -> None:
        self.model_version = version
        self.swapped: list[tuple[str, Path]] = []

    async def swap_model(self, version: str, path: Path) -> object:
        self.swapped.append((version, path))
        self.model_version = version
        return object()


def update(version: str, path: str) -> ModelUpdate:
    return ModelUpdate(version=version, path=path, metrics={}, created_ts=TS)


async def test_follower_startup_takes_only_newer_versions_then_any_other_live(tmp_path):
    reg = tmp_path / "models"
    (reg / "versions" / "v0003-20260101T000300Z").mkdir(parents=True)
    p = FakePipeline("v0002-20260101T000200Z")
    f = ModelFollower(p, reg)  # type: ignore[arg-type]
    assert not await f.apply(update("v0001-20260101T000100Z", "/x"), startup=True)  # older: ignored
    assert not await f.apply(update("v0002-20260101T000200Z", "/x"), startup=True)  # the same
    assert await f.apply(update("v0003-20260101T000300Z", "/elsewhere/v3"), startup=True)
    # the local registry's copy wins over the announced path (another host's mount point)
    assert p.swapped == [("v0003-20260101T000300Z", reg / "versions" / "v0003-20260101T000300Z")]
    assert not await f.apply(update("v0003-20260101T000300Z", "/x"))  # the one serving
    assert await f.apply(update("v0001-20260101T000100Z", "/models/v1"))  # live rollback
    assert p.swapped[-1] == ("v0001-20260101T000100Z", Path("/models/v1"))


def test_resolve_checkpoint_never_treats_the_version_as_a_path(tmp_path):
    (tmp_path / "versions").mkdir()
    (tmp_path / "secret").mkdir()
    upd = update("../secret", "/announced/path")
    assert resolve_checkpoint(upd, tmp_path) == Path("/announced/path")
    assert not is_newer("../v9-x", "v0001-20260101T000000Z")
