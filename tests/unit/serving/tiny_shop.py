"""The tiny shop the serving tests score: items ``i1`` .. ``i24`` ("<colour> lipstick shade <i>")
in a real :class:`Pipeline` over the model tests' tiny checkpoint and a flat FAISS index."""

from __future__ import annotations

from pathlib import Path

from streamrec.indexer import ItemIndex
from streamrec.model.inference import Recommender
from streamrec.schemas import CatalogItem
from streamrec.streams.pipeline import Pipeline

TS = 1_767_225_600_000
TYPES = ("view", "add_to_cart", "remove_from_cart", "purchase")


def item(
    i: int, *, title: str | None = None, category: str = "makeup", brand: str = "Tiny", in_stock: bool = True
) -> CatalogItem:
    colour = ("red", "green", "blue")[i % 3]
    return CatalogItem(
        item_id=f"i{i}",
        title=title if title is not None else f"{colour} lipstick shade {i}",
        category=category,
        brand=brand,
        price=9.0,
        in_stock=in_stock,
        updated_ts=TS,
    )


def tiny_pipeline(checkpoint: Path, *, history_len: int) -> Pipeline:
    """Top 5, at most 3 purchases remembered, every event type a trigger; the catalog i1..i24 loaded."""
    rec = Recommender.load(checkpoint, device="cpu")
    p = Pipeline(
        recommender=rec,
        index=ItemIndex(rec.dim, kind="flat"),
        top_k=5,
        history_len=history_len,
        purchased_max=3,
        trigger_types=TYPES,
    )
    p.apply_catalog([(f"i{i}", item(i)) for i in range(1, 25)])
    return p
