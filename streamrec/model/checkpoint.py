"""Checkpoint directory layout, writing and (never-unpickling) loading.

A checkpoint is a directory:

- ``config.json`` + ``model.safetensors``: written by ``SASRec.save_pretrained``
- ``item_map.json``: external item id (str) -> row (1..n), row 0 is PAD
- ``text_emb.safetensors``: the cached MiniLM title embedding of every row, (n+1, 384), so that
  loading never re-encodes the catalog
- ``metrics.json`` and ``train_settings.json``: what training measured and how it was run
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from streamrec.errors import CheckpointError
from streamrec.fsutil import atomic_write, atomic_write_text
from streamrec.model.data import ItemVocab
from streamrec.model.sasrec import SASRec, SASRecConfig
from streamrec.model.transitions import FILE as TRANSITIONS
from streamrec.model.transitions import Transitions

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ITEM_MAP = "item_map.json"
TEXT_EMB = "text_emb.safetensors"
METRICS = "metrics.json"
TRAIN_SETTINGS = "train_settings.json"
REQUIRED = (CONFIG, WEIGHTS, ITEM_MAP, TEXT_EMB)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def save_checkpoint(
    model: SASRec,
    vocab: ItemVocab,
    out_dir: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(vocab) != model.config.n_items:
        raise ValueError(f"item map has {len(vocab)} items but the model {model.config.n_items}")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    vocab.save(out / ITEM_MAP)
    text_emb = model.text_emb.detach().cpu().contiguous()
    atomic_write(out / TEXT_EMB, lambda tmp: save_file({"text_emb": text_emb}, str(tmp)))
    table = model.transitions
    if table is not None:
        table.save(out)
    else:
        (out / TRANSITIONS).unlink(missing_ok=True)
    if metrics is not None:
        write_json(out / METRICS, metrics)
    if train_settings is not None:
        write_json(out / TRAIN_SETTINGS, train_settings)
    return out


def check_complete(path: str | Path, what: str = "checkpoint") -> Path:
    """``path`` as a Path if it is a directory with every required file; else CheckpointError
    naming the directory and what is missing (``what`` starts the message)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{what} {str(p)!r}: directory not found")
    missing = [f for f in REQUIRED if not (p / f).is_file()]
    if missing:
        raise CheckpointError(f"{what} {str(p)!r} is incomplete: missing {', '.join(missing)}")
    return p


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[SASRec, ItemVocab]:
    """Model (eval mode, on ``device``) and its item map. CheckpointError says what is wrong.

    Only JSON and safetensors are read: nothing is unpickled.
    """
    p = check_complete(path)
    try:
        cfg_dict = json.loads((p / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(p)!r}: unreadable {CONFIG}: {exc}") from None
    if cfg_dict.get("model_type") != SASRecConfig.model_type:
        raise CheckpointError(
            f"checkpoint {str(p)!r}: model_type {cfg_dict.get('model_type')!r} is not "
            f"{SASRecConfig.model_type!r} (incompatible checkpoint)"
        )
    # Checkpoints written before hybrid scoring existed have no such field: they score with
    # the id/text vectors alone (no text-similarity channel), exactly as when they were saved.
    cfg_dict.setdefault("hybrid", False)
    # ... and those written before text_sim_dim defaulted to 128 used the full title vector
    cfg_dict.setdefault("text_sim_dim", 0)
    # ... and those written before cosine scores were the default scored plain inner products
    cfg_dict.setdefault("cosine_scale", 0.0)
    try:
        config = SASRecConfig.from_dict(cfg_dict)
        vocab = ItemVocab.load(p / ITEM_MAP)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {str(p)!r}: bad config or item map: {exc}") from None
    if len(vocab) != config.n_items:
        raise CheckpointError(f"checkpoint {str(p)!r}: item map has {len(vocab)} items, config says {config.n_items}")
    try:
        state = load_file(str(p / WEIGHTS))
        text = load_file(str(p / TEXT_EMB))["text_emb"]
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {str(p)!r}: corrupt safetensors file: {exc}") from None
    try:
        model = SASRec(config)
        if config.hybrid and "text_mean" not in state:
            # written before the channel was centred: an uncentred channel, as when saved
            state["text_mean"] = torch.zeros(config.text_dim)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(p)!r}: weights do not fit the config: {exc}") from None
    if tuple(text.shape) != (config.n_items + 1, config.text_dim):
        raise CheckpointError(
            f"checkpoint {str(p)!r}: {TEXT_EMB} has shape {tuple(text.shape)}, "
            f"expected {(config.n_items + 1, config.text_dim)}"
        )
    model.text_emb = text.float()
    try:
        model.transitions = Transitions.load(p)  # optional (written since the sixteenth session)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {str(p)!r}: {exc}") from None
    if model.transitions is not None and model.transitions.n_items > config.n_items:
        raise CheckpointError(
            f"checkpoint {str(p)!r}: {TRANSITIONS} covers {model.transitions.n_items} items, "
            f"config says {config.n_items}"
        )
    return model.to(device).eval(), vocab


def read_metrics(path: str | Path) -> dict[str, Any]:
    f = Path(path) / METRICS
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except ValueError:
        return {}
