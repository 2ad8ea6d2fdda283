"""Test doubles shared by the simulator and replay tests (no Kafka at unit level)."""

from __future__ import annotations

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
