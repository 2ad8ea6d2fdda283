"""Shapes, causal masking, padding without NaN, grads, vocabulary growth."""

from __future__ import annotations

import pytest
import torch

from streamrec.model.sasrec import PAD_ID, SASRec, SASRecConfig


def _model(**kw) -> SASRec:
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=30, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=8, **kw)
    m = SASRec(cfg)
    m.text_emb = torch.randn(31, cfg.text_dim)
    m.text_emb[PAD_ID] = 0
    return m


def test_shapes_and_loss():
    m = _model()
    x = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    y = torch.tensor([[0, 0, 4, 5, 6], [2, 3, 4, 5, 6]])
    h, loss = m(x, None, y)
    assert h.shape == (2, 5, 16)
    assert loss.ndim == 0 and torch.isfinite(loss)
    h2, none = m(x)
    assert none is None and h2.shape == (2, 5, 16)
    assert m.item_table().shape == (31, 16)


def test_small_init():
    m = _model()
    assert float(m.id_emb.weight.detach().std()) < 0.05
    assert torch.all(m.id_emb.weight[PAD_ID] == 0)


def _filtered(**kw) -> SASRec:
    """A model whose blocks mix attention with the causal frequency filter (beta non-zero)."""
    m = _model(freq_mix=0.5, **kw)
    with torch.no_grad():
        for block in m.blocks:
            block.filter.beta.normal_()
    return m


def _fft(**kw) -> SASRec:
    """BSARec's own low pass (an FFT window seen from its newest position), BSARec's alpha."""
    return _model(freq_mix=0.7, freq_kernel="fft", freq_cutoff=3, freq_beta=0.5, **kw)


def _relative(**kw) -> SASRec:
    """Relative positions (an attention bias per distance), the bias non-zero."""
    m = _model(pos_mode="relative", **kw)
    with torch.no_grad():
        for block in m.blocks:
            block.attn.rel_bias.normal_()
    return m


def _left(**kw) -> SASRec:
    return _model(pos_mode="left", **kw)


MAKERS = [_model, _filtered, _fft, _relative, _left]
MAKER_IDS = ["attention", "attention+filter", "attention+fft-filter", "relative", "left"]


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_no_future_leakage(make):
    m = make().eval()
    x = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    table = m.item_table()
    h1 = m.encode(x, None, table)
    x2 = x.clone()
    x2[0, 6] = 20  # change a later item
    h2 = m.encode(x2, None, table)
    assert torch.allclose(h1[0, :6], h2[0, :6], atol=1e-6)
    assert not torch.allclose(h1[0, 6:], h2[0, 6:])


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_no_nan_with_left_right_and_full_padding(make):
    m = make()
    for train_mode in (True, False):
        m.train(train_mode)
        x = torch.tensor([[0, 0, 0, 1, 2], [1, 2, 0, 0, 0], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
        y = torch.tensor([[0, 0, 0, 2, 3], [2, 3, 0, 0, 0], [0, 0, 0, 0, 0], [2, 3, 4, 5, 6]])
        h, loss = m(x, None, y)
        assert torch.isfinite(h).all() and torch.isfinite(loss)
        assert torch.all(h[x == PAD_ID] == 0), "padded positions must be zeroed"
        loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        m.zero_grad()


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_padding_length_does_not_change_output(make):
    m = make().eval()
    table = m.item_table()
    a = m.encode(torch.tensor([[3, 4, 5]]), None, table)[:, -1]
    b = m.encode(torch.tensor([[0, 0, 0, 3, 4, 5]]), None, table)[:, -1]
    assert torch.allclose(a, b, atol=1e-6)


def test_filter_changes_the_output_and_checks_its_share():
    x = torch.tensor([[0, 0, 3, 4, 5]])
    plain, filtered = _model().eval(), _filtered().eval()
    filtered.load_state_dict(plain.state_dict(), strict=False)  # same weights but the filter's
    assert not torch.allclose(
        plain.encode(x, None, plain.item_table()), filtered.encode(x, None, filtered.item_table())
    )
    with pytest.raises(ValueError, match="freq_mix"):
        _model(freq_mix=1.5)


def test_event_types_enter_the_input():
    m = _model().eval()
    table = m.item_table()
    x = torch.tensor([[3, 4, 5]])
    a = m.encode(x, torch.tensor([[1, 1, 1]]), table)[:, -1]
    b = m.encode(x, torch.tensor([[1, 1, 4]]), table)[:, -1]
    assert not torch.allclose(a, b)


def test_sampled_loss_finite():
    m = _model(loss="sampled", n_negatives=16)
    x = torch.tensor([[0, 1, 2], [3, 4, 5]])
    y = torch.tensor([[0, 2, 3], [4, 5, 6]])
    _, loss = m(x, None, y)
    assert torch.isfinite(loss)


def test_grow_keeps_old_rows_and_new_rows_are_text_only():
    m = _model().eval()
    old_table = m.item_table().clone()
    new_text = torch.randn(2, m.config.text_dim)
    m.grow(new_text)
    assert m.config.n_items == 32
    t = m.item_table()
    assert torch.equal(t[:31], old_table)
    text = m.text_proj(new_text)
    assert torch.allclose(t[31:], m.item_vec(torch.zeros_like(text), text), atol=1e-6)  # no id part
    assert torch.allclose(t[31:], torch.nn.functional.normalize(text, dim=-1), atol=1e-6)  # cosine default


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_last_only_is_the_full_pass_at_the_last_position(make):
    m = make().eval()
    table = m.item_table()
    x = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]])
    full = m.encode(x, None, table)[:, -1:]
    last = m.encode(x, None, table, last_only=True)
    assert last.shape == (3, 1, 16)
    assert torch.allclose(full, last, atol=1e-6)


@pytest.mark.parametrize(("make", "consistent"), [(_model, False), (_relative, True), (_left, True)])
def test_which_position_modes_read_a_prefix_as_it_reads_alone(make, consistent):
    """Training scores every position of a sequence; with "left" and "relative" positions the
    state after an inner position is exactly the state of that prefix served alone."""
    m = make().eval()
    table = m.item_table()
    h = m.encode(torch.tensor([[0, 3, 4, 5, 6, 7]]), None, table)
    alone = m.encode(torch.tensor([[3, 4, 5]]), None, table)
    assert torch.allclose(h[0, 3], alone[0, -1], atol=1e-5) is consistent


def test_fft_kernel_is_the_window_low_pass_at_its_newest_position():
    """BSARec low-passes a zero-padded window of max_len positions by FFT; what its newest
    position receives is the fixed causal kernel applied to the real items."""
    from streamrec.model.sasrec import fft_kernel

    torch.manual_seed(1)
    window, cutoff, n = 12, 5, 7
    x = torch.randn(n, 4)
    padded = torch.cat([torch.zeros(window - n, 4), x])  # (window, 4), the newest item last
    f = torch.fft.rfft(padded, dim=0, norm="ortho")
    f[cutoff // 2 + 1 :] = 0
    low = torch.fft.irfft(f, n=window, dim=0, norm="ortho")[-1]  # (4,)
    k = fft_kernel(window, cutoff)  # weight by age
    assert torch.allclose(low, (k[:n].flip(0)[:, None] * x).sum(0), atol=1e-6)
    with pytest.raises(ValueError, match="freq_kernel"):
        _model(freq_mix=0.5, freq_kernel="fourier")


def test_unknown_position_mode_is_refused():
    with pytest.raises(ValueError, match="pos_mode"):
        _model(pos_mode="absolute")


def _window(**kw) -> SASRec:
    """BSARec's filter as it is (every position sees the whole window), two blocks."""
    m = _model(freq_mix=0.7, freq_kernel="window", freq_cutoff=3, freq_beta=1.0, **kw)
    with torch.no_grad():
        for block in m.blocks:
            block.filter.beta.normal_()
    return m


def test_window_filter_reads_later_positions_so_it_trains_on_prefixes_only():
    m = _window().eval()
    assert m.needs_prefixes and not _fft().needs_prefixes
    table = m.item_table()
    x = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    x2 = x.clone()
    x2[0, 6] = 20
    # an inner position sees a later item: not causal, unlike every other maker above
    assert not torch.allclose(m.encode(x, None, table)[0, :6], m.encode(x2, None, table)[0, :6])
    # the newest position is what serving reads: last_only computes exactly it, whatever the padding
    full = m.encode(x, None, table)[:, -1:]
    assert torch.allclose(full, m.encode(x, None, table, last_only=True), atol=1e-6)
    short = m.encode(torch.tensor([[3, 4, 5, 6, 7, 8]]), None, table, last_only=True)
    assert torch.allclose(full, short, atol=1e-6)
    y = torch.tensor([[0, 0, 4, 5, 6, 7, 8, 9]])
    with pytest.raises(ValueError, match="prefixes"):
        m.train()(x, None, y)  # every-position targets would read the answers
    with pytest.raises(ValueError, match="PAD"):
        m(x, None, y, last_only=True)
    y_last = torch.zeros_like(y)
    y_last[0, -1] = 9
    _, loss = m(x, None, y_last, last_only=True)
    assert torch.isfinite(loss)
    loss.backward()
    assert m.blocks[0].filter.beta.grad is not None


def test_last_only_loss_is_the_full_loss_at_the_last_position():
    m = _model(hybrid=False).eval()
    x = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    y = torch.zeros_like(x)
    y[:, -1] = torch.tensor([6, 7])
    _, full = m(x, None, y)
    _, last = m(x, None, y, last_only=True)
    assert torch.allclose(full, last, atol=1e-6)
