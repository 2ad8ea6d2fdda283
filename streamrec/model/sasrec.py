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
With ``cosine_scale`` s > 0 (the default) both are unit vectors before the user's is scaled by s,
so the score is ``s * cos(user, item)``: still one inner product, at a softmax temperature of 1/s.

Hybrid scoring (``hybrid=True``, the default of new models): a text-similarity channel is fused
into both vectors, so ONE inner product still scores everything (FAISS stays the only search):

    user_out = [ k_u * h_u ;  alpha(u) * unit(q_u) ; 1    ]
    item_out = [ v_i       ;  beta(i)  * unit(t_i) ; b(i) ]
    score    = k_u * h_u . v_i  +  alpha(u) * beta(i) * cos(q_u, t_i)  +  b(i)

``t_i`` is the item's MiniLM title vector, centred and reduced by a fixed linear basis
(``text_sim_dim`` principal directions of the served catalog's titles, see
:meth:`SASRec.set_text_basis`; 0 = the full 384-d vector), ``q_u`` the
recency-weighted mean (weight ``exp(-text_decay * age)``) of the history's title vectors, i.e. the
text-similarity baseline's user vector. The gates are learned, per item and per user:
``beta(i) = softplus(w . [1, new_i, log1p(count_i)])``, ``b(i) = w' . [same]``,
``alpha(u) = softplus(w'' . [1, share of new items in the history, log1p(history length)])``,
where ``count_i`` is how often the item occurs in the training data and ``new_i`` marks items
without a trained id (count 0, or the id dropped by ``id_dropout``/``shop_dropout`` in training),
so the loss itself teaches how much text similarity to trust for new items, new histories and
known ones. ``k_u`` (``trust_known_share``) is the share of the history's items that have a
trained id: a history of new items only (a whole new shop) is ranked by text similarity alone,
the model part counts in proportion to what it knows. The gates are fitted after the model
part, on held-out validation pairs (``TrainSettings.hybrid_fit="post"``, ``gate_data="val"``).
``shop_dropout`` drops every id of a batch (a whole new shop) so that the regime
"nothing is known" is trained too. Checkpoints without these fields load with ``hybrid=False``.

Event types (view / add_to_cart / remove_from_cart / purchase) DO enter the input through a small
learned embedding added to each position. Data without types (Amazon Beauty) is all ``view``,
where that embedding is a constant and changes nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Self

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedConfig, PreTrainedModel

from streamrec.model.text import TEXT_DIM
from streamrec.schemas import EVENT_TYPES

PAD_ID = 0  # padding row of every item tensor; real items are 1..n_items
MASK_ID = -1  # training input only (augmentation, streamrec.model.augment): a real position whose
# item is hidden: its vector is the table's row 0, which carries neither an id nor a title
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
    hybrid: bool = True  # fuse a gated text-similarity channel into user/item vectors (docstring)
    text_sim_dim: int = 192  # dims of that channel: the top r principal directions of the served
    # catalog's centred titles (0 = the full 384-d title vector). 192 (64+192+1 = 257-d vectors)
    # ranked a whole new shop above plain text similarity on every catalog measured (128 did not
    # on one of Beauty's three hidden shops); the full 449-d search costs ~1.7x more
    # (bench/RESULTS.md, "Hybrid scoring", "Zero-shot")
    text_decay: float = 0.7  # recency decay rate of the history's titles in the user's text
    # vector: weight exp(-text_decay * age), the newest item age 0 (0 = a plain mean)
    shop_dropout: float = 0.0  # prob. per training batch of dropping EVERY id (a whole new shop)
    trust_known_share: bool = True  # scale the user's model part by the share of the history's
    # items that have a trained id: a history of new items only is ranked by text similarity
    new_item_boost: float = 0.0  # served score offset for items without a trained id (an
    # exploration knob, not learned; 0 = the gates' own calibration)
    freq_mix: float = 0.0  # BSARec-style frequency branch, made causal: share alpha of each
    # block's update taken from a low-pass/high-pass filter of the sequence instead of attention
    # (0 = off, plain attention)
    freq_decay: float = 0.5  # the low-pass filter: recency-weighted mean of the positions so far,
    # weight exp(-freq_decay * age)
    freq_kernel: str = "exp"  # "exp" (above) or "fft": BSARec's own low pass, the lowest
    # freq_cutoff // 2 + 1 frequencies of an FFT over a window of max_len positions, as the
    # window's newest position sees it (one fixed causal kernel over the ages 0..max_len-1), or
    # "window": BSARec's filter as it is, every position seeing the whole window (not causal: a
    # position reads later items, so only the newest position may be trained and served; train
    # with TrainSettings(samples="prefixes"))
    freq_cutoff: int = 5  # BSARec's c (its Beauty setting)
    freq_beta: float = 0.0  # initial rescaling of the high-pass part (0: pure smoothing; BSARec
    # draws it around 1, which starts the branch as the identity)
    cosine_scale: float = 16.0  # > 0: item vectors (input and output, tied) are unit vectors and
    # a user's state is a unit vector times this scale, so a model score is scale * cosine (a
    # softmax temperature of 1 / scale); 0 = plain inner products of unnormalised vectors (the
    # default before; checkpoints without the field load with 0). 16 beat 10, 24 and 0 on Beauty's
    # validation split (bench/RESULTS.md, fourteenth session: cosine scores)
    label_smoothing: float = 0.0  # label smoothing of the full-softmax cross-entropy
    pos_mode: str = "right"  # how positions enter: "right", a learned embedding per distance from
    # the newest item of the whole input (SASRec's; an inner position of a training sequence then
    # sees other embeddings than the same history at serving time), "left" (counted from the
    # oldest item: every prefix reads as it would alone) or "relative" (no position embedding; a
    # learned attention bias per head and query-key distance: every prefix reads as it would
    # alone, and the newest item is always at distance 0)


def text_basis(emb: torch.Tensor, r: int, *, max_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The text channel's reduction fitted to title vectors ``emb`` (k, d): their centre (d,) and
    top ``r`` principal directions (d, r), float64. Rows of zeros (no title) are skipped; more
    than ``max_rows`` titles are thinned evenly. A catalog of k <= r titles spans at most k - 1
    directions once centred: those come first and keep every centred cosine among its titles
    exactly, the rest complete an orthonormal basis. Fewer than 2 titles: no centre and the first
    ``r`` unit vectors. (:meth:`SASRec.set_text_basis`; ``bench/text_similarity.py``.)"""
    d = emb.shape[1]
    src = emb[emb.abs().sum(1) > 0].to(torch.float64)
    if max_rows is not None and src.shape[0] > max_rows:
        src = src[torch.linspace(0, src.shape[0] - 1, max_rows, device=src.device).long()]
    mean = torch.zeros(d, dtype=torch.float64, device=src.device)
    basis = torch.eye(d, dtype=torch.float64, device=src.device)[:, :r]
    if src.shape[0] >= 2:
        mean = src.mean(0)
        centred = src - mean
        evals, evecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        if r < d:
            basis = evecs[:, torch.argsort(evals, descending=True)[:r]]
    return mean, basis


def _version(t: torch.Tensor) -> int:
    """In-place modification counter (-1 for inference-mode tensors, which have none)."""
    try:
        return int(t._version)
    except RuntimeError:
        return -1


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # pos_mode "relative": a learned bias per head and distance (query - key), 0 at init
        self.rel_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.max_len)) if cfg.pos_mode == "relative" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Attention of every position (or only the last one: (B, 1, d)) over the positions up to it."""
        B, T, d = x.shape  # (B, T, d)
        h = self.n_heads
        if last_only:
            q = F.linear(x[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d])  # (B, 1, d)
            k, v = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).split(d, dim=2)  # 2 x (B, T, d)
            mask = mask[:, :, -1:]  # (B, 1, 1, T)
        else:
            q, k, v = self.qkv(x).split(d, dim=2)  # 3 x (B, T, d)
        Tq = q.shape[1]
        q = q.view(B, Tq, h, d // h).transpose(1, 2)  # (B, h, Tq, d/h)
        k = k.view(B, T, h, d // h).transpose(1, 2)  # (B, h, T, d/h)
        v = v.view(B, T, h, d // h).transpose(1, 2)
        attn_mask = mask
        if self.rel_bias is not None:
            qpos = torch.arange(T - Tq, T, device=x.device)
            dist = (qpos[:, None] - torch.arange(T, device=x.device)[None, :]).clamp(0, self.rel_bias.shape[1] - 1)
            bias = self.rel_bias[:, dist]  # (h, Tq, T)
            attn_mask = bias[None].to(q.dtype).masked_fill(~mask, float("-inf"))  # (B, h, Tq, T)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, h, Tq, d/h)
        y = y.transpose(1, 2).contiguous().view(B, Tq, d)  # (B, Tq, d)
        return self.resid_dropout(self.proj(y))


class CausalFilter(nn.Module):
    """BSARec's frequency branch (Shin et al., AAAI 2024), causal: BSARec low-passes the whole
    sequence with an FFT, which lets every position see later ones; here the low pass ``LP`` is
    the recency-weighted mean of the positions up to t (weight exp(-decay * age), real items
    only), and the branch rescales what it removes, per dimension:
    ``LP(x) + beta * (x - LP(x)) - x``, beta learned (``freq_beta`` at init: 0 is pure smoothing,
    1 the identity). ``freq_kernel`` picks the low pass (see :class:`SASRecConfig`)."""

    kernel: torch.Tensor
    low_pass: torch.Tensor

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        if cfg.freq_kernel not in FREQ_KERNELS:
            raise ValueError(f"freq_kernel must be one of {FREQ_KERNELS}, got {cfg.freq_kernel!r}")
        self.decay = float(cfg.freq_decay)
        self.normalise = cfg.freq_kernel == "exp"
        self.window = cfg.freq_kernel == "window"
        age = torch.arange(cfg.max_len, dtype=torch.float32)
        kernel = torch.exp(-self.decay * age) if self.normalise else fft_kernel(cfg.max_len, cfg.freq_cutoff)
        self.register_buffer("kernel", kernel, persistent=False)  # (max_len,) weight by age
        # "window": the whole low-pass matrix (row t: what position t receives), not causal
        self.register_buffer("low_pass", fft_low_pass(cfg.max_len, cfg.freq_cutoff), persistent=False)
        self.beta = nn.Parameter(torch.full((cfg.d_model,), float(cfg.freq_beta)))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """(B, T, d) update, or only the last position's (B, 1, d)."""
        T = x.shape[1]
        age = torch.arange(T, device=x.device)
        q = age[-1:] if last_only else age  # (T',) the positions computed
        if self.window:  # the window of max_len positions ends at the newest item; its left part is padding
            real = mask[:, 0, -1:].to(x.dtype)  # (B, 1, T) the real items (the last row sees them all)
            w = self.low_pass[-T:, -T:][q].to(x.dtype) * real  # (B, T', T)
        else:
            diff = (q[:, None] - age[None, :]).clamp(min=0)  # (T', T)
            w = self.kernel[diff].to(x.dtype) * mask[:, 0, -q.shape[0] :].to(x.dtype)  # (B, T', T) causal real keys
        if self.normalise:
            w = w / w.sum(-1, keepdim=True)
        low = w @ x  # (B, T', d)
        x = x[:, -1:] if last_only else x
        return self.dropout(low + self.beta * (x - low) - x)


FREQ_KERNELS = ("exp", "fft", "window")


def fft_low_pass(window: int, cutoff: int) -> torch.Tensor:
    """BSARec's low pass over ``window`` positions as a matrix: ``low = M @ x``, (window, window)."""
    f = torch.fft.rfft(torch.eye(window), dim=0, norm="ortho")  # (window // 2 + 1, window)
    f[cutoff // 2 + 1 :] = 0
    return torch.fft.irfft(f, n=window, dim=0, norm="ortho")


def fft_kernel(window: int, cutoff: int) -> torch.Tensor:
    """BSARec's low pass (keep the lowest ``cutoff // 2 + 1`` frequencies of an orthonormal FFT
    over ``window`` positions) seen from the window's newest position: weight per age, (window,).
    With a zero-padded window, that position's output is exactly this causal kernel applied to
    the sequence, so every-position training reads each prefix as BSARec's last position does."""
    return fft_low_pass(window, cutoff)[-1].flip(0).contiguous()  # weight of the position ``age`` steps back


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2 / nanoGPT layout); with ``freq_mix`` > 0 the
    update mixes attention with a :class:`CausalFilter` (BSARec's "beyond self-attention")."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mix = float(cfg.freq_mix)
        self.filter = CausalFilter(cfg) if self.mix > 0 else None
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff),
            nn.GELU(),
            nn.Linear(cfg.d_ff, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """(B, T, d), or only the last position (B, 1, d): what a serving pass needs of the
        last block, at a fraction of the work (keys and values still read every position)."""
        h = self.ln_1(x)
        update = self.attn(h, mask, last_only=last_only)  # (B, T', d)
        if self.filter is not None:
            f = self.filter(h, mask, last_only=last_only)  # (B, T', d): it reads every position
            update = (1 - self.mix) * update + self.mix * f
        x = (x[:, -1:] if last_only else x) + update  # (B, T', d)
        x = x + self.mlp(self.ln_2(x))  # (B, T', d)
        return x


class SASRec(PreTrainedModel):
    """Causal transformer over item histories; scores items by inner product with the output."""

    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    main_input_name = "item_ids"
    text_emb: torch.Tensor  # a buffer (register_buffer below)
    #: item-to-item transitions added to the score (streamrec.model.transitions.Transitions, or
    #: None); not a weight: counted after training, saved beside the weights
    transitions: Any
    text_basis: torch.Tensor  # hybrid buffers (register_buffer below)
    text_mean: torch.Tensor
    item_count: torch.Tensor

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
        if cfg.pos_mode not in ("right", "left", "relative"):
            raise ValueError(f"pos_mode must be 'right', 'left' or 'relative', got {cfg.pos_mode!r}")
        self.pos_emb = nn.Embedding(cfg.max_len, d) if cfg.pos_mode != "relative" else None
        self.type_emb = nn.Embedding(cfg.n_event_types, d, padding_idx=0)
        self.emb_drop = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        # Frozen MiniLM title embeddings, one row per item (row 0 = PAD = zeros). Not a
        # parameter and not saved in model.safetensors: the checkpoint keeps them in its own
        # text-embedding cache file, so loading never re-encodes the catalog.
        self.register_buffer("text_emb", torch.zeros(cfg.n_items + 1, cfg.text_dim), persistent=False)
        self.transitions = None
        if not 0.0 <= cfg.cosine_scale <= 100.0:
            raise ValueError(f"cosine_scale must be in [0, 100], got {cfg.cosine_scale}")
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
        if not 0.0 <= cfg.freq_mix <= 1.0:
            raise ValueError(f"freq_mix must be in [0, 1], got {cfg.freq_mix}")
        if cfg.hybrid and not cfg.use_text:
            cfg.hybrid = False  # no titles, no text channel: an id-only model
        if cfg.hybrid:
            r = cfg.text_sim_dim or cfg.text_dim
            if not 0 < r <= cfg.text_dim:
                raise ValueError(f"text_sim_dim must be in 0..{cfg.text_dim}, got {cfg.text_sim_dim}")
            if not 0.0 <= cfg.text_decay <= 20.0:
                raise ValueError(f"text_decay must be in [0, 20], got {cfg.text_decay}")
            # Fixed reduction of the title vectors (set from the training catalog by
            # set_text_basis; identity-like until then) and per-row training counts. Both are
            # saved in model.safetensors.
            self.register_buffer("text_basis", torch.eye(cfg.text_dim)[:, :r].clone())
            self.register_buffer("text_mean", torch.zeros(cfg.text_dim))  # centre of the fitted titles
            self.register_buffer("item_count", torch.zeros(cfg.n_items + 1))
            self.gate_item = nn.Linear(3, 1)  # beta(i) = softplus(.)
            self.bias_item = nn.Linear(3, 1)  # b(i)
            self.gate_user = nn.Linear(3, 1)  # alpha(u) = softplus(.)
        self._low_cache: tuple | None = None
        self.post_init()
        if cfg.hybrid:
            self.reset_gates()

    # -- init ------------------------------------------------------------------------------------

    @property
    def needs_prefixes(self) -> bool:
        """True when a position's state reads later positions (``freq_kernel`` "window"): only
        the newest position of an input may then be trained on or served."""
        return self.config.freq_mix > 0 and self.config.freq_kernel == "window"

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

    @torch.no_grad()
    def reset_gates(self) -> None:
        """Gates start at alpha = beta = 1, b = 0 (softplus(0.5413) = 1)."""
        for lin in (self.gate_item, self.gate_user, self.bias_item):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.gate_item.bias.fill_(0.5413)
        self.gate_user.bias.fill_(0.5413)

    # -- item vectors ----------------------------------------------------------------------------

    @property
    def output_dim(self) -> int:
        """Size of the user and item vectors that are scored (and indexed)."""
        if not self.config.hybrid:
            return int(self.config.d_model)
        return int(self.config.d_model + self.text_basis.shape[1] + 1)

    def id_keep(self, n_rows: int) -> torch.Tensor | None:
        """Training-time id dropout mask (n_rows,) bool, True = id kept; None outside training."""
        if not self.training:
            return None
        dev = self.id_emb.weight.device
        if self.config.shop_dropout > 0 and float(torch.rand(())) < self.config.shop_dropout:
            return torch.zeros(n_rows, dtype=torch.bool, device=dev)
        if self.config.id_dropout > 0:
            return torch.rand(n_rows, device=dev) >= self.config.id_dropout
        return None

    def item_table(self, rows: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Input item vectors for ``rows`` (default: all rows incl. PAD). (N, d).

        In training each item's id embedding is dropped with prob. ``id_dropout`` (the same
        item is dropped everywhere in the batch), teaching the text path to stand alone;
        ``keep`` (N,) bool passes that mask in (``forward`` draws it once for both paths).
        """
        ids = self.id_emb.weight if rows is None else self.id_emb(rows)  # (N, d)
        if keep is None and rows is None:
            keep = self.id_keep(ids.shape[0])
        elif keep is None and self.training and self.config.id_dropout > 0:
            keep = torch.rand(ids.shape[0], device=ids.device) >= self.config.id_dropout
        if keep is not None:
            ids = ids * keep[:, None]
        if not self.config.use_text:
            return self.item_vec(ids, None)
        text = self.text_emb if rows is None else self.text_emb[rows]  # (N, text_dim)
        return self.item_vec(ids, self.text_proj(text))  # (N, d)

    def item_vec(self, ids: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        """An item's vector (k, d) from its id part (None: a new item, no id row) and its
        projected title ``text_proj(t)`` (None: an id-only model): their sum, a unit vector with
        ``cosine_scale``. Every item vector is made here (the table, a new item's, the gate fit's)."""
        parts = [p for p in (ids, text) if p is not None]
        vec = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return F.normalize(vec, dim=-1) if self.config.cosine_scale > 0 else vec

    def default_vector(self) -> torch.Tensor:
        """Output vector of an item with no text and no learned row. (output_dim,)

        Its model part is the text projection of zeros; with hybrid scoring its text part is
        zero and its bias that of a new item."""
        if not self.config.use_text:
            return torch.zeros(self.config.d_model, device=self.id_emb.weight.device)
        v = self.item_vec(None, self.text_proj.bias).detach().clone()
        if not self.config.hybrid:
            return v
        feat = torch.tensor([[1.0, 1.0, 0.0]], device=v.device)
        b = self.bias_item(feat).detach()[0]  # (1,)
        return torch.cat([v, torch.zeros(self.text_basis.shape[1], device=v.device), b])

    # -- the text-similarity channel (hybrid) ------------------------------------------------------

    #: Titles a basis fit reads at most (evenly spaced over the catalog): plenty for 384
    #: directions, and 77 MB of float32 titles at most for a million-item catalog.
    BASIS_FIT_ROWS = 50_000

    @torch.no_grad()
    def set_text_basis(self, rows: torch.Tensor | None = None, *, emb: torch.Tensor | None = None) -> None:
        """Fit the channel's reduction to a catalog: the centre and the top ``text_sim_dim``
        principal directions of the title vectors of ``rows`` (default: every row with text), or
        of the title vectors ``emb`` (k, text_dim) of the catalog being served (a whole new shop:
        its own titles). A title's channel vector is ``(t - centre) @ basis``.

        Centring removes what every title of the catalog shares ("a beauty product"), which
        otherwise dominates the cosine; on the catalogs measured it lifts plain text
        similarity by 2.6-12 % (``bench/text_similarity.py``). A catalog of fewer titles than
        directions keeps every centred cosine among its titles exactly (:func:`text_basis`);
        fewer than 2 titles: no fit, the identity and no centring."""
        if not self.config.hybrid:
            return
        src = emb if emb is not None else (self.text_emb[1:] if rows is None else self.text_emb[rows])
        mean, basis = text_basis(src.to(self.text_basis.device), self.text_basis.shape[1], max_rows=self.BASIS_FIT_ROWS)
        self.text_basis.copy_(basis.to(self.text_basis.dtype))
        self.text_mean.copy_(mean.to(self.text_mean.dtype))
        self._low_cache = None

    def reduce_text(self, emb: torch.Tensor) -> torch.Tensor:
        """Channel vectors (k, r) of title vectors ``emb`` (k, text_dim): centred and reduced by
        the fitted basis; rows without a title (zeros) stay zero."""
        emb = emb.to(self.text_basis.device, torch.float32)
        has = (emb.abs().sum(1, keepdim=True) > 0).to(emb.dtype)
        return ((emb - self.text_mean) @ self.text_basis) * has

    def text_low(self) -> torch.Tensor:
        """Reduced title vectors of all rows, (N+1, r); cached until the titles change."""
        key = (
            id(self.text_emb),
            _version(self.text_emb),
            self.text_emb.shape[0],
            self.text_emb.data_ptr(),
            id(self.text_basis),
            _version(self.text_basis),
            _version(self.text_mean),
        )
        if self._low_cache is None or self._low_cache[0] != key:
            with torch.no_grad():
                low = self.reduce_text(self.text_emb)  # (N+1, r)
            self._low_cache = (key, low)
        return self._low_cache[1]

    def item_new(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(N+1,) bool: rows without a trained id (count 0, or id dropped in this batch)."""
        new = self.item_count <= 0
        return new if keep is None else new | ~keep

    @torch.no_grad()
    def clear_new_ids(self) -> int:
        """Zero the id rows of the items with no training count (not PAD): such an item was in
        the vocabulary (a validation or test target, an item added from its title) but in no
        training sequence, so its id learned only "never the answer" as a negative of the
        softmax. Cleared, it is scored from its title alone, as an item added to the catalog later
        is (:meth:`grow`) and as the gates treat it. Returns how many rows were cleared."""
        if not self.config.hybrid:
            return 0
        new = self.item_new()
        new[0] = False
        self.id_emb.weight[new] = 0.0
        return int(new.sum())

    def item_gates(
        self, keep: torch.Tensor | None = None, *, serving: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """beta(i) and b(i) for every row, each (N+1,); ``serving`` adds ``new_item_boost`` to
        the new items' b (never in training or gate fitting)."""
        return self._gates(self.item_new(keep).float(), self.item_count, serving=serving)

    def _gates(self, new: torch.Tensor, count: torch.Tensor, *, serving: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """beta and b of items with new-flags ``new`` (k,) float and training counts (k,)."""
        feat = torch.stack([torch.ones_like(new), new, torch.log1p(count.clamp(min=0)) * (1 - new)], dim=1)  # (k, 3)
        b = self.bias_item(feat)[:, 0]
        if serving and self.config.new_item_boost:
            b = b + self.config.new_item_boost * new
        return F.softplus(self.gate_item(feat))[:, 0], b

    def output_table(
        self, table: torch.Tensor | None = None, keep: torch.Tensor | None = None, *, serving: bool = True
    ) -> torch.Tensor:
        """Scored item vectors of every row (N+1, output_dim): the input vectors, plus the gated
        text channel and the bias with hybrid scoring."""
        if table is None:
            table = self.item_table(keep=keep)
        if not self.config.hybrid:
            return table
        beta, b = self.item_gates(keep, serving=serving)
        unit = F.normalize(self.text_low(), dim=-1)  # (N+1, r) zero rows stay zero
        return torch.cat([table, beta[:, None] * unit, b[:, None]], dim=1)

    def text_part(self, low: torch.Tensor, new: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Hybrid part [beta(i) * unit(t_i) ; b(i)] (k, r + 1) of k items given their reduced
        titles ``low`` (k, r), new-flags (k,) bool and training counts (k,), as served (the
        rows of :meth:`output_table` after the input vector), without touching other rows."""
        beta, b = self._gates(new.float(), count.float(), serving=True)
        return torch.cat([beta[:, None] * F.normalize(low.float(), dim=-1), b[:, None]], dim=1)

    def user_text(
        self, item_ids: torch.Tensor, keep: torch.Tensor | None = None, *, last_only: bool = False
    ) -> torch.Tensor:
        """The user part of the text channel at every position, (B, T, r + 1) (or only after the
        last one, (B, 1, r + 1)): [alpha(u) * unit(recency-weighted mean of the titles) ; 1]."""
        alpha, qn, some, _ = self._user_text_parts(item_ids, keep, last_only=last_only)
        # No history yet (or a padded position): the zero vector, as the model part, so an
        # empty history still scores every item 0 (callers fall back to popularity).
        return torch.cat([alpha * qn, torch.ones_like(alpha)], dim=-1) * some

    def _user_text_parts(
        self,
        item_ids: torch.Tensor,
        keep: torch.Tensor | None = None,
        *,
        last_only: bool = False,
        low: torch.Tensor | None = None,
        new_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha (B, T', 1), unit text vector (B, T', r), has-history (B, T', 1) and the scale
        of the user's model part (B, T', 1): the share of known items in the history with
        ``trust_known_share``, else 1. ``low`` (rows, r) and ``new_rows`` (rows,) bool override
        the model's per-row reduced titles and new-flags (the serving cache's rows, which may
        outnumber the model's)."""
        table_low = self.text_low() if low is None else low
        T = item_ids.shape[1]
        valid = (item_ids != PAD_ID).float()  # (B, T)
        if last_only:
            # Only the newest items whose weight matters (decay ** age >= 1e-4 of the newest):
            # the same vector up to float rounding, at a fraction of the gather.
            decay = math.exp(-self.config.text_decay)  # weight factor per step of age
            horizon = T if decay >= 1.0 else min(T, int(math.log(1e-4) / math.log(decay)) + 1)
            ids_t = item_ids[:, T - horizon :]
            w = decay ** torch.arange(horizon - 1, -1, -1, device=item_ids.device, dtype=torch.float32)  # (horizon,)
            x = table_low[ids_t] * valid[:, T - horizon :, None]  # (B, horizon, r)
            q = torch.einsum("k,bkr->br", w.to(x.dtype), x)[:, None]  # (B, 1, r)
        else:
            x = table_low[item_ids] * valid[..., None]  # (B, T, r)
            age = torch.arange(T, device=item_ids.device)
            diff = (age[:, None] - age[None, :]).float()  # (T, T) query t, key k: t - k
            w = torch.where(diff >= 0, torch.exp(-self.config.text_decay * diff.clamp(min=0)), 0.0)
            q = torch.einsum("tk,bkr->btr", w.to(x.dtype), x)  # (B, T, r)
        new_flags = self.item_new(keep) if new_rows is None else new_rows
        new = new_flags.float()[item_ids] * valid  # (B, T)
        n_seen, n_new = valid.cumsum(1), new.cumsum(1)  # (B, T)
        if last_only:
            n_seen, n_new = n_seen[:, -1:], n_new[:, -1:]
        share_new = n_new / n_seen.clamp(min=1)
        feat = torch.stack([torch.ones_like(n_seen), share_new, torch.log1p(n_seen)], dim=-1)
        alpha = F.softplus(self.gate_user(feat))  # (B, T', 1)
        some = (n_seen > 0).to(alpha.dtype)[..., None]  # (B, T', 1)
        scale = (1 - share_new)[..., None] if self.config.trust_known_share else torch.ones_like(some)
        return alpha, F.normalize(q, dim=-1), some, scale

    def user_states(
        self,
        item_ids: torch.Tensor,
        type_ids: torch.Tensor | None,
        table: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scored user vectors at every position, (B, T, output_dim)."""
        h = self.encode(item_ids, type_ids, table)  # (B, T, d)
        if not self.config.hybrid:
            return h
        return self._fuse(h, item_ids, keep)

    def _fuse(
        self,
        h: torch.Tensor,
        item_ids: torch.Tensor,
        keep: torch.Tensor | None = None,
        *,
        last_only: bool = False,
        low: torch.Tensor | None = None,
        new_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[scale * h ; text channel] for hidden states h (B, T', d)."""
        alpha, qn, some, scale = self._user_text_parts(item_ids, keep, last_only=last_only, low=low, new_rows=new_rows)
        text = torch.cat([alpha * qn, torch.ones_like(alpha)], dim=-1) * some
        return torch.cat([h * scale, text], dim=-1)

    def user_vectors(
        self,
        item_ids: torch.Tensor,
        type_ids: torch.Tensor | None,
        table: torch.Tensor,
        *,
        low: torch.Tensor | None = None,
        new_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scored user vector after the whole (left-padded) history, (B, output_dim).
        ``low``/``new_rows``: see :meth:`_user_text_parts`."""
        h = self.encode(item_ids, type_ids, table, last_only=True)  # (B, 1, d)
        if not self.config.hybrid:
            return h[:, -1]
        return self._fuse(h, item_ids, last_only=True, low=low, new_rows=new_rows)[:, -1]

    # -- forward ---------------------------------------------------------------------------------

    def encode(
        self, item_ids: torch.Tensor, type_ids: torch.Tensor | None, table: torch.Tensor, *, last_only: bool = False
    ) -> torch.Tensor:
        """Hidden state at every position of LEFT-padded histories, (B, T, d); with
        ``last_only`` only after the whole history, (B, 1, d) (the last block computes nothing else).

        Position embeddings count from the right (the newest item always gets the same one), so
        a history padded to any length gives the same output.
        """
        _, T = item_ids.shape
        assert T <= self.config.max_len, "history longer than max_len"  # noqa: SIM300 - T is a shape letter
        masked = item_ids == MASK_ID  # (B, T) hidden items (training augmentation): row 0, but real
        item_ids = item_ids.masked_fill(masked, PAD_ID)
        valid = (item_ids != PAD_ID) | masked  # (B, T)
        x = table[item_ids]  # (B, T, d)
        if type_ids is None:
            type_ids = torch.full_like(item_ids, EVENT_TYPE_IDS[DEFAULT_EVENT_TYPE])
        x = x + self.type_emb(type_ids * valid)  # (B, T, d)
        if self.pos_emb is not None and self.config.pos_mode == "left":
            pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, T) from the oldest item
            x = x + self.pos_emb(pos)  # (B, T, d)
        elif self.pos_emb is not None:
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
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and i == n - 1)  # (B, T', d)
            x = x * valid[:, -x.shape[1] :, None]  # padding zeroed
        if last_only and n == 0:
            x = x[:, -1:]
        x = self.ln_f(x)
        if self.config.cosine_scale > 0:
            x = F.normalize(x, dim=-1) * self.config.cosine_scale
        return x * valid[:, -x.shape[1] :, None]  # (B, T', d)

    def forward(
        self,
        item_ids: torch.Tensor,
        type_ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        text_channel: bool | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``item_ids`` (B, T) left-padded rows; ``targets`` (B, T) the next row at each position
        (PAD where there is none). Returns (hidden (B, T, d), mean cross-entropy or None).
        The loss scores the full user states (:meth:`user_states`) against
        :meth:`output_table`, or (``text_channel=False``) the hidden states against the input
        item table alone (the model part; the gates are then fitted afterwards).
        ``last_only``: only the newest position is computed and trained (hidden (B, 1, d); the
        targets must then be PAD everywhere else), as for one (prefix, next item) pair per row."""
        keep = self.id_keep(self.id_emb.weight.shape[0])
        table = self.item_table(keep=keep)  # (N+1, d)
        if self.needs_prefixes and targets is not None and not last_only:
            raise ValueError("freq_kernel 'window' reads later positions: train on prefixes (last_only)")
        h = self.encode(item_ids, type_ids, table, last_only=last_only)  # (B, T', d)
        if targets is None:
            return h, None
        if last_only:
            if bool((targets[:, :-1] != PAD_ID).any()):
                raise ValueError("last_only trains the newest position only: the other targets must be PAD")
            h = torch.cat([h.new_zeros(h.shape[0], targets.shape[1] - 1, h.shape[2]), h], dim=1)  # (B, T, d)
        item_ids = item_ids.masked_fill(item_ids == MASK_ID, PAD_ID)  # hidden items carry no title
        sel = targets != PAD_ID  # (B, T)
        y = targets[sel]  # (M,)
        channel = self.config.hybrid if text_channel is None else (text_channel and self.config.hybrid)
        if self.config.loss == "full" and channel:
            # The same scores as user_states . output_table, computed without the (M, N, 384)
            # work in autograd: the cosine part has no trainable input, only its gates do.
            alpha, qn, some, scale = self._user_text_parts(item_ids, keep)
            alpha, some = alpha[sel], some[sel]  # (M, 1); targets sit after >= 1 real item
            beta, b = self.item_gates(keep, serving=not self.training)  # (N+1,)
            with torch.no_grad():
                cos = qn[sel] @ F.normalize(self.text_low(), dim=-1)[1:].T  # (M, N)
            logits = (h[sel] * scale[sel]) @ table[1:].T + some * (alpha * cos * beta[1:] + b[1:])  # (M, N)
            return h, F.cross_entropy(logits, y - 1, label_smoothing=self.config.label_smoothing)
        u = h if not channel else self._fuse(h, item_ids, keep)
        out = self.output_table(table, keep, serving=not self.training) if channel else table
        h_sel = u[sel]  # (M, D)
        if self.config.loss == "full":
            logits = h_sel @ out[1:].T  # (M, N) PAD row excluded
            loss = F.cross_entropy(logits, y - 1, label_smoothing=self.config.label_smoothing)
        elif self.config.loss == "sampled":
            loss = self._sampled_loss(h_sel, y, out)
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
        if self.config.hybrid:  # new rows: no training count (a new item)
            counts = self._storage("_count_store", self.item_count, need)
            counts[n1:need] = 0.0
            self.item_count = counts[:need]
        self.config.n_items += k

    rows_copied: int = 0  # rows moved by capacity growth (the linear-growth test counts them)

    def _storage(self, attr: str, used: torch.Tensor, need: int) -> torch.Tensor:
        """Backing storage with room for ``need`` rows whose first rows are ``used`` (a view)."""
        store: torch.Tensor | None = getattr(self, attr, None)
        shares = (
            store is not None
            and store.device == used.device
            and store.dtype == used.dtype
            and store.data_ptr() == used.data_ptr()
            and store.shape[1:] == used.shape[1:]
        )
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
