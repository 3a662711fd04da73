"""The Transformer's structure against closed forms: parameter counts, residual blocks, initialisation,
dropout on every path, dtypes, devices, and the key/value buffers of incremental decoding."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids, small_model

from mt_cli.data.vocab import BOS, PAD
from mt_cli.model.attention import SCORINGS, MultiHeadAttention

D, H, FF, SRC_V, TGT_V = 32, 4, 64, 50, 60


def expected_parameters(scoring: str, norm: str, positional: str, enc: int, dec: int, tie: bool, max_pos: int) -> int:
    """Vaswani et al.'s model counted by hand: 4 projections per attention, two FFN matrices, 2·d per LayerNorm."""
    dh = D // H
    extra = {"scaled_dot": 0, "dot": 0, "bilinear": dh * dh, "additive": (dh * dh + dh) + dh * dh + dh}[scoring]
    attention = 4 * (D * D + D) + extra
    ffn, layer_norm = (D * FF + FF) + (FF * D + D), 2 * D
    encoder_layer = attention + ffn + 2 * layer_norm
    decoder_layer = 2 * attention + ffn + 3 * layer_norm
    embeddings = (SRC_V + TGT_V) * D + (2 * max_pos * D if positional == "learned" else 0)
    final_norms = 2 * layer_norm if norm == "pre" else 0
    generator = TGT_V + (0 if tie else D * TGT_V)
    return embeddings + enc * encoder_layer + dec * decoder_layer + final_norms + generator


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("positional,tie", [("sinusoidal", False), ("learned", True)])
def test_parameter_count_is_the_closed_form(scoring, norm, positional, tie):
    model = small_model(
        attention=scoring,
        norm=norm,
        positional=positional,
        tie_output=tie,
        enc_layers=3,
        dec_layers=2,
        max_positions=20,
    )
    want = expected_parameters(scoring, norm, positional, 3, 2, tie, 20)
    assert sum(p.numel() for p in model.parameters()) == want
    assert len(model.encoder) == 3 and len(model.decoder) == 2


@pytest.mark.parametrize("scoring", SCORINGS)
def test_every_attention_uses_the_configured_scoring(scoring):
    model = small_model(attention=scoring)
    found = [m.scoring for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert found == [scoring] * (2 + 2 * 2)  # one per encoder layer, two per decoder layer


def attend(attn, x, memory=None, mask=None, causal=False):
    memory = x if memory is None else memory
    return attn(x, attn.project_kv(memory), mask, causal=causal)[0]


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_layers_are_the_textbook_residual_blocks(norm):
    """post-LN: x ← LN(x + f(x)); pre-LN: x ← x + f(LN(x)); f = self-attention, [cross-attention], FFN."""
    model = small_model(norm=norm)
    g = torch.Generator().manual_seed(2)
    x, memory = torch.randn(2, 5, D, generator=g), torch.randn(2, 4, D, generator=g)
    mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    mask[1, ..., 3:] = False

    def block(x, residual, f):
        return x + f(residual.norm(x)) if norm == "pre" else residual.norm(x + f(x))

    own_mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    own_mask[0, ..., 4:] = False
    enc, dec = model.encoder[0], model.decoder[0]
    with torch.no_grad():
        want = block(x, enc.r1, lambda h: attend(enc.self_attn, h, mask=own_mask))
        want = block(want, enc.r2, enc.ffn)
        assert torch.allclose(enc(x, own_mask), want, atol=1e-5)
        want = block(x, dec.r1, lambda h: attend(dec.self_attn, h, causal=True))
        want = block(want, dec.r2, lambda h: attend(dec.cross_attn, h, memory, mask))
        want = block(want, dec.r3, dec.ffn)
        got, weights = dec(x, dec.cross_attn.project_kv(memory), mask)
        assert torch.allclose(got, want, atol=1e-5)
        assert weights is None  # attention weights only when asked for


def test_feed_forward_is_relu_between_two_linear_maps():
    ffn = small_model().encoder[0].ffn
    x = torch.randn(3, 7, D)
    first, last = ffn[0], ffn[-1]
    with torch.no_grad():
        want = torch.clamp(x @ first.weight.T + first.bias, min=0) @ last.weight.T + last.bias
        assert torch.allclose(ffn(x), want, atol=1e-5)


def test_embeddings_start_as_normal_with_std_one_over_sqrt_d():
    """Token (and learned position) embeddings ~ N(0, d^-1/2): after the ×√d scale they have unit variance."""
    d = 64
    model = small_model(src_vocab=2000, tgt_vocab=60, d_model=d, n_heads=4, positional="learned", max_positions=2000)
    for weights in (model.src_embed.tok.weight[4:], model.src_embed.pos.weight):
        values = weights.detach().flatten()
        n = values.numel()
        assert abs(values.mean().item()) < 5 * d**-0.5 / n**0.5
        assert values.std().item() == pytest.approx(d**-0.5, rel=0.02)


def test_pad_embedding_gets_no_gradient():
    model = small_model().train()
    src = random_ids(2, 6, SRC_V)
    src[0, 4:] = PAD
    tgt = torch.cat([torch.full((2, 1), BOS), random_ids(2, 5, TGT_V)], 1)
    tgt[1, 3:] = PAD
    model(src, tgt).logsumexp(-1).sum().backward()
    assert model.src_embed.tok.weight.grad[PAD].eq(0).all() and model.tgt_embed.tok.weight.grad[PAD].eq(0).all()
    assert model.src_embed.tok.weight.grad[src[0, 0]].abs().sum() > 0


def test_checkpoints_hold_no_sinusoid_table():
    """The table is a function of the shape, recomputed on load; a checkpoint carries learned weights only."""
    keys = small_model().state_dict().keys()
    assert not [k for k in keys if k.endswith(".pe")]
    assert any(k.endswith("pos.weight") for k in small_model(positional="learned").state_dict())


def differs_in_training_only(module, *inputs):
    """True when `module` is random in training mode (two calls differ) and deterministic in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        module.eval()
        eval_out = [module(*inputs) for _ in range(2)]
        module.train()
        train_out = [module(*inputs) for _ in range(2)]
    first = [o[0] if isinstance(o, tuple) else o for o in eval_out + train_out]
    return torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])


@pytest.mark.parametrize("scoring", ["scaled_dot", "additive"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_dropout_acts_in_training_only_on_every_path(scoring, need_weights):
    attn = MultiHeadAttention(D, H, dropout=0.5, scoring=scoring)
    x = torch.randn(2, 5, D)
    torch.manual_seed(0)
    with torch.no_grad():
        attn.eval()
        a, b = (attn(x, attn.project_kv(x), need_weights=need_weights)[0] for _ in range(2))
        assert torch.equal(a, b)
        attn.train()
        c, d = (attn(x, attn.project_kv(x), need_weights=need_weights)[0] for _ in range(2))
        assert not torch.equal(c, d)


def test_attention_without_dropout_by_default_and_weights_only_when_asked():
    attn = MultiHeadAttention(D, H).train()
    x = torch.randn(2, 5, D)
    out, weights = attn(x, attn.project_kv(x))
    assert weights is None
    assert torch.equal(out, attn.eval()(x, attn.project_kv(x))[0])


def test_feed_forward_dropout_acts_in_training_only():
    assert differs_in_training_only(small_model(dropout=0.5).encoder[0].ffn, torch.randn(2, 5, D))


def test_additive_scores_are_bahdanau():
    """score(q, k) = vᵀ tanh(W q + U k), per head, then softmax over the keys."""
    attn = MultiHeadAttention(D, H, scoring="additive").eval()
    g = torch.Generator().manual_seed(1)
    x, memory = torch.randn(1, 3, D, generator=g), torch.randn(1, 4, D, generator=g)
    dh = D // H
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias).view(3, H, dh)
    k = (memory @ attn.k_proj.weight.T + attn.k_proj.bias).view(4, H, dh)
    v = (memory @ attn.v_proj.weight.T + attn.v_proj.bias).view(4, H, dh)
    heads = torch.empty(3, H, dh)
    with torch.no_grad():
        for h in range(H):
            for i in range(3):
                scores = torch.stack(
                    [attn.add_v(torch.tanh(attn.add_q(q[i, h]) + attn.add_k(k[j, h])))[0] for j in range(4)]
                )
                heads[i, h] = torch.softmax(scores, 0) @ v[:, h]
        want = heads.reshape(3, D) @ attn.out_proj.weight.T + attn.out_proj.bias
        assert torch.allclose(attend(attn, x, memory)[0], want, atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 3])
def test_causal_self_attention_without_a_mask_sees_the_past_only(length):
    """Position i attends to positions ≤ i: changing a later input leaves every earlier output unchanged."""
    attn = MultiHeadAttention(D, H).eval()
    x = torch.randn(1, length, D)
    with torch.no_grad():
        base = attend(attn, x, causal=True)
        for later in range(1, length):
            changed = x.clone()
            changed[0, later:] += 1.0
            out = attend(attn, changed, causal=True)
            assert torch.allclose(out[0, :later], base[0, :later], atol=1e-6)
            assert not torch.allclose(out[0, later], base[0, later], atol=1e-3)


def test_causal_attention_with_a_key_mask_and_equal_lengths():
    attn = MultiHeadAttention(D, H).eval()
    x = torch.randn(2, 4, D)
    mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    mask[1, ..., 1] = False  # one sentence may not see its second key
    with torch.no_grad():
        fused = attn(x, attn.project_kv(x), mask, causal=True)[0]
        weighed, weights = attn(x, attn.project_kv(x), mask, causal=True, need_weights=True)
    assert torch.allclose(fused[0], weighed[0], atol=1e-5)
    assert torch.equal(weights[0, 0] > 0, torch.ones(4, 4, dtype=torch.bool).tril())
    assert weights[1, :, :, 1].eq(0).all() and torch.allclose(fused[1], weighed[1], atol=1e-5)


def test_decode_returns_each_layers_cross_attention_when_asked():
    model = small_model()
    src, tgt = random_ids(2, 5, SRC_V), random_ids(2, 4, TGT_V)
    src[1, 3:] = PAD
    with torch.no_grad():
        logits, weights = model.decode(tgt, *model.encode(src), need_weights=True)
        assert torch.allclose(logits, model(src, tgt), atol=1e-5)
    assert len(weights) == 2 and all(w.shape == (2, H, 4, 5) for w in weights)
    assert all(torch.allclose(w.sum(-1), torch.ones(2, H, 4)) and w[1, ..., 3:].eq(0).all() for w in weights)


@pytest.mark.parametrize("kw", [dict(), dict(positional="learned", norm="pre"), dict(attention="additive")])
def test_the_model_makes_every_tensor_on_its_inputs_device(kw):
    """Run on the meta device: a tensor made on the default device (the CPU) beside it is an error."""
    model = small_model(dropout=0.3, attn_dropout=0.2, max_positions=8, **kw).train().to("meta")
    src, tgt = random_ids(2, 5, SRC_V).to("meta"), random_ids(2, 6, TGT_V).to("meta")
    assert model(src, tgt).device.type == "meta"
    model.eval()
    state = model.start_state(src, expand=2, max_steps=2)
    for _ in range(10):  # past the buffers' capacity and the sinusoid table's length
        log_probs = model.step(torch.zeros(4, dtype=torch.long, device="meta"), state)
    assert log_probs.device.type == "meta"
    attn = MultiHeadAttention(D, H).to("meta")  # a causal mask beside a key mask, fewer queries than keys
    x, mask = torch.randn(2, 3, D, device="meta"), torch.ones(2, 1, 1, 5, dtype=torch.bool, device="meta")
    memory = torch.randn(2, 5, D, device="meta")
    assert attn(x, attn.project_kv(memory), mask, causal=True)[0].device.type == "meta"


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_a_bfloat16_model_computes_in_bfloat16(positional):
    model = small_model(positional=positional, dropout=0.2, max_positions=40 if positional == "learned" else 8)
    model = model.to(torch.bfloat16)
    src, tgt = random_ids(2, 5, SRC_V), random_ids(2, 4, TGT_V)
    assert model.src_embed(src).dtype == torch.bfloat16
    with torch.no_grad():
        logits, weights = model.decode(tgt, *model.encode(src), need_weights=True)
    assert logits.dtype == torch.bfloat16 and weights[0].dtype == torch.bfloat16
    assert model.train().src_embed(src).dtype == torch.bfloat16  # the CPU dropout keeps the dtype
    longer = random_ids(1, 40, SRC_V)  # past max_positions: the sinusoid table is recomputed, in float32
    assert model.eval().src_embed(longer).dtype == torch.bfloat16


def test_key_value_buffers_are_allocated_once_and_doubled_when_full():
    """start_state sizes the buffers for max_steps; they stay in place until full, then grow to twice the length."""
    model = small_model()
    with torch.no_grad():
        state = model.start_state(random_ids(2, 5, SRC_V), max_steps=6)
        model.step(torch.full((2,), BOS), state)
        cache = state["caches"][0]
        first = cache["k"].data_ptr()
        assert cache["k"].shape == (2, H, 6, D // H) and cache["len"] == 1
        for t in range(2, 7):
            model.step(random_ids(2, 1, TGT_V)[:, 0], state)
            assert cache["len"] == t and cache["k"].data_ptr() == first
        model.step(random_ids(2, 1, TGT_V)[:, 0], state)
    assert cache["len"] == 7 and cache["k"].size(2) == 14 and cache["v"].size(2) == 14
