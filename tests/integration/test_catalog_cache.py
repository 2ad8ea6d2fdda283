"""A restarted worker embeds no title it has embedded before: the text cache (RocksDB in the
worker's data dir) answers them, as the worker's /metrics counters show; and it loads the index
its predecessor saved at its clean stop, taking the unchanged items back from it (their titles
are not even looked up). Real broker, real `streamrec worker` processes, real MiniLM."""

from __future__ import annotations

from streamrec.client import EventProducer
from streamrec.schemas import CatalogItem
from streamrec.streams.topics import create_topics
from tests.integration.worker_harness import start_worker


def metric(w, name: str) -> float:
    text = w.get("/metrics")[1]
    return float(next(x for x in text.splitlines() if x.startswith(name + " ")).split()[1])


def send(settings, items) -> None:
    with EventProducer.from_settings(settings) as producer:
        for item in items:
            producer.send_catalog(item)


def test_restart_with_a_filled_cache_embeds_only_new_titles(kafka_settings, sim_model, shop, tmp_path):
    create_topics(kafka_settings)
    # ids unknown to the model (its trained items keep their checkpoint vectors): every title
    # must be embedded once
    catalog = [it.model_copy(update={"item_id": f"cold-{it.item_id}"}) for it in shop.catalog()]
    send(kafka_settings, catalog)
    texts = {it.text() for it in catalog if it.text()}

    w = start_worker(kafka_settings, sim_model, tmp_path)
    try:
        health = w.wait_healthy()
        assert health["catalog_items"] == len(catalog)
        assert metric(w, "streamrec_titles_embedded_total") == len(texts)
        assert metric(w, "streamrec_title_cache_hits_total") == 0
    finally:
        w.stop()
    assert (kafka_settings.data_dir / "text-cache").is_dir()
    saved = kafka_settings.data_dir / "index" / kafka_settings.app_id
    assert (saved / "manifest.json").is_file() and (saved / "index.faiss").is_file()  # saved at the stop

    fresh = [
        CatalogItem(
            item_id=f"new-{i}",
            title=f"brand new velvet lip tint no. {i}",
            category="beauty",
            brand="acme",
            price=12.0,
            in_stock=True,
            updated_ts=1_760_000_000_000,
        )
        for i in range(3)
    ]
    send(kafka_settings, fresh)  # listed while the worker was down

    w2 = start_worker(kafka_settings, sim_model, tmp_path)
    try:
        health = w2.wait_healthy()
        assert health["catalog_items"] == len(catalog) + len(fresh)
        assert metric(w2, "streamrec_titles_embedded_total") == len(fresh)  # only the unseen ones
        # the listed items came back from the saved index: no title looked up in the cache
        assert metric(w2, "streamrec_title_cache_hits_total") == 0
        assert "saved index loaded" in w2.log()
    finally:
        w2.stop()
