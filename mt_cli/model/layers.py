"""Transformer building blocks: embeddings with positions, feed-forward, encoder and decoder layers."""

from __future__ import annotations

import math

import torch
from torch import nn

from mt_cli.model.attention import MultiHeadAttention
from mt_cli.model.dropout import Dropout


def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d // 2])
    return pe


class Embeddings(nn.Module):
    """Token embedding × √d + positional encoding (sinusoidal or learned), then dropout."""

    def __init__(self, vocab: int, d_model: int, pad_id: int, dropout: float, positional: str, max_positions: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model, padding_idx=pad_id)
        nn.init.normal_(self.tok.weight, 0.0, d_model**-0.5)
        with torch.no_grad():
            self.tok.weight[pad_id].zero_()
        self.scale = math.sqrt(d_model)
        self.learned = positional == "learned"
        if self.learned:
            self.pos = nn.Embedding(max_positions, d_model)
            nn.init.normal_(self.pos.weight, 0.0, d_model**-0.5)
        else:
            self.register_buffer("pe", sinusoidal_table(max_positions, d_model), persistent=False)
        self.drop = Dropout(dropout)

    def forward(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        n = ids.size(1)
        if self.learned:
            pos = self.pos(torch.arange(offset, offset + n, device=ids.device))
        else:
            if offset + n > self.pe.size(0):  # sinusoids extend to any length
                self.pe = sinusoidal_table(2 * (offset + n), self.pe.size(1)).to(self.pe.device)
            pos = self.pe[offset : offset + n]
        return self.drop(self.tok(ids) * self.scale + pos.to(self.tok.weight.dtype))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), Dropout(dropout), nn.Linear(d_ff, d_model))


class Residual(nn.Module):
    """x + dropout(f(x)) with LayerNorm after (post-LN, the original design) or before (pre-LN)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.drop = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x, f):
        if self.pre_norm:
            y, extra = _split(f(self.norm(x)))
            return x + self.drop(y), extra
        y, extra = _split(f(x))
        return self.norm(x + self.drop(y)), extra


def _split(out):
    return out if isinstance(out, tuple) else (out, None)


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout, attn_dropout, pre_norm, scoring):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attn_dropout, scoring)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.r1 = Residual(d_model, dropout, pre_norm)
        self.r2 = Residual(d_model, dropout, pre_norm)

    def forward(self, x, src_mask):
        x, _ = self.r1(x, lambda h: self.self_attn(h, self.self_attn.project_kv(h), src_mask))
        x, _ = self.r2(x, self.ffn)
        return x


def _append(cache: dict, k: torch.Tensor, v: torch.Tensor):
    """Write this step's keys/values into preallocated buffers (batch, heads, capacity, d_head) and
    return views of the filled part. Fixed-size buffers let the GPU allocator reuse its blocks; a
    cache grown by concatenation asks for a new, larger block at every step."""
    n = cache.get("len", 0)
    step = k.size(2)
    if "k" not in cache or n + step > cache["k"].size(2):
        cap = max(cache.get("capacity", 64), 2 * (n + step))
        for key, new in (("k", k), ("v", v)):
            buf = new.new_empty(new.size(0), new.size(1), cap, new.size(3))
            if n:
                buf[:, :, :n] = cache[key][:, :, :n]
            cache[key] = buf
    cache["k"][:, :, n : n + step] = k
    cache["v"][:, :, n : n + step] = v
    cache["len"] = n + step
    return cache["k"][:, :, : n + step], cache["v"][:, :, : n + step]


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout, attn_dropout, pre_norm, scoring):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attn_dropout, scoring)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attn_dropout, scoring)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.r1 = Residual(d_model, dropout, pre_norm)
        self.r2 = Residual(d_model, dropout, pre_norm)
        self.r3 = Residual(d_model, dropout, pre_norm)

    def forward(self, x, memory_kv, src_mask, cache: dict | None = None, need_weights: bool = False):
        """memory_kv: the cross-attention keys/values of the encoder output (computed once per sentence).
        cache: incremental decoding state of this layer's self-attention (see _append), updated in place."""

        def self_attn(h):
            k, v = self.self_attn.project_kv(h)
            if cache is not None:
                if h.size(1) != 1:  # the unmasked attention below is only causal for a single query
                    raise ValueError("cached decoding takes one token per step")
                k, v = _append(cache, k, v)
            # with a cache the single new query may see every earlier position: no mask needed
            return self.self_attn(h, (k, v), causal=cache is None)

        x, _ = self.r1(x, self_attn)
        x, weights = self.r2(x, lambda h: self.cross_attn(h, memory_kv, src_mask, need_weights=need_weights))
        x, _ = self.r3(x, self.ffn)
        return x, weights
