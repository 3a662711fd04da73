"""The Transformer: attention against the textbook formula, masking, caching, and every variant."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_ids, small_model

from mt_cli.data.vocab import BOS, PAD
from mt_cli.model.attention import SCORINGS, MultiHeadAttention, attention_reference

ATOL = 1e-5


def textbook(q, k, v, mask=None, causal=False, scale=None):
    """softmax(QKᵀ·scale)V with masked scores set to -inf, one matrix at a time."""
    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
    out = torch.empty_like(q)
    B, H, Lq, _ = q.shape
    Lk = k.size(2)
    for b in range(B):
        for h in range(H):
            s = q[b, h] @ k[b, h].T * scale
            for i in range(Lq):
                for j in range(Lk):
                    if (mask is not None and not bool(mask[b, 0, 0, j])) or (causal and j > i + Lk - Lq):
                        s[i, j] = float("-inf")
            out[b, h] = torch.softmax(s, -1) @ v[b, h]
    return out


def test_attention_reference_is_the_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    out, w = attention_reference(q, k, v)
    assert torch.allclose(out, textbook(q, k, v), atol=ATOL)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 5), atol=ATOL)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False
    out, w = attention_reference(q, k, v, mask=mask)
    assert torch.allclose(out, textbook(q, k, v, mask=mask), atol=ATOL)
    assert w[0, ..., 3:].eq(0).all()
    out, w = attention_reference(q, k, v, causal=True)
    assert torch.allclose(out, textbook(q, k, v, causal=True), atol=ATOL)
    assert torch.equal(w[0, 0] > 0, torch.ones(5, 5, dtype=torch.bool).tril())


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("scoring", ["scaled_dot", "dot"])
@pytest.mark.parametrize("causal", [False, True])
def test_multihead_attention_matches_the_formula(need_weights, scoring, causal):
    torch.manual_seed(1)
    d, h = 16, 4
    mha = MultiHeadAttention(d, h, scoring=scoring).eval()
    x = torch.randn(2, 6, d)
    mem = torch.randn(2, 6, d)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    out, w = mha(x, mha.project_kv(mem), mask, causal=causal, need_weights=need_weights)

    split = lambda t: t.view(2, 6, h, d // h).transpose(1, 2)  # noqa: E731
    q, k, v = split(mha.q_proj(x)), split(mha.k_proj(mem)), split(mha.v_proj(mem))
    scale = 1.0 if scoring == "dot" else None
    ref = textbook(q, k, v, mask, causal, scale).transpose(1, 2).reshape(2, 6, d)
    assert torch.allclose(out, mha.out_proj(ref), atol=ATOL)
    if need_weights:
        assert w.shape == (2, h, 6, 6) and torch.allclose(w.sum(-1), torch.ones(2, h, 6), atol=ATOL)
        assert w[1, ..., 4:].eq(0).all()
    else:
        assert w is None
    if scoring == "scaled_dot":  # the documented reference path gives the same numbers
        ref2, _ = attention_reference(q, k, v, mask, causal)
        assert torch.allclose(out, mha.out_proj(ref2.transpose(1, 2).reshape(2, 6, d)), atol=ATOL)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_mask_with_fewer_queries_than_keys_sees_the_past_only(with_mask, need_weights):
    """3 queries over 6 keys (the last 3 positions of a prefix): query i sees keys 0..i+3, on every path."""
    torch.manual_seed(3)
    d, h = 16, 4
    mha = MultiHeadAttention(d, h).eval()
    x, mem = torch.randn(2, 3, d), torch.randn(2, 6, d)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool) if with_mask else None
    out, _ = mha(x, mha.project_kv(mem), mask, causal=True, need_weights=need_weights)
    split = lambda t: t.view(2, -1, h, d // h).transpose(1, 2)  # noqa: E731
    q, k, v = split(mha.q_proj(x)), split(mha.k_proj(mem)), split(mha.v_proj(mem))
    ref = textbook(q, k, v, mask, True).transpose(1, 2).reshape(2, 3, d)
    assert torch.allclose(out, mha.out_proj(ref), atol=ATOL)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_weights_and_fused_paths_agree(scoring):
    torch.manual_seed(2)
    mha = MultiHeadAttention(16, 2, scoring=scoring).eval()
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)[:, None, None]
    for causal in (False, True):
        a, _ = mha(x, mha.project_kv(x), mask, causal=causal)
        b, w = mha(x, mha.project_kv(x), mask, causal=causal, need_weights=True)
        assert torch.allclose(a, b, atol=ATOL)
        assert w is not None and w[2, :, :, 1:].eq(0).all()


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_causal_mask_hides_future_target_tokens(norm, positional):
    model = small_model(norm=norm, positional=positional)
    g = torch.Generator().manual_seed(0)
    src = random_ids(2, 7, 50, g)
    tgt = random_ids(2, 9, 60, g)
    changed = tgt.clone()
    changed[:, 5:] = random_ids(2, 4, 60, g)
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=ATOL)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)  # later positions do see the change


@pytest.mark.parametrize("scoring", SCORINGS)
def test_extra_source_padding_changes_nothing(scoring):
    model = small_model(attention=scoring)
    g = torch.Generator().manual_seed(1)
    src = random_ids(3, 6, 50, g)
    src[1, 4:] = PAD  # sentences of different lengths in one batch
    src[2, 2:] = PAD
    tgt = random_ids(3, 5, 60, g)
    padded = torch.cat([src, torch.full((3, 7), PAD)], dim=1)
    with torch.no_grad():
        a, b = model(src, tgt), model(padded, tgt)
        alone = model(src[2:, :2], tgt[2:])  # a sentence decoded alone, without any padding
    assert torch.allclose(a, b, atol=ATOL)
    assert torch.allclose(a[2:], alone, atol=ATOL)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("scoring", ["scaled_dot", "additive"])
def test_incremental_decoding_matches_teacher_forcing(norm, positional, scoring):
    model = small_model(norm=norm, positional=positional, attention=scoring)
    g = torch.Generator().manual_seed(2)
    src = random_ids(3, 6, 50, g)
    src[0, 3:] = PAD
    tgt = torch.cat([torch.full((3, 1), BOS), random_ids(3, 7, 60, g)], dim=1)
    with torch.no_grad():
        full = torch.log_softmax(model(src, tgt), dim=-1)
        for capacity in (64, 3):  # 3: the key/value buffers must grow mid-sentence
            state = model.start_state(src, max_steps=capacity)
            steps = [model.step(tgt[:, t], state) for t in range(tgt.size(1))]
            assert state["pos"] == tgt.size(1)
            assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-4)


def test_cached_decoding_refuses_several_tokens_per_step():
    """With a cache the self-attention has no causal mask: several new tokens would see each other's future."""
    model = small_model()
    src = random_ids(2, 5, 50, torch.Generator().manual_seed(4))
    state = model.start_state(src)
    layer = model.decoder[0]
    with torch.no_grad(), pytest.raises(ValueError, match="^cached decoding takes one token per step$"):
        layer(torch.zeros(2, 2, 32), state["memory_kv"][0], state["src_mask"], cache=state["caches"][0])


def test_reorder_state_follows_the_chosen_hypotheses():
    model = small_model()
    g = torch.Generator().manual_seed(3)
    src = random_ids(1, 5, 50, g)
    tgt = torch.cat([torch.full((3, 1), BOS), random_ids(3, 3, 60, g)], dim=1)
    with torch.no_grad():
        state = model.start_state(src, expand=3)
        for t in range(3):
            model.step(tgt[:, t], state)
        order = torch.tensor([2, 2, 0])
        model.reorder_state(state, order)
        nxt = random_ids(3, 1, 60, g)[:, 0]
        got = model.step(nxt, state)
        want = torch.log_softmax(model(src.expand(3, -1), torch.cat([tgt[order, :3], nxt[:, None]], 1)), -1)[:, -1]
    assert torch.allclose(got, want, atol=1e-4)


def test_tied_embeddings_share_storage():
    m = small_model(tie_output=True)
    assert m.generator.weight is m.tgt_embed.tok.weight
    assert m.generator.weight.data_ptr() == m.tgt_embed.tok.weight.data_ptr()
    assert m.src_embed.tok.weight.data_ptr() != m.tgt_embed.tok.weight.data_ptr()
    n_untied = sum(p.numel() for p in small_model().parameters())
    assert sum(p.numel() for p in m.parameters()) == n_untied - 60 * 32
    shared = small_model(src_vocab=60, tgt_vocab=60, share_embeddings=True)
    ptrs = {
        shared.src_embed.tok.weight.data_ptr(),
        shared.tgt_embed.tok.weight.data_ptr(),
        shared.generator.weight.data_ptr(),
    }
    assert len(ptrs) == 1
    # rows of tokens never fed to the decoder still get gradient: through the output layer, the same tensor
    m.train()
    tgt_in = torch.randint(4, 10, (2, 4))
    m(random_ids(2, 4, 50), tgt_in).logsumexp(-1).sum().backward()
    assert m.tgt_embed.tok.weight.grad[20:].abs().sum() > 0


def test_pad_embedding_is_zero():
    m = small_model()
    assert m.src_embed.tok.weight[PAD].eq(0).all() and m.tgt_embed.tok.weight[PAD].eq(0).all()


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_every_variant_trains(scoring, positional, norm):
    model = small_model(
        attention=scoring, positional=positional, norm=norm, dropout=0.1, attn_dropout=0.1, enc_layers=1, dec_layers=1
    ).train()
    g = torch.Generator().manual_seed(4)
    src, tgt_in, tgt_out = random_ids(4, 6, 50, g), random_ids(4, 5, 60, g), random_ids(4, 5, 60, g)
    src[0, 4:] = PAD
    tgt_out[1, 3:] = PAD
    logits = model(src, tgt_in)
    assert logits.shape == (4, 5, 60) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads.values()), [
        n for n, gr in grads.items() if gr is None
    ]
    # the scoring's own parameters take part
    extra = [n for n in grads if "bilinear" in n or "add_" in n]
    assert bool(extra) == (scoring in ("bilinear", "additive"))
    assert all(grads[n].abs().sum() > 0 for n in extra)
    assert ("pos.weight" in "".join(grads)) == (positional == "learned")
    assert isinstance(model.enc_norm, torch.nn.LayerNorm) == (norm == "pre")


def test_sinusoidal_positions_extend_past_max_positions():
    model = small_model(max_positions=8)
    src = random_ids(1, 12, 50)
    with torch.no_grad():
        out = model(src, random_ids(1, 10, 60))
    assert torch.isfinite(out).all()


def test_unknown_scoring_is_refused():
    with pytest.raises(ValueError, match="unknown attention scoring"):
        MultiHeadAttention(16, 2, scoring="cosine")


def sinusoid_formula(n: int, d: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), one entry at a time."""
    pe = torch.empty(n, d, dtype=torch.float64)
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            pe[pos, 2 * i], pe[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
    return pe


@pytest.mark.parametrize("d", [8, 32])
def test_sinusoidal_table_is_the_formula(d):
    from mt_cli.model.layers import sinusoidal_table

    table = sinusoidal_table(60, d)
    assert table.shape == (60, d)
    # float32 sin/cos of angles up to 59 rad: ~1e-5 absolute
    assert torch.allclose(table.double(), sinusoid_formula(60, d), atol=1e-4)
    # two points worked by hand: position 1, dimensions 0/1 (rate 1) and the last pair (rate 10000^(-(d-2)/d))
    assert table[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert table[1, 1].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert table[1, d - 2].item() == pytest.approx(math.sin(10000 ** (-(d - 2) / d)), abs=1e-6)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_embeddings_are_tokens_times_sqrt_d_plus_positions(positional):
    """Vaswani et al. §3.4: embedding weights × √d_model, plus the position encoding of each index."""
    model = small_model(positional=positional, max_positions=16)
    emb = model.src_embed
    ids = random_ids(2, 7, 50, torch.Generator().manual_seed(5))
    ids[1, 5:] = PAD
    positions = sinusoid_formula(16, 32).float() if positional == "sinusoidal" else emb.pos.weight.detach()
    with torch.no_grad():
        want = emb.tok.weight[ids] * math.sqrt(32) + positions[:7]
        assert torch.allclose(emb(ids), want, atol=1e-4)
        # an offset (incremental decoding) takes positions from there on
        assert torch.allclose(emb(ids[:, 3:5], offset=3), want[:, 3:5], atol=1e-4)
