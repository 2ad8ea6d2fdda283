"""Hybrid scoring: the gated text-similarity channel fused into user and item vectors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from streamrec.model.sasrec import PAD_ID, TEXT_DIM, SASRec, SASRecConfig


def _model(**kw) -> SASRec:
    torch.manual_seed(0)
    kw.setdefault("text_sim_dim", 0)  # the full title vector unless a test says otherwise
    cfg = SASRecConfig(n_items=30, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8, **kw)
    m = SASRec(cfg)
    m.text_emb = F.normalize(torch.randn(31, cfg.text_dim), dim=-1)
    m.text_emb[PAD_ID] = 0
    m.text_emb[5] = 0  # an item without text
    m.item_count = torch.arange(31).float() % 4  # rows 4, 8, ... have no training count
    with torch.no_grad():  # non-trivial gates
        for lin in (m.gate_item, m.gate_user, m.bias_item):
            lin.weight.normal_()
    return m


X = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [0, 0, 0, 0, 0, 0]])
Y = torch.tensor([[0, 0, 2, 3, 4, 11], [6, 7, 8, 9, 10, 12], [0, 0, 0, 0, 0, 0]])


def test_default_channel_is_the_titles_top_192_directions():
    cfg = SASRecConfig(n_items=30, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8)
    assert cfg.text_sim_dim == 192 and SASRec(cfg).output_dim == 16 + 192 + 1


def test_shapes_and_empty_history_is_zero():
    m = _model().eval()
    assert m.output_dim == 16 + TEXT_DIM + 1
    table = m.item_table()
    assert table.shape == (31, 16) and m.output_table(table).shape == (31, m.output_dim)
    u = m.user_vectors(X, None, table)
    assert u.shape == (3, m.output_dim)
    torch.testing.assert_close(u, m.user_states(X, None, table)[:, -1])
    assert torch.all(u[2] == 0)  # empty history: the zero vector, every score 0
    assert m.default_vector().shape == (m.output_dim,)
    assert torch.all(m.default_vector()[16 : 16 + TEXT_DIM] == 0)


def test_score_decomposes_into_model_text_and_bias():
    m = _model().eval()
    table = m.item_table()
    u, out = m.user_vectors(X[:1], None, table)[0], m.output_table(table)
    h = m.encode(X[:1], None, table)[0, -1]
    beta, b = m.item_gates()
    # recency-weighted history titles, weight exp(-0.7 age): items 4 (newest), 3, 2, 1
    w = torch.exp(-0.7 * torch.tensor([3.0, 2.0, 1.0, 0.0]))
    q = F.normalize((w[:, None] * m.text_emb[1:5]).sum(0), dim=0)
    cos = F.normalize(m.text_emb, dim=-1) @ q
    alpha = u[16 : 16 + TEXT_DIM].norm()
    k = 0.75  # item 4 of the history [1, 2, 3, 4] has no training count: 3 of 4 are known
    expected = k * (table @ h) + alpha * beta * cos + b
    torch.testing.assert_close(out @ u, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cosine_scale", [0.0, 8.0])
def test_fast_loss_equals_inner_product_loss(cosine_scale):
    m = _model(id_dropout=0.0, dropout=0.0, emb_dropout=0.0, cosine_scale=cosine_scale).train()
    _, fast = m(X, None, Y)
    table = m.item_table()
    u, out = m.user_states(X, None, table), m.output_table(table)
    sel = Y != PAD_ID
    ref = F.cross_entropy(u[sel] @ out[1:].T, Y[sel] - 1)
    torch.testing.assert_close(fast, ref)
    fast.backward()
    for lin in (m.gate_item, m.gate_user, m.bias_item):
        assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_cosine_scale_scores_scaled_cosines():
    """With ``cosine_scale`` every item vector (input and output) is a unit vector and a user's
    state one times the scale: the model part of a served score is scale * cosine."""
    m = _model(cosine_scale=8.0).eval()
    table = m.item_table()
    torch.testing.assert_close(table[1:].norm(dim=1), torch.ones(30))
    h = m.encode(X, None, table)  # (3, 6, d)
    real = X != PAD_ID
    torch.testing.assert_close(h[real].norm(dim=1), torch.full((int(real.sum()),), 8.0))
    assert torch.all(h[~real] == 0)
    u, out = m.user_vectors(X[:1], None, table)[0], m.output_table(table)
    beta, b = m.item_gates()
    w = torch.exp(-0.7 * torch.tensor([3.0, 2.0, 1.0, 0.0]))
    q = F.normalize((w[:, None] * m.text_emb[1:5]).sum(0), dim=0)
    cos_text = F.normalize(m.text_emb, dim=-1) @ q
    cos_model = table @ F.normalize(h[0, -1], dim=0)
    alpha = u[16 : 16 + TEXT_DIM].norm()
    expected = 0.75 * 8.0 * cos_model + alpha * beta * cos_text + b
    torch.testing.assert_close(out @ u, expected, atol=1e-5, rtol=1e-5)
    # an item vector made anywhere else goes through item_vec: a new item's is its unit text part
    text = m.text_proj(m.text_emb[3:4])
    torch.testing.assert_close(m.item_vec(torch.zeros_like(text), text), F.normalize(text, dim=-1))
    with pytest.raises(ValueError, match="cosine_scale"):
        _model(cosine_scale=-1.0)
    ids_only = SASRec(SASRecConfig(n_items=30, d_model=16, n_heads=2, d_ff=32, max_len=8, use_text=False)).eval()
    torch.testing.assert_close(ids_only.item_table()[1:].norm(dim=1), torch.ones(30))  # an id-only model too


def test_gates_see_new_items_and_new_histories():
    m = _model().eval()
    new = m.item_new()
    assert bool(new[4]) and not bool(new[1])  # count 0 -> new
    keep = torch.ones(31, dtype=torch.bool)
    keep[1] = False  # an id dropped in training acts as new
    assert bool(m.item_new(keep)[1])
    beta, b = m.item_gates()
    beta2, b2 = m.item_gates(keep)
    assert beta[1] != beta2[1] and b[1] != b2[1] and beta[2] == beta2[2]
    # the user gate depends on the share of new items in the history
    a1 = m._user_text_parts(torch.tensor([[1, 2, 3]]), last_only=True)[0]
    a2 = m._user_text_parts(torch.tensor([[4, 8, 12]]), last_only=True)[0]
    assert a1.shape == (1, 1, 1) and float(a1.detach()) != float(a2.detach())


def test_shop_dropout_drops_every_id():
    m = _model(shop_dropout=1.0).train()
    keep = m.id_keep(31)
    assert keep is not None and not bool(keep.any())
    assert m.eval().id_keep(31) is None


def test_grow_adds_new_rows_without_count():
    m = _model()
    m.grow(torch.randn(3, TEXT_DIM))
    assert m.item_count.shape == (34,) and torch.all(m.item_count[31:] == 0)
    assert m.output_table().shape == (34, m.output_dim)
    assert bool(m.item_new()[33])


def test_text_basis_reduces_the_channel():
    m = _model(text_sim_dim=8)
    m.set_text_basis()
    assert m.output_dim == 16 + 8 + 1
    B = m.text_basis
    torch.testing.assert_close(B.T @ B, torch.eye(8), atol=1e-4, rtol=0)
    assert m.output_table().shape == (31, 25)
    with pytest.raises(ValueError, match="text_sim_dim"):
        _model(text_sim_dim=500)


def test_text_basis_is_centred_on_the_fitted_catalog():
    """The channel vector is (t - centre) @ basis: fitted on a catalog whose titles lie in a
    3-d affine subspace, 3 directions keep every centred title exactly; untitled rows stay 0."""
    m = _model(text_sim_dim=3)
    g = torch.Generator().manual_seed(3)
    offset, span = torch.randn(TEXT_DIM, generator=g), torch.randn(3, TEXT_DIM, generator=g)
    catalog = offset + torch.randn(50, 3, generator=g) @ span  # (50, 384)
    m.set_text_basis(emb=catalog)
    torch.testing.assert_close(m.text_mean, catalog.mean(0))
    low = m.reduce_text(catalog)
    torch.testing.assert_close(low @ m.text_basis.T, catalog - catalog.mean(0), atol=1e-3, rtol=1e-3)
    assert torch.all(m.reduce_text(torch.zeros(2, TEXT_DIM)) == 0)
    assert torch.all(m.text_low()[[PAD_ID, 5]] == 0)  # no title, no channel, after any fit
    # the served rows follow the refit (the cached reduction is invalidated)
    before = m.text_low().clone()
    m.set_text_basis()
    assert not torch.allclose(before, m.text_low())


def test_a_catalog_smaller_than_the_channel_keeps_its_centred_cosines():
    """5 titles for 8 directions: centred on them, and the channel keeps every centred title
    vector exactly (they span 4 directions), so their cosines are those of the full vectors. One
    title: no fit (the identity, no centre)."""
    m = _model(text_sim_dim=8)
    catalog = torch.randn(5, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    m.set_text_basis(emb=catalog)
    torch.testing.assert_close(m.text_mean, catalog.mean(0))
    torch.testing.assert_close(m.text_basis.T @ m.text_basis, torch.eye(8), atol=1e-5, rtol=0)
    low, full = m.reduce_text(catalog), catalog - catalog.mean(0)
    torch.testing.assert_close(low @ low.T, full @ full.T, atol=1e-3, rtol=1e-4)
    m.set_text_basis(emb=catalog[:1])
    torch.testing.assert_close(m.text_basis, torch.eye(TEXT_DIM)[:, :8])
    assert torch.all(m.text_mean == 0)


def test_fit_catalog_basis_reads_the_served_catalog_titles():
    from streamrec.model.data import ItemVocab
    from streamrec.model.train import fit_catalog_basis

    m = _model(text_sim_dim=4)
    vocab = ItemVocab()
    vocab.add([f"i{k}" for k in range(1, 31)])
    shop = [f"i{k}" for k in range(10, 31)]  # the catalog served: rows 10..30, all titled
    assert fit_catalog_basis(m, vocab, {}, shop) == 21
    torch.testing.assert_close(m.text_mean, m.text_emb[10:31].mean(0))


def test_no_text_means_no_channel():
    m = SASRec(SASRecConfig(n_items=5, d_model=8, n_heads=1, use_text=False))
    assert not m.config.hybrid and m.output_dim == 8


def test_old_checkpoint_without_hybrid_loads_as_before(tiny_checkpoint, tmp_path):
    """A checkpoint written before hybrid scoring (no field, no gate weights) loads and scores
    with the id/text vectors alone."""
    import shutil

    from safetensors.torch import load_file, save_file

    from streamrec.model.checkpoint import load_checkpoint

    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    cfg = json.loads((old / "config.json").read_text())
    for k in ("hybrid", "text_sim_dim", "text_decay", "shop_dropout"):
        cfg.pop(k, None)
    (old / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(old / "model.safetensors"))
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(("gate_", "bias_item", "text_basis", "text_mean", "item_count"))
    }
    save_file(state, str(old / "model.safetensors"), metadata={"format": "pt"})
    model, _vocab = load_checkpoint(old)
    assert not model.config.hybrid and model.output_dim == model.config.d_model
    new, _ = load_checkpoint(tiny_checkpoint)
    assert new.config.hybrid and new.output_dim > new.config.d_model
    torch.testing.assert_close(model.output_table(), new.item_table())


def test_a_checkpoint_from_before_cosine_scores_loads_with_plain_inner_products(tiny_checkpoint, tmp_path):
    import shutil

    from streamrec.model.checkpoint import load_checkpoint

    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    cfg = json.loads((old / "config.json").read_text())
    assert cfg["cosine_scale"] == SASRecConfig().cosine_scale > 0  # new models: cosine scores
    cfg.pop("cosine_scale")
    (old / "config.json").write_text(json.dumps(cfg))
    model, _ = load_checkpoint(old)
    new, _ = load_checkpoint(tiny_checkpoint)
    assert model.config.cosine_scale == 0.0
    assert not torch.allclose(model.item_table()[1:].norm(dim=1), torch.ones(model.config.n_items))
    torch.testing.assert_close(new.item_table(), F.normalize(model.item_table(), dim=-1))


def test_served_user_vector_reads_only_the_weights_that_matter():
    """user_vectors skips history items whose recency weight is < 1e-4 of the newest: the
    same vector as the all-positions path, up to rounding."""
    torch.manual_seed(1)
    cfg = SASRecConfig(n_items=30, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=40, text_decay=0.5)
    m = SASRec(cfg).eval()
    m.text_emb = F.normalize(torch.randn(31, cfg.text_dim), dim=-1)
    x = torch.randint(1, 31, (3, 40))
    x[0, :10] = PAD_ID
    table = m.item_table()
    torch.testing.assert_close(
        m.user_vectors(x, None, table), m.user_states(x, None, table)[:, -1], atol=1e-4, rtol=1e-4
    )


def test_post_fit_trains_the_model_part_then_only_the_gates(tiny_data, tiny_text):
    from streamrec.model.train import TrainSettings, train

    from .conftest import TINY_CONFIG

    res = train(
        tiny_data,
        item_text=tiny_text,
        config=TINY_CONFIG,
        settings=TrainSettings(max_epochs=2, device="cpu", progress=False, batch_size=32, gate_epochs=2),
    )
    m = res.model
    assert m.config.hybrid and "val_model_part" in res.metrics and "val" in res.metrics
    g = res.metrics["gates"]
    assert g["steps"] >= 2 and len(g["gate_item"]) == 4
    assert g["gate_item"] != [0.0, 0.0, 0.0, 0.5413]  # the gates moved
    assert float(m.item_count[1:].min()) > 0  # every tiny item trains
    with pytest.raises(ValueError, match="hybrid_fit"):
        train(
            tiny_data,
            item_text=tiny_text,
            config=TINY_CONFIG,
            settings=TrainSettings(max_epochs=1, device="cpu", progress=False, hybrid_fit="x"),
        )


def test_joint_fit_and_with_text_channel(tiny_data, tiny_text):
    from streamrec.model.train import TrainSettings, train, with_text_channel

    from .conftest import TINY_CONFIG

    res = train(
        tiny_data,
        item_text=tiny_text,
        config=TINY_CONFIG | {"hybrid": False},
        settings=TrainSettings(max_epochs=1, device="cpu", progress=False, batch_size=32),
    )
    assert not res.model.config.hybrid
    h = with_text_channel(res.model)
    assert h.config.hybrid and h.output_dim == res.model.config.d_model + (h.config.text_sim_dim or TEXT_DIM) + 1
    torch.testing.assert_close(h.eval().item_table(), res.model.eval().item_table())
    res2 = train(
        tiny_data,
        item_text=tiny_text,
        config=TINY_CONFIG,
        settings=TrainSettings(max_epochs=1, device="cpu", progress=False, batch_size=32, hybrid_fit="joint"),
    )
    assert "gates" not in res2.metrics and torch.isfinite(torch.tensor(res2.metrics["history"][0]["loss"]))


def test_new_history_is_ranked_by_text_and_boost_lifts_only_new_items():
    m = _model().eval()
    table = m.item_table()
    # a history of new items only (counts 0): the model part is scaled to 0
    u = m.user_vectors(torch.tensor([[4, 8, 12]]), None, table)[0]
    assert torch.all(u[:16] == 0) and u[16:].abs().sum() > 0
    out0 = m.output_table(table)
    m.config.new_item_boost = 2.0
    out2 = m.output_table(table)
    new = m.item_new()
    assert torch.allclose(out2[new, -1] - out0[new, -1], torch.tensor(2.0))
    assert torch.equal(out2[~new], out0[~new])
    m.config.trust_known_share = False
    assert m.user_vectors(torch.tensor([[4, 8, 12]]), None, table)[0, :16].abs().sum() > 0


def test_titles_grown_in_inference_mode_still_score():
    """The retraining gate grows the catalog under torch.inference_mode (no version counter)."""
    m = _model().eval()
    with torch.inference_mode():
        m.grow(torch.randn(2, TEXT_DIM))
        out = m.output_table()
    assert out.shape == (33, m.output_dim)


def test_text_basis_spans_the_top_principal_directions():
    """``text_basis`` (the channel's fit, also ``bench/text_similarity.py``'s): the centre of the
    titled rows and the span of their top principal directions (the same projector as an SVD's)."""
    from streamrec.model.sasrec import text_basis

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(200, 16, generator=g) @ torch.diag(torch.linspace(3.0, 0.1, 16))
    emb[:10] = 0.0  # untitled rows are skipped
    mean, basis = text_basis(emb, 4)
    x = emb[10:].double()
    assert basis.shape == (16, 4) and torch.allclose(mean, x.mean(0))
    vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)[2][:4].T
    assert torch.allclose(basis @ basis.T, vh @ vh.T, atol=1e-8)
    few_mean, few = text_basis(emb[:13], 4)  # 3 titles for 4 directions: their 2 centred ones first
    x = emb[10:13].double() - few_mean
    assert torch.allclose(few_mean, emb[10:13].double().mean(0))
    assert torch.allclose(few.T @ few, torch.eye(4, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(x @ few[:, :2] @ few[:, :2].T, x, atol=1e-10)
    one_mean, one = text_basis(emb[:11], 4)  # 1 title: no fit
    assert torch.equal(one, torch.eye(16, dtype=torch.float64)[:, :4]) and not one_mean.any()
