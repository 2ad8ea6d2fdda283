"""The pipeline's catalog, the model's vocabulary and the index agree after random upserts,
deletes, stock changes and restarts; the index kind follows the catalog; a restart with the same
text cache embeds no title again."""

from __future__ import annotations

import random

import numpy as np
import pytest

from streamrec.indexer import ItemIndex, load_saved
from streamrec.model.inference import Recommender
from streamrec.model.textcache import TextCache
from streamrec.schemas import CatalogItem
from streamrec.streams.pipeline import Pipeline
from tests.unit.fakes import CountingEncoder

EXACT_MAX = 120
BATCH = 16
TRAINED = [f"i{i}" for i in range(1, 25)]  # the tiny model's items


def item(item_id: str, title: str, in_stock: bool = True) -> CatalogItem:
    return CatalogItem(
        item_id=item_id,
        title=title,
        category="beauty",
        brand="acme",
        price=9.5,
        in_stock=in_stock,
        updated_ts=1_700_000_000_000,
    )


def random_log(seed: int, n: int = 900) -> list[tuple[str, CatalogItem | None]]:
    """Catalog topic records: new items, re-titled items, stock flips and deletions (some of
    trained items, some of items never listed)."""
    rng = random.Random(seed)
    ids = TRAINED + [f"sku-{k}" for k in range(400)]
    log: list[tuple[str, CatalogItem | None]] = []
    for _ in range(n):
        i = rng.choice(ids)
        r = rng.random()
        if r < 0.12:
            log.append((i, None))
        else:
            title = f"title {i} v{rng.randrange(2) if r < 0.3 else 0}"
            log.append((i, item(i, title, in_stock=rng.random() > 0.1)))
    return log


def compacted(log):
    """What a compacted topic keeps: the last record per key (tombstones included)."""
    last = {}
    for k, v in log:
        last.pop(k, None)
        last[k] = v
    return list(last.items())


def make_pipeline(ckpt, cache_dir, encoder) -> Pipeline:
    rec = Recommender.load(ckpt, device="cpu", text_cache=TextCache(cache_dir, encoder=encoder))
    index = ItemIndex(rec.dim, device="cpu", exact_max=EXACT_MAX, hnsw_m=8, hnsw_ef_construction=40)
    return Pipeline(recommender=rec, index=index, top_k=5, history_len=20, purchased_max=10, trigger_types=("view",))


def load(p: Pipeline, records, *, ready_after: int | None = None) -> None:
    for s in range(0, len(records), BATCH):
        if ready_after is not None and s >= ready_after and not p.catalog_ready.is_set():
            p.catalog_loaded()
            p.catalog_ready.set()
        p.apply_catalog(records[s : s + BATCH])


def finish(p: Pipeline) -> None:
    p.scorer.index.close()  # waits for a background rebuild
    p.retune_index()
    p.scorer.index.close()


def check_agree(p: Pipeline, log) -> None:
    rec, index = p.scorer.recommender, p.scorer.index
    truth = dict(compacted(log))
    listed = {k: v for k, v in truth.items() if v is not None}
    deleted = {k for k, v in truth.items() if v is None}
    assert set(p.catalog) == set(listed)
    assert set(index._state.ids) == set(listed) and len(index) == len(listed)
    ids, vecs = rec.item_vectors()
    vec_of = dict(zip(ids, vecs))
    assert not deleted & set(vec_of), "a deleted item is still in the model's vocabulary"
    assert set(vec_of) - set(listed) <= set(TRAINED)  # only trained, never-listed items extra
    stored = dict(zip(listed, index.vectors(list(listed))[0]))
    for k, v in listed.items():
        np.testing.assert_allclose(stored[k], vec_of[k], atol=1e-5)
        assert index.is_eligible(k) == v.in_stock
    assert len(rec.vocab) <= len(TRAINED) + 400  # freed rows were reused, not appended


@pytest.mark.parametrize("seed", [1, 2])
def test_catalog_vocab_and_index_agree_across_restarts(tiny_checkpoint, tmp_path, seed):
    log = random_log(seed)
    enc = CountingEncoder()
    p = make_pipeline(tiny_checkpoint, tmp_path / "cache", enc)
    load(p, log[:496], ready_after=192)  # batch boundaries as in the replay below
    assert p.scorer.index.kind in ("flat", "hnsw")
    load(p, log[496:])
    finish(p)
    check_agree(p, log)
    assert p.scorer.index.kind == "hnsw"  # > EXACT_MAX live items, loaded in batches of 16
    p.scorer.recommender.text_cache.close()

    for replay in (log, compacted(log)):  # restart: the full log, or what compaction kept
        enc2 = CountingEncoder()
        p2 = make_pipeline(tiny_checkpoint, tmp_path / "cache", enc2)
        load(p2, replay)
        p2.catalog_loaded()
        p2.catalog_ready.set()
        finish(p2)
        check_agree(p2, log)
        assert enc2.seen == []  # every title came from the cache
        assert p2.scorer.index.kind == "hnsw"
        p2.scorer.recommender.text_cache.close()


def test_memory_report_names_every_part(tiny_checkpoint, tmp_path):
    p = make_pipeline(tiny_checkpoint, tmp_path / "cache", CountingEncoder())
    load(p, random_log(3, 200))
    mem = p.memory_bytes()
    for part in (
        "item_vectors_used",
        "model_weights",
        "index_arrays",
        "index_faiss",
        "catalog_dict",
        "text_cache_disk",
        "rss",
    ):
        assert mem[part] > 0, part
    p.update_memory()
    p.refresh_gauges()
    m = p.metrics
    titles = {it.text() for _, it in random_log(3, 200) if it is not None and it.item_id not in TRAINED}
    assert m.value("streamrec_titles_embedded_total") == len(titles)  # what /metrics exposes
    assert m.value("streamrec_index_info", kind="flat") == 1
    assert m.value("streamrec_index_rebuilding") == 0
    assert m.value("streamrec_memory_bytes", part="index_faiss") == mem["index_faiss"]
    assert 'streamrec_memory_bytes{part="rss"}' in m.render(model_version="v")
    p.scorer.recommender.text_cache.close()


def test_warm_restart_loads_the_saved_index_and_applies_what_changed(tiny_checkpoint, tmp_path):
    """A stopped pipeline's index is saved; the next one loads it (same model version) and the
    catalog it reads meanwhile adds, changes and removes items on it: no rebuild, nothing lost."""
    log = [(f"sku-{k}", item(f"sku-{k}", f"title {k}")) for k in range(300)]
    p = make_pipeline(tiny_checkpoint, tmp_path / "cache", CountingEncoder())
    p.index_dir = tmp_path / "index"
    load(p, log)
    p.catalog_loaded()
    p.catalog_ready.set()
    p.scorer.index.close()  # the retune to HNSW: saved when it swaps
    assert p.scorer.index.kind == "hnsw" and not p.scorer.index.unsaved()
    assert p.save_index() is False  # nothing changed since: not written again
    version = p.scorer.recommender.version
    before_user = p.scorer.recommender.encode_users([[("sku-50", "view"), ("sku-77", "view")]])
    p.scorer.recommender.text_cache.close()

    # meanwhile: 20 items deleted, 10 re-titled, 5 new, one out of stock
    later = [(f"sku-{k}", None) for k in range(20)]
    later += [(f"sku-{k}", item(f"sku-{k}", f"new title {k}")) for k in range(20, 30)]
    later += [(f"new-{k}", item(f"new-{k}", f"fresh {k}")) for k in range(5)]
    later += [("sku-40", item("sku-40", "title 40", in_stock=False))]
    now = compacted(log + later)
    enc = CountingEncoder()
    rec = Recommender.load(tiny_checkpoint, device="cpu", text_cache=TextCache(tmp_path / "cache", encoder=enc))
    assert rec.version == version
    index, why = load_saved(
        tmp_path / "index",
        meta={"model_version": rec.version, "dim": rec.dim},
        device="cpu",
        exact_max=EXACT_MAX,
        hnsw_m=8,
        hnsw_ef_construction=40,
    )
    assert index is not None, why
    slots = index._state.n_slots
    p2 = Pipeline(recommender=rec, index=index, top_k=5, history_len=20, purchased_max=10, trigger_types=("view",))
    p2.index_dir = tmp_path / "index"
    load(p2, now)
    p2.catalog_loaded()
    p2.catalog_ready.set()
    assert not index.rebuilding() and p2.scorer.index is index and index.kind == "hnsw"
    assert index._state.n_slots == slots + 15  # only the re-titled and new items were added
    # the unchanged items were taken back from the index: their titles were not even looked up
    assert rec.text_cache.hits + rec.text_cache.embedded == 15 and len(enc.seen) == 15
    check_agree(p2, log + later)
    # and they score as before the restart (their vectors and title norms came back intact)
    hist = [[("sku-50", "view"), ("sku-77", "view")]]
    np.testing.assert_allclose(rec.encode_users(hist), before_user, atol=1e-5)
    assert p2.save_index() is True
    p2.scorer.recommender.text_cache.close()
