"""Tiny synthetic shop: 24 items in 3 "colour" families; users walk through one family in order,
so the next item is predictable from the last one. Small enough that training takes seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.model.data import Interactions

N_ITEMS = 24
COLOURS = ("red", "green", "blue")


def item_title(i: int) -> str:
    return f"{COLOURS[i % 3]} lipstick shade {i}"


def make_interactions(n_users: int = 90, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    data = Interactions()
    for u in range(n_users):
        fam = u % 3
        fam_items = [i for i in range(1, N_ITEMS + 1) if i % 3 == fam]
        start = int(rng.integers(0, len(fam_items)))
        length = int(rng.integers(4, 9))
        seq = [f"i{fam_items[(start + k) % len(fam_items)]}" for k in range(length)]
        data.users.append(f"u{u}")
        data.items.append(seq)
        data.types.append(["view"] * length)
    return data


def write_sequences(path: Path, data: Interactions) -> Path:
    path.write_text("".join(f"{u} {' '.join(s)}\n" for u, s in zip(data.users, data.items)))
    return path


def write_item_text(path: Path, n: int = N_ITEMS, *, skip: tuple[int, ...] = (5,)) -> Path:
    lines = ["item_id\ttitle"]
    for i in range(1, n + 1):
        lines.append(f"i{i}\t" + ("" if i in skip else item_title(i)))
    path.write_text("\n".join(lines) + "\n")
    return path


TINY_CONFIG = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=10, dropout=0.1, emb_dropout=0.1, id_dropout=0.1)


@pytest.fixture(scope="session")
def tiny_data() -> Interactions:
    return make_interactions()


@pytest.fixture(scope="session")
def tiny_text() -> dict[str, str | None]:
    return {f"i{i}": (None if i == 5 else item_title(i)) for i in range(1, N_ITEMS + 1)}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data, tiny_text) -> Path:
    """A trained tiny model saved as a checkpoint (trained once per session)."""
    from streamrec.model.checkpoint import save_checkpoint
    from streamrec.model.train import TrainSettings, train

    res = train(
        tiny_data,
        item_text=tiny_text,
        config=TINY_CONFIG,
        settings=TrainSettings(max_epochs=3, device="cpu", progress=False, batch_size=32),
    )
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(res.model, res.vocab, out, metrics=res.metrics, train_settings=res.settings)
    return out
