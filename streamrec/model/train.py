"""Training and fine-tuning with validation-based early stopping (Python API; the CLI wraps it).

>>> from streamrec.model.data import read_sequences, read_item_text           # doctest: +SKIP
>>> res = train(read_sequences("seq.txt"), item_text=read_item_text("t.tsv"),  # doctest: +SKIP
...             settings=TrainSettings(time_budget=600))
>>> res.metrics["test"]["ndcg@10"]                                              # doctest: +SKIP

Split: leave-one-out per user (last item = test, second last = validation, the rest trains).
With ``TrainSettings(val_users=N)`` only N random users keep their second-last item for
validation and everyone else trains on it too (the test split is unchanged).
Every epoch the validation NDCG@10 (full ranking) is measured; the best epoch's weights are kept
and training stops after ``patience`` epochs without gain, at ``max_epochs`` or when the time
budget is spent. The test split is only measured once, at the end: never tune on it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from streamrec.model.augment import Augmenter, info_nce
from streamrec.model.data import (
    Encoded,
    Interactions,
    ItemVocab,
    Split,
    ViewPair,
    contrastive_batches,
    encode,
    history_batch,
    leave_one_out,
    prefix_batches,
    prefix_count,
    training_batches,
    vocab_from,
)
from streamrec.model.evaluate import evaluate_model, fit_transition_weight
from streamrec.model.sasrec import SASRec, SASRecConfig
from streamrec.model.text import TEXT_DIM, TextEncoder, resolve_device
from streamrec.model.textcache import TextCache
from streamrec.model.transitions import Transitions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """How to train (the model's shape lives in :class:`SASRecConfig`)."""

    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay (not on norms/biases)
    batch_size: int = 128  # users per step
    max_epochs: int = 40  # hard stop; also the length of the cosine schedule (without a budget)
    patience: int = 10  # epochs without a validation NDCG@10 gain before stopping
    time_budget: float | None = None  # seconds for the whole run (training + validation)
    seed: int = 0  # seeds torch and numpy for a repeatable run
    device: str = "auto"  # "auto" (CUDA if present), "cpu" or "cuda"
    progress: bool = True  # tqdm progress bar per epoch
    text_cache: str | None = None  # optional text-cache directory (RocksDB) shared with the worker
    eval_batch_size: int = 512  # users per validation batch
    val_users: int | None = None  # None: every user's 2nd-last item validates (classic split);
    # N: only N random users validate, the others also train on their 2nd-last item
    lr_schedule: str = "cosine"  # "cosine": decay to lr * min_lr_ratio over the run, or "constant";
    # the run's length is max_epochs or the time budget, whichever runs out first, so a budgeted
    # run also ends annealed (chosen on Beauty's validation split: bench/RESULTS.md)
    min_lr_ratio: float = 0.05  # floor of the cosine schedule, as a fraction of lr
    warmup_steps: int = 0  # linear warm-up steps before the schedule
    # Hybrid scoring (SASRecConfig.hybrid): "post" trains the model part with the plain loss
    # (and validates on it), then fits only the channel's gates (fit_gates) on the training
    # split; "joint" has the text channel in the loss from the first step (about twice the
    # cost per epoch on CPU).
    hybrid_fit: str = "post"
    gate_epochs: float = 4.0  # passes over the gate-fit data ("post"; 4 x 44 steps on Beauty val)
    gate_lr: float = 0.05  # Adam learning rate of the gates
    gate_positions: int = 512  # sampled target positions per batch in the gate fit
    gate_shop_dropout: float = 0.2  # share of gate-fit batches with every id dropped (new shop)
    gate_data: str = "val"  # fit the gates on the validation pairs (held out from the model
    # part: an honest calibration; chosen on validation, see bench/RESULTS.md) or on "train"
    gate_catalog_max: int = 20_000  # the serving catalog's items without a row (a titled item
    # of item_text that no training sequence holds) join the gate fit's candidates as new items,
    # as the worker's index will rank them: at most this many, sampled, their logits corrected
    # by log(all / sampled) (0 = none)
    train_on_last: bool = False  # also train on each user's last item (the caller holds out its
    # own test set, as the retraining gate does); no "test" metrics are reported then
    # Sequence data augmentation (CL4SRec's operators, applied to training sequences; see
    # streamrec.model.augment): a comma list of "crop", "mask", "reorder" ("" = off). Each
    # training sequence is augmented with prob. augment_prob, by ONE operator drawn uniformly from
    # the list; off by default (Beauty's validation split: bench/RESULTS.md, "Data augmentation").
    augment: str = ""
    augment_prob: float = 0.5  # share of the training sequences augmented in each epoch
    augment_crop: float = 0.6  # crop: keep a random contiguous share eta of the sequence
    augment_mask: float = 0.3  # mask: hide a share gamma of the input items (no id, no text)
    augment_reorder: float = 0.6  # reorder: shuffle a random contiguous share beta
    # Contrastive term (CL4SRec): weight lambda of an NT-Xent loss between the user states (last
    # position) of two augmented views of each sequence's input, views made by augment's operators
    # (all three when augment is ""); 0 = off (the default: 0.1 lost 30 % of Beauty validation
    # NDCG@10 over 10 epochs, bench/RESULTS.md)
    contrastive: float = 0.0
    contrastive_temp: float = 1.0  # temperature of the dot-product similarity
    samples: str = "positions"  # "positions": every position of a sequence predicts the next
    # item (SASRec's); "prefixes": one (prefix, next item) pair per row, only the newest position
    # trained (BSARec's, S3-Rec's; always, for a model with SASRecConfig.freq_kernel "window";
    # behind "positions" on Beauty's validation split, bench/RESULTS.md)
    ema: float = 0.0  # decay of an exponential moving average of the weights, updated every
    # step; validation, early stopping and the result use the averaged weights (0 = off)
    # Item-to-item transitions (streamrec.model.transitions): after training, count what followed
    # each item in the training part (within transitions_window steps, the transitions_top_m
    # heaviest per item) and choose the weight of their term on the validation pairs (0 when none
    # helps; no validation pairs: not served). Off by default: the term lifts Beauty's test NDCG@10
    # by 6.9 %, but it ranks the items it knows followers of above new catalog items, and a new
    # item related to a user's history then leaves her top 10 (the worker's zero-shot drill), so a
    # shop turns it on where its catalog is stable; on the simulator's shop every weight lowered
    # validation and 0 was chosen (bench/RESULTS.md, sixteenth session).
    transitions: bool = False
    transitions_window: int = 3
    transitions_top_m: int = 50


@dataclass
class TrainResult:
    model: SASRec
    vocab: ItemVocab
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def item_text_matrix(
    vocab: ItemVocab,
    item_text: dict[str, str | None],
    ids: list[str] | None = None,
    *,
    encoder: TextEncoder | None = None,
    cache_file: str | Path | None = None,
    device: str = "auto",
    cache: TextCache | None = None,
) -> torch.Tensor:
    """MiniLM vectors of ``ids`` (default: all vocab items), zeros for items without text.

    Titles go through the shared text cache: ``cache``, else the directory ``cache_file``
    (opened for this call), else an in-memory one."""
    keys: Sequence[str | None] = vocab.ids if ids is None else ids  # freed vocab rows hold None
    texts = [item_text.get(i) if i is not None else None for i in keys]
    if not any(texts):
        return torch.zeros(len(keys), TEXT_DIM)
    if cache is not None:
        return torch.from_numpy(cache.encode(texts))
    enc = encoder or TextEncoder(device=device)
    with TextCache(Path(cache_file) if cache_file else None, encoder=enc) as c:
        return torch.from_numpy(c.encode(texts))


def fit_catalog_basis(
    model: SASRec,
    vocab: ItemVocab,
    item_text: dict[str, str | None],
    ids: Sequence[str | None] | None = None,
    *,
    cache_file: str | Path | None = None,
    device: str = "auto",
    cache: TextCache | None = None,
) -> int:
    """Fit the text channel's centre and directions (:meth:`SASRec.set_text_basis`) to the titles
    of the catalog that will be served: ``ids`` (default: the vocabulary and every item of
    ``item_text``). Titles the model holds are read from it, the others through the text cache.
    Returns the number of titles the fit read (0 without a hybrid model)."""
    if not model.config.hybrid:
        return 0
    keys = list(dict.fromkeys(i for i in ([*vocab.ids, *item_text] if ids is None else ids) if i is not None))
    titled = (model.text_emb.abs().sum(1) > 0).cpu().numpy()  # (N+1,) rows with a title
    keys = [i for i in keys if (i in vocab and titled[vocab.row(i)]) or item_text.get(i)]
    if len(keys) > SASRec.BASIS_FIT_ROWS:  # evenly spaced: bounded memory and title encoding
        keys = [keys[k] for k in np.linspace(0, len(keys) - 1, SASRec.BASIS_FIT_ROWS).astype(np.int64)]
    rows = [vocab.row(i) for i in keys if i in vocab]
    extra = [i for i in keys if i not in vocab]  # titled (filtered above), not in the model yet
    parts = [model.text_emb[torch.tensor(rows, dtype=torch.long, device=model.text_emb.device)].float().cpu()]
    if extra:
        parts.append(
            item_text_matrix(vocab, item_text, extra, cache_file=cache_file, device=device, cache=cache).float()
        )
    model.set_text_basis(emb=torch.cat(parts))  # (it skips any title that embeds to zeros)
    return len(keys)


def catalog_candidates(
    model: SASRec,
    vocab: ItemVocab,
    item_text: dict[str, str | None] | None,
    settings: TrainSettings,
    *,
    cache: TextCache | None = None,
) -> tuple[torch.Tensor | None, int]:
    """The serving catalog's titled items without a row in ``model`` (in ``item_text``, not in
    ``vocab``): the title vectors of at most ``settings.gate_catalog_max`` of them (a seeded
    sample: only those are embedded) and how many there are, for :func:`fit_gates`. (None, 0)
    without a hybrid model or such items."""
    if not model.config.hybrid or not item_text or settings.gate_catalog_max <= 0:
        return None, 0
    extra = [i for i, t in item_text.items() if t and i not in vocab]
    if not extra:
        return None, 0
    total = len(extra)
    if total > settings.gate_catalog_max:
        pick = np.random.default_rng(settings.seed).choice(total, settings.gate_catalog_max, replace=False)
        extra = [extra[k] for k in np.sort(pick)]
    emb = item_text_matrix(vocab, item_text, extra, cache_file=settings.text_cache, device=settings.device, cache=cache)
    return emb.float(), total


@torch.no_grad()
def _swap_weights(params: list[torch.nn.Parameter], values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Load ``values`` into ``params``; returns the values they held."""
    old = [p.detach().clone() for p in params]
    for p, v in zip(params, values, strict=True):
        p.copy_(v)
    return old


def _optimizer(model: SASRec, s: TrainSettings) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _name, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr,
        betas=(0.9, 0.98),
    )


def lr_at(s: TrainSettings, step: int, progress: float) -> float:
    """Learning rate at optimiser ``step`` with ``progress`` in [0, 1] of the run."""
    lr = s.lr
    if s.lr_schedule == "cosine":
        p = min(max(progress, 0.0), 1.0)
        lr = s.lr * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))
    elif s.lr_schedule != "constant":
        raise ValueError(f"unknown lr_schedule {s.lr_schedule!r}: use 'constant' or 'cosine'")
    if s.warmup_steps > 0 and step < s.warmup_steps:
        lr *= (step + 1) / s.warmup_steps
    return lr


def fit(
    model: SASRec,
    vocab: ItemVocab,
    data: Interactions,
    settings: TrainSettings,
    *,
    catalog_text: torch.Tensor | None = None,
    catalog_total: int | None = None,
) -> TrainResult:
    """The training loop shared by :func:`train` and :func:`finetune`. ``catalog_text`` (k,
    text_dim): title vectors of (a sample of ``catalog_total``) serving-catalog items that have no
    row in the model, new candidates of the hybrid gate fit (:func:`fit_gates`,
    :func:`catalog_candidates`)."""
    s = settings
    t0 = time.monotonic()
    dev = resolve_device(s.device)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    model.to(dev)
    model.transitions = None  # a warm start's table counted other data: rebuilt below
    split = leave_one_out(encode(data, vocab), val_users=s.val_users, seed=s.seed, train_on_last=s.train_on_last)
    if model.config.hybrid:  # what the model trains on: its items are "known" from now on
        rows = torch.as_tensor([i for seq in split.train.items for i in seq], dtype=torch.long)
        counts = torch.bincount(rows, minlength=model.item_count.shape[0])[: model.item_count.shape[0]]
        model.item_count += counts.to(model.item_count.device, model.item_count.dtype)
    opt = _optimizer(model, s)
    has_val = len(split.val_targets) > 0
    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    stop_reason = "max_epochs"
    n_batches = math.ceil(sum(len(x) >= 2 for x in split.train.items) / s.batch_size)
    lr_at(s, 0, 0.0)  # validates lr_schedule before any work
    augment = Augmenter.from_settings(s)  # validates the augmentation settings too
    views = Augmenter.views_from_settings(s)
    if s.samples not in ("positions", "prefixes"):
        raise ValueError(f"unknown samples {s.samples!r}: use 'positions' or 'prefixes'")
    # a model whose positions read later ones (freq_kernel "window") only ever trains on prefixes,
    # also when a fine-tune (the trainer's rounds) asks for the default
    prefixes = s.samples == "prefixes" or model.needs_prefixes
    if prefixes:
        if augment is not None or views is not None:
            raise ValueError("training on prefixes takes no augmentation or contrastive term")
        n_batches = math.ceil(prefix_count(split.train) / s.batch_size)
    if s.hybrid_fit not in ("post", "joint"):
        raise ValueError(f"unknown hybrid_fit {s.hybrid_fit!r}: use 'post' or 'joint'")
    post = model.config.hybrid and s.hybrid_fit == "post"  # channel fitted after the model part
    if not 0.0 <= s.ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {s.ema}")
    params = [p for p in model.parameters() if p.requires_grad]
    shadow = [p.detach().clone() for p in params] if s.ema > 0 else None
    step = 0
    shape = {"max_len": model.config.max_len, "batch_size": s.batch_size}
    for epoch in range(1, s.max_epochs + 1):
        model.train()
        losses = []
        batches = (
            ((x, t, y, None) for x, t, y in prefix_batches(split.train, **shape, rng=rng))
            if prefixes
            else _epoch_batches(split.train, model.config.max_len, s.batch_size, rng, augment, views)
        )
        bar = tqdm(
            batches,
            total=n_batches,
            desc=f"epoch {epoch}",
            disable=not s.progress,
            leave=False,
        )
        out_of_time = False
        for b, (x, t, y, pair) in enumerate(bar):
            progress = (epoch - 1 + b / max(n_batches, 1)) / s.max_epochs
            if s.time_budget is not None:
                progress = max(progress, (time.monotonic() - t0) / s.time_budget)
            for group in opt.param_groups:
                group["lr"] = lr_at(s, step, progress)
            step += 1
            _, loss = model(x.to(dev), t.to(dev), y.to(dev), text_channel=not post, last_only=prefixes)
            if pair is not None:
                loss = loss + s.contrastive * contrastive_loss(model, pair, s.contrastive_temp, dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if shadow is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - s.ema)
            losses.append(loss.item())
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if s.time_budget is not None and time.monotonic() - t0 > s.time_budget:
                out_of_time = True
                break
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else None,
            "seconds": round(time.monotonic() - t0, 1),
        }
        live = _swap_weights(params, shadow) if shadow is not None else None  # validate the average
        if has_val:
            val = evaluate_model(
                model,
                split.val_inputs,
                split.val_targets,
                device=dev,
                batch_size=s.eval_batch_size,
                text_channel=not post,
            )
            entry["val_ndcg@10"] = val["ndcg@10"]
            entry["val_hr@10"] = val["hr@10"]
            score = val["ndcg@10"]
        else:
            score = -float(entry["loss"] or 0.0)
        history.append(entry)
        log.info(
            "epoch=%d loss=%s val_ndcg@10=%s seconds=%s",
            epoch,
            entry["loss"],
            entry.get("val_ndcg@10"),
            entry["seconds"],
        )
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if live is not None:
            _swap_weights(params, live)  # training goes on from the live weights
        if out_of_time:
            stop_reason = "time_budget"
            break
        if bad >= s.patience:
            stop_reason = "early_stopping"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    metrics: dict[str, Any] = {"ids_cleared": model.clear_new_ids()}  # served (and gated) from titles
    if post:
        if has_val:
            metrics["val_model_part"] = evaluate_model(
                model, split.val_inputs, split.val_targets, device=dev, text_channel=False
            )
        metrics["gates"] = fit_split_gates(
            model, split, s, rng=rng, device=dev, catalog_text=catalog_text, catalog_total=catalog_total
        )
    model.eval()
    if s.transitions and has_val:
        table = Transitions.fit(
            split.train.items, model.config.n_items, window=s.transitions_window, top_m=s.transitions_top_m
        )
        weight, by_weight = fit_transition_weight(
            model, table, split.val_inputs, split.val_targets, device=dev, batch_size=s.eval_batch_size
        )
        metrics["transitions"] = {
            "weight": weight,
            "val_ndcg@10_by_weight": by_weight,
            "pairs": len(table.cols),
        }
        if weight > 0:
            table.weight = weight
            model.transitions = table
    train_seconds = time.monotonic() - t0
    metrics |= {
        "best_epoch": best_epoch,
        "epochs": len(history),
        "stop_reason": stop_reason,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "n_items": model.config.n_items,
        "n_users": len(data),
    }
    if has_val:
        metrics["val"] = evaluate_model(model, split.val_inputs, split.val_targets, device=dev)
        if not s.train_on_last:
            metrics["test"] = evaluate_model(model, split.test_inputs, split.test_targets, device=dev)
    settings_dict = dataclasses.asdict(s) | {"device_used": str(dev)}
    return TrainResult(model, vocab, metrics, settings_dict)


def _epoch_batches(
    train: Encoded,
    max_len: int,
    batch_size: int,
    rng: np.random.Generator,
    augment: Augmenter | None,
    views: Augmenter | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, ViewPair | None]]:
    """(inputs, types, targets, the contrastive views or None) per batch."""
    if views is None:
        for x, t, y in training_batches(train, max_len=max_len, batch_size=batch_size, rng=rng, augment=augment):
            yield x, t, y, None
        return
    for (x, t, y), pair in contrastive_batches(
        train, max_len=max_len, batch_size=batch_size, rng=rng, views=views, augment=augment
    ):
        yield x, t, y, pair


def contrastive_loss(
    model: SASRec,
    pair: ViewPair,
    temperature: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """NT-Xent between the model-part user states (last position) of two views of each user."""
    table = model.item_table()  # (N+1, d), one id-dropout draw for both views
    z = [model.encode(x.to(device), t.to(device), table)[:, -1] for x, t in pair]
    return info_nce(z[0], z[1], temperature)


def _pair_batches(inputs: Encoded, targets: np.ndarray, *, max_len: int, batch_size: int, rng: np.random.Generator):
    """(history, target) pairs as training-style batches: the target sits after the last item."""
    order = rng.permutation(len(targets))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        x, t = history_batch([inputs.items[i] for i in idx], [inputs.types[i] for i in idx], max_len)
        y = torch.zeros_like(x)
        y[:, -1] = torch.as_tensor(targets[idx], dtype=torch.long)
        yield x, t, y


def fit_split_gates(
    model: SASRec,
    split: Split,
    s: TrainSettings,
    *,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
    catalog_text: torch.Tensor | None = None,
    catalog_total: int | None = None,
) -> dict[str, Any]:
    """The "post" phase of :func:`fit`: :func:`fit_gates` on the split's validation pairs
    (``gate_data`` "val", when it has any) or on its training sequences."""
    if s.gate_data not in ("val", "train"):
        raise ValueError(f"unknown gate_data {s.gate_data!r}: use 'val' or 'train'")
    pairs = s.gate_data == "val" and len(split.val_targets) > 0
    return fit_gates(
        model,
        split.val_inputs if pairs else split.train,
        s,
        rng=rng,
        device=device,
        targets=split.val_targets if pairs else None,
        catalog_text=catalog_text,
        catalog_total=catalog_total,
    )


def fit_gates(
    model: SASRec,
    train_enc: Encoded,
    s: TrainSettings,
    *,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
    targets: np.ndarray | None = None,
    catalog_text: torch.Tensor | None = None,
    catalog_total: int | None = None,
) -> dict[str, Any]:
    """Fit only the hybrid channel's gates (alpha, beta, b) with everything else frozen, by the
    full-softmax loss of the hybrid scores: on ``train_enc``'s next-item targets, or, with
    ``targets``, on (history ``train_enc``[k], target ``targets``[k]) pairs, e.g. the validation
    split: held-out targets that the model part never trained on, so the calibration between
    the model's scores and text similarity is not skewed by what the model memorised.

    "New" is simulated as in training: each batch drops the ids of a random ``id_dropout``
    share of the items (those then count as new, in the candidates and in the histories), and
    a ``gate_shop_dropout`` share of the batches drops every id (a whole new shop). The frozen
    model runs in eval mode (no dropout). Returns the fitted gate weights (for the record).

    ``catalog_text`` (k, text_dim): title vectors of the serving catalog's items without a row
    (a shop's catalog beyond what its first users clicked). They compete as new items (their
    text projection, no id), as the worker's index ranks them: without them the gates are
    calibrated on a pool with few new items, and a catalog where most items are new is flooded
    by them (``bench/few_shot.py``). When they are a sample (:func:`catalog_candidates`: at most
    ``gate_catalog_max``) of ``catalog_total`` such items, ``log(catalog_total / k)`` is added to
    their logits (the softmax's sum over all of them, estimated)."""
    if not model.config.hybrid:
        return {}
    if targets is None and model.needs_prefixes:
        raise ValueError("this model's positions read later ones (freq_kernel 'window'): fit the gates on pairs")
    dev = torch.device(device) if isinstance(device, str) else device
    gates = [model.gate_item, model.gate_user, model.bias_item]
    params = [p for g in gates for p in g.parameters()]
    frozen = [p for p in model.parameters() if all(p is not q for q in params)]
    was = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    model.eval()
    opt = torch.optim.Adam(params, lr=s.gate_lr)
    n_rows = model.id_emb.weight.shape[0]
    with torch.no_grad():
        ids = model.id_emb.weight  # (N+1, d)
        base = model.text_proj(model.text_emb)  # the text part of every row (N+1, d); hybrid has text
        unit_t = torch.nn.functional.normalize(model.text_low(), dim=-1)[1:].T.contiguous()  # (r, N)
        extra_in = extra_unit = None
        extra_shift = 0.0
        if catalog_text is not None and len(catalog_text):
            k = len(catalog_text)
            extra_shift = math.log(max(catalog_total or k, k) / k)
            pick = catalog_text.to(dev, torch.float32)
            # (k, d): a new item's input vector (no id row; hybrid has text)
            extra_in = model.item_vec(None, model.text_proj(pick))
            extra_unit = torch.nn.functional.normalize(model.reduce_text(pick), dim=-1).T.contiguous()  # (r, k)
        one, zero = torch.ones(1, device=dev), torch.zeros(1, device=dev)  # an extra item: new, no count
    if targets is None:
        n_batches = math.ceil(sum(len(x) >= 2 for x in train_enc.items) / s.batch_size)
    else:
        n_batches = math.ceil(len(targets) / s.gate_positions)
    steps, done, losses = max(1, round(s.gate_epochs * n_batches)), 0, []
    try:
        while done < steps:
            batches = (
                training_batches(train_enc, max_len=model.config.max_len, batch_size=s.batch_size, rng=rng)
                if targets is None
                else _pair_batches(
                    train_enc, targets, max_len=model.config.max_len, batch_size=s.gate_positions, rng=rng
                )
            )
            for x, t, y in batches:
                x, t, y = x.to(dev), t.to(dev), y.to(dev)
                if rng.random() < s.gate_shop_dropout:
                    keep = torch.zeros(n_rows, dtype=torch.bool, device=dev)
                else:
                    keep = torch.as_tensor(rng.random(n_rows) >= model.config.id_dropout, device=dev)
                keep[0] = True
                pos = (y != 0).nonzero()  # (M, 2)
                if len(pos) > s.gate_positions:
                    pos = pos[torch.as_tensor(rng.choice(len(pos), s.gate_positions, replace=False), device=dev)]
                alpha, qn, some, scale = model._user_text_parts(x, keep)
                alpha, some = alpha[pos[:, 0], pos[:, 1]], some[pos[:, 0], pos[:, 1]]  # (m, 1)
                with torch.no_grad():
                    table = model.item_vec(ids * keep[:, None], base)  # (N+1, d)
                    h = model.encode(x, t, table)[pos[:, 0], pos[:, 1]]  # (m, d)
                    model_logits = (h * scale[pos[:, 0], pos[:, 1]]) @ table[1:].T  # (m, N)
                    cos = qn[pos[:, 0], pos[:, 1]] @ unit_t  # (m, N)
                beta, b = model.item_gates(keep, serving=False)
                logits = model_logits + some * (alpha * cos * beta[1:] + b[1:])
                if extra_in is not None and extra_unit is not None:
                    with torch.no_grad():
                        x_model = (h * scale[pos[:, 0], pos[:, 1]]) @ extra_in.T  # (m, k')
                        x_cos = qn[pos[:, 0], pos[:, 1]] @ extra_unit  # (m, k')
                    x_beta, x_b = model._gates(one, zero, serving=False)  # the same for every extra item
                    x_logits = x_model + some * (alpha * x_cos * x_beta + x_b) + extra_shift
                    logits = torch.cat([logits, x_logits], dim=1)
                loss = torch.nn.functional.cross_entropy(logits, y[pos[:, 0], pos[:, 1]] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                done += 1
                if done >= steps:
                    break
    finally:
        for p, w in zip(frozen, was):
            p.requires_grad_(w)
    out: dict[str, Any] = {
        name: [round(v, 4) for v in torch.cat([g.weight.detach()[0], g.bias.detach()]).tolist()]
        for name, g in (("gate_item", model.gate_item), ("gate_user", model.gate_user), ("bias_item", model.bias_item))
    }
    out |= {
        "steps": done,
        "data": "train" if targets is None else "pairs",
        "catalog_candidates": 0 if extra_in is None else len(extra_in),
        "loss_first": losses[0] if losses else None,
        "loss_last_20": float(np.mean(losses[-20:])) if losses else None,
    }
    log.info("gates fitted steps=%d loss_first=%s loss_last=%s", done, out["loss_first"], out["loss_last_20"])
    return out


def with_text_channel(model: SASRec, **config: Any) -> SASRec:
    """A hybrid copy of a model trained without the text channel (same weights; gates at their
    start values, item counts zero, basis from its catalog): ``fit`` or :func:`fit_gates` then
    fits the gates. ``config`` overrides (e.g. ``text_sim_dim``) apply to the copy."""
    cfg = copy.deepcopy(model.config)
    assert isinstance(cfg, SASRecConfig)
    for k, v in ({"hybrid": True} | config).items():
        setattr(cfg, k, v)
    out = SASRec(cfg)
    _missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    out.text_emb = model.text_emb.clone()
    out.set_text_basis()
    return out.to(model.id_emb.weight.device).train(model.training)


def _title_cache(settings: TrainSettings, item_text: dict[str, str | None] | None) -> TextCache:
    """One text cache for all the title lookups of a ``train`` or ``finetune`` call, so that no
    title is embedded twice: ``settings.text_cache``, opened only when there are titles to look up,
    else in memory."""
    path = settings.text_cache if item_text and any(item_text.values()) else None
    return TextCache(path, device=settings.device)


def train(
    data: Interactions,
    *,
    item_text: dict[str, str | None] | None = None,
    config: SASRecConfig | dict[str, Any] | None = None,
    settings: TrainSettings = TrainSettings(),
) -> TrainResult:
    """Train a new model on ``data`` (see module docstring for the split)."""
    vocab = vocab_from(data)
    cfg = config if isinstance(config, SASRecConfig) else SASRecConfig(**(config or {}))
    cfg.n_items = len(vocab)
    text = item_text or {}
    if cfg.use_text and not any(i is not None and text.get(i) for i in vocab.ids):
        log.warning("no item text for any item: the model uses id embeddings only")
    torch.manual_seed(settings.seed)
    model = SASRec(cfg)
    with _title_cache(settings, text) as cache:
        if cfg.use_text:
            model.text_emb = torch.cat([torch.zeros(1, cfg.text_dim), item_text_matrix(vocab, text, cache=cache)])
            # the channel's centre and directions: the catalog's titles (the training items and
            # every other item of item_text: what will be served)
            fit_catalog_basis(model, vocab, text, cache=cache)
        extra, total = catalog_candidates(model, vocab, text, settings, cache=cache)
    return fit(model, vocab, data, settings, catalog_text=extra, catalog_total=total)


def add_items(
    model: SASRec,
    vocab: ItemVocab,
    ids: list[str],
    item_text: dict[str, str | None],
    *,
    encoder: TextEncoder | None = None,
    cache_file: str | Path | None = None,
    device: str = "auto",
    cache: TextCache | None = None,
) -> list[str]:
    """Grow ``model`` and ``vocab`` by the ``ids`` not yet known; returns the new ones."""
    new = [i for i in dict.fromkeys(ids) if i not in vocab]
    if not new:
        return []
    emb = item_text_matrix(vocab, item_text, new, encoder=encoder, cache_file=cache_file, device=device, cache=cache)
    model.grow(emb)
    vocab.add(new)
    return new


def finetune(
    model: SASRec,
    vocab: ItemVocab,
    data: Interactions,
    *,
    item_text: dict[str, str | None] | None = None,
    settings: TrainSettings = TrainSettings(),
) -> TrainResult:
    """Warm-start from a trained model. Items new to its vocabulary are appended (rows start as
    their text projection); existing rows keep their place and their learned values."""
    vocab = copy.deepcopy(vocab)
    new: list[str] = []
    for seq in data.items:
        new.extend(i for i in seq if i not in vocab)
    with _title_cache(settings, item_text) as cache:
        added = add_items(model, vocab, new, item_text or {}, cache=cache)
        if item_text:
            # the text channel follows the catalog being trained for (a new shop: its own titles);
            # the gates are then fitted with it
            fit_catalog_basis(model, vocab, item_text, [*new, *item_text], cache=cache)
        extra, total = catalog_candidates(model, vocab, item_text, settings, cache=cache)
    res = fit(model, vocab, data, settings, catalog_text=extra, catalog_total=total)
    res.metrics["added_items"] = len(added)
    return res
