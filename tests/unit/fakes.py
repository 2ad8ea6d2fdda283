"""Test doubles shared by unit tests (no Kafka at unit level; the text encoder only where the
code under test is the cache around it)."""

from __future__ import annotations

import hashlib

import numpy as np

from streamrec.model.text import TEXT_DIM
from streamrec.schemas import CatalogItem, ShopEvent


class FakeProducer:
    """Records what a runner sends, in order (the EventProducer surface the runners use)."""

    def __init__(self) -> None:
        self.sent: list[ShopEvent | CatalogItem] = []
        self.flushes = 0

    def send(self, event: ShopEvent) -> ShopEvent:
        self.sent.append(event)
        return event

    def send_catalog(self, item: CatalogItem) -> CatalogItem:
        self.sent.append(item)
        return item

    def flush(self, timeout: float = 30.0) -> None:
        self.flushes += 1


class CountingEncoder:
    """A deterministic stand-in for MiniLM that counts what it embeds (the cache is under test)."""

    def __init__(self, identity: str = "stub-v1") -> None:
        self.identity = identity
        self.seen: list[str] = []

    def encode(self, texts, batch_size: int = 128) -> np.ndarray:
        self.seen.extend(texts)
        out = np.zeros((len(texts), TEXT_DIM), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256((self.identity + t).encode()).digest()[:4], "little")
            out[i] = np.random.default_rng(seed).standard_normal(TEXT_DIM)
        return out
