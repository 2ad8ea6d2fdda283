"""SASRec-style causal transformer for next-item recommendation, as a Hugging Face model.

Read it like nanoGPT: a config with one comment per field, small modules, shape comments, and
``forward`` returning ``(hidden, loss)``. The model is a :class:`transformers.PreTrainedModel`, so
``save_pretrained`` writes ``config.json`` + ``model.safetensors`` and ``from_pretrained`` reads
them back (``streamrec.model.checkpoint`` adds the item map and the text-embedding cache).

Ids: ``PAD_ID = 0``; items are rows ``1..n_items``. An item's vector is

    item_vec(i) = id_emb[i] + text_proj(text_emb[i])

where ``text_emb`` is the frozen MiniLM embedding of the item's title (zeros when it has none).
Items new to the model get ``id_emb = 0``, so their vector is the text projection alone
(zero-shot cold start); an item with neither text nor history gets ``text_proj(0)`` = the
projection bias, the defined default vector. During training the id part of each item is dropped
with probability ``id_dropout`` so that the text path alone already ranks items well.

The same item table embeds the input sequence and scores the next item (tied weights), so a
user's vector is the last hidden state and a score is the inner product ``user_vec . item_vec``.

Event types (view / add_to_cart / remove_from_cart / purchase) DO enter the input through a small
learned embedding added to each position. Data without types (Amazon Beauty) is all ``view``,
where that embedding is a constant and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedConfig, PreTrainedModel

from streamrec.model.text import TEXT_DIM
from streamrec.schemas import EVENT_TYPES

PAD_ID = 0  # padding row of every item tensor; real items are 1..n_items
EVENT_TYPE_IDS: dict[str, int] = {t: i + 1 for i, t in enumerate(EVENT_TYPES)}  # 0 = padding
DEFAULT_EVENT_TYPE = "view"  # type assumed for data that has none


class SASRecConfig(PreTrainedConfig):
    """Hyperparameters. Stored as ``config.json`` beside the weights."""

    model_type = "streamrec-sasrec"

    n_items: int = 1  # real items in the vocabulary (rows 1..n_items; row 0 is PAD)
    max_len: int = 50  # longest history the model reads; older items are dropped
    d_model: int = 64  # width d of every vector: items, positions, hidden states, user vector
    n_layers: int = 1  # transformer blocks (1 beat 2 on Beauty's validation split: short histories)
    n_heads: int = 1  # attention heads per block (d_model % n_heads == 0)
    d_ff: int = 256  # hidden width of each block's MLP
    dropout: float = 0.2  # dropout inside the blocks (attention probs, residual branches)
    emb_dropout: float = 0.5  # dropout on the input embeddings (strong: Beauty is sparse)
    id_dropout: float = 0.1  # prob. of dropping an item's id embedding in training (text carries it)
    use_text: bool = True  # add the projected MiniLM title embedding to each item's vector
    text_dim: int = TEXT_DIM  # size of the frozen text embeddings fed to the projection
    n_event_types: int = len(EVENT_TYPES) + 1  # event-type vocabulary incl. padding 0
    init_std: float = 0.02  # std of the normal init (small: large init stalls softmax training)
    loss: str = "full"  # "full" softmax over all items, or "sampled" (shared uniform negatives)
    n_negatives: int = 4096  # negatives per batch when loss == "sampled"


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape  # (B, T, d)
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 x (B, T, d)
        q = q.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, h, T, d/h)
        k = k.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, h, T, d/h)
        y = y.transpose(1, 2).contiguous().view(B, T, d)  # (B, T, d)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2 / nanoGPT layout)."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff),
            nn.GELU(),
            nn.Linear(cfg.d_ff, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)  # (B, T, d)
        x = x + self.mlp(self.ln_2(x))  # (B, T, d)
        return x


class SASRec(PreTrainedModel):
    """Causal transformer over item histories; scores items by inner product with the output."""

    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    main_input_name = "item_ids"
    text_emb: torch.Tensor  # a buffer (register_buffer below)

    if TYPE_CHECKING:
        # transformers types PreTrainedModel.to through functools.wraps(nn.Module.to), which mypy
        # reads as taking a PreTrainedModel argument; the real signature is nn.Module.to's.
        def to(self, *args: Any, **kwargs: Any) -> Self: ...  # type: ignore[override]

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__(config)
        cfg = config
        d = cfg.d_model
        self.id_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=PAD_ID)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.type_emb = nn.Embedding(cfg.n_event_types, d, padding_idx=0)
        self.emb_drop = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        # Frozen MiniLM title embeddings, one row per item (row 0 = PAD = zeros). Not a
        # parameter and not saved in model.safetensors: the checkpoint keeps them in its own
        # text-embedding cache file, so loading never re-encodes the catalog.
        self.register_buffer("text_emb", torch.zeros(cfg.n_items + 1, cfg.text_dim), persistent=False)
        self.post_init()

    # -- init ------------------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- item vectors ----------------------------------------------------------------------------

    def item_table(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors for ``rows`` (default: all rows incl. PAD). (N, d).

        In training each item's id embedding is dropped with prob. ``id_dropout`` (the same
        item is dropped everywhere in the batch), teaching the text path to stand alone.
        """
        ids = self.id_emb.weight if rows is None else self.id_emb(rows)  # (N, d)
        if self.training and self.config.id_dropout > 0:
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.config.id_dropout
            ids = ids * keep
        if not self.config.use_text:
            return ids
        text = self.text_emb if rows is None else self.text_emb[rows]  # (N, text_dim)
        return ids + self.text_proj(text)  # (N, d)

    def default_vector(self) -> torch.Tensor:
        """Vector of an item with no text and no learned row: the text projection of zeros. (d,)"""
        if not self.config.use_text:
            return torch.zeros(self.config.d_model, device=self.id_emb.weight.device)
        return self.text_proj.bias.detach().clone()

    # -- forward ---------------------------------------------------------------------------------

    def encode(
        self, item_ids: torch.Tensor, type_ids: torch.Tensor | None, table: torch.Tensor
    ) -> torch.Tensor:
        """Hidden state at every position of LEFT-padded histories. (B, T, d).

        Position embeddings count from the right (the newest item always gets the same one), so
        a history padded to any length gives the same output.
        """
        _, T = item_ids.shape
        assert T <= self.config.max_len, "history longer than max_len"  # noqa: SIM300 - T is a shape letter
        valid = item_ids != PAD_ID  # (B, T)
        x = table[item_ids]  # (B, T, d)
        if type_ids is None:
            type_ids = torch.full_like(item_ids, EVENT_TYPE_IDS[DEFAULT_EVENT_TYPE])
        x = x + self.type_emb(type_ids * valid)  # (B, T, d)
        pos = torch.arange(self.config.max_len - T, self.config.max_len, device=item_ids.device)
        x = x + self.pos_emb(pos)[None]  # (B, T, d)
        x = self.emb_drop(x) * valid[..., None]  # (B, T, d) padding zeroed
        # Attention mask: causal AND key is a real item, OR the diagonal. The diagonal keeps
        # every row (also fully padded ones) with at least one key, so softmax never sees an
        # all -inf row and no NaN can appear; padded outputs are zeroed after every block.
        causal = torch.ones(T, T, dtype=torch.bool, device=item_ids.device).tril()  # (T, T)
        eye = torch.eye(T, dtype=torch.bool, device=item_ids.device)
        mask = (causal[None] & valid[:, None, :]) | eye[None]  # (B, T, T)
        mask = mask[:, None]  # (B, 1, T, T) broadcast over heads
        for block in self.blocks:
            x = block(x, mask) * valid[..., None]  # (B, T, d)
        return self.ln_f(x) * valid[..., None]  # (B, T, d)

    def forward(
        self,
        item_ids: torch.Tensor,
        type_ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``item_ids`` (B, T) left-padded rows; ``targets`` (B, T) the next row at each position
        (PAD where there is none). Returns (hidden (B, T, d), mean cross-entropy or None)."""
        table = self.item_table()  # (N+1, d)
        h = self.encode(item_ids, type_ids, table)  # (B, T, d)
        if targets is None:
            return h, None
        sel = targets != PAD_ID  # (B, T)
        h_sel = h[sel]  # (M, d)
        y = targets[sel]  # (M,)
        if self.config.loss == "full":
            logits = h_sel @ table[1:].T  # (M, N) PAD row excluded
            loss = F.cross_entropy(logits, y - 1)
        elif self.config.loss == "sampled":
            loss = self._sampled_loss(h_sel, y, table)
        else:
            raise ValueError(f"unknown loss {self.config.loss!r}: use 'full' or 'sampled'")
        return h, loss

    def _sampled_loss(self, h: torch.Tensor, y: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Softmax over the positive plus shared uniform negatives (for very large catalogs).

        Uniform sampling has a constant logQ, so no correction is needed; accidental hits
        (a negative equal to the positive) are masked out.
        """
        n = self.config.n_items
        neg = torch.randint(1, n + 1, (self.config.n_negatives,), device=h.device)  # (K,)
        pos_logit = (h * table[y]).sum(-1, keepdim=True)  # (M, 1)
        neg_logit = h @ table[neg].T  # (M, K)
        neg_logit = neg_logit.masked_fill(neg[None, :] == y[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # (M, 1+K)
        return F.cross_entropy(logits, torch.zeros_like(y))

    # -- growing the vocabulary -------------------------------------------------------------------

    @torch.no_grad()
    def grow(self, text_emb: torch.Tensor) -> None:
        """Append ``len(text_emb)`` new items (rows n_items+1..). Old rows are kept; new id rows
        start at zero, so a new item's vector starts as its text projection.

        Amortised: ``id_emb.weight`` and ``text_emb`` are views of the first ``n_items + 1`` rows
        of larger storage that doubles when full, so loading N items in batches copies O(N)
        rows in all, not O(N^2). The views hold exactly the used rows, so ``state_dict`` and
        checkpoints never contain spare capacity. ``rows_copied`` counts the rows moved.
        """
        k = text_emb.shape[0]
        if k == 0:
            return
        n1 = int(self.config.n_items) + 1  # used rows incl. PAD
        need = n1 + k
        ids = self._storage("_id_store", self.id_emb.weight.data, need)
        text = self._storage("_text_store", self.text_emb, need)
        ids[n1:need] = 0.0
        text[n1:need] = text_emb.to(text.device, text.dtype)
        self.id_emb.weight.data = ids[:need]
        self.id_emb.num_embeddings = need
        self.text_emb = text[:need]
        self.config.n_items += k

    rows_copied: int = 0  # rows moved by capacity growth (the linear-growth test counts them)

    def _storage(self, attr: str, used: torch.Tensor, need: int) -> torch.Tensor:
        """Backing storage with room for ``need`` rows whose first rows are ``used`` (a view)."""
        store: torch.Tensor | None = getattr(self, attr, None)
        shares = (store is not None and store.device == used.device and store.dtype == used.dtype
                  and store.data_ptr() == used.data_ptr() and store.shape[1:] == used.shape[1:])
        if shares and store is not None and store.shape[0] >= need:
            return store
        cap = max(need, 2 * used.shape[0], 64)
        # torch.empty: spare rows are untouched pages, so they cost address space, not RSS.
        store = torch.empty((cap, *used.shape[1:]), dtype=used.dtype, device=used.device)
        store[: used.shape[0]] = used
        self.rows_copied += used.shape[0]
        object.__setattr__(self, attr, store)  # plain attribute: not a buffer, never saved
        return store

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

