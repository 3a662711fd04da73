"""Multi-head attention: heads split and concatenated around a choice of scoring functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SCORINGS = ("scaled_dot", "dot", "additive", "bilinear")


def attention_reference(q, k, v, mask=None, causal=False):
    """softmax(QKᵀ/√d)V written out; used by tests and when attention weights are asked for."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    return _softmax_apply(scores, v, mask, causal)


def _softmax_apply(scores, v, mask, causal, dropout: float = 0.0, training: bool = False):
    if mask is not None:  # boolean, True = may attend; -inf (not -1e4) stays exact in fp16/bf16
        scores = scores.masked_fill(~mask, float("-inf"))
    if causal:
        lq, lk = scores.shape[-2:]
        future = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(lk - lq + 1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    out = F.dropout(weights, dropout, training) @ v
    return out, weights


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, scoring: str = "scaled_dot"):
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"unknown attention scoring {scoring!r}")
        self.h, self.d_head, self.scoring, self.dropout = n_heads, d_model // n_heads, scoring, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        if scoring == "bilinear":  # score = qᵀ W k, per head
            self.bilinear = nn.Linear(self.d_head, self.d_head, bias=False)
        elif scoring == "additive":  # score = vᵀ tanh(W q + U k) (Bahdanau)
            self.add_q = nn.Linear(self.d_head, self.d_head)
            self.add_k = nn.Linear(self.d_head, self.d_head, bias=False)
            self.add_v = nn.Linear(self.d_head, 1, bias=False)

    def _split(self, x):  # (batch, len, d_model) -> (batch, heads, len, d_head)
        return x.view(x.size(0), x.size(1), self.h, self.d_head).transpose(1, 2)

    def project_kv(self, x):
        """Keys and values of `x`, each (batch, heads, len, d_head); cached by the decoder."""
        k = self._split(self.k_proj(x))
        if self.scoring == "bilinear":
            k = self.bilinear(k)
        return k, self._split(self.v_proj(x))

    def forward(self, query, kv, mask=None, causal: bool = False, need_weights: bool = False):
        """query: (batch, len_q, d_model); kv: (keys, values) from project_kv; mask: bool, broadcastable
        to (batch, heads, len_q, len_k). Returns (output, weights or None)."""
        q = self._split(self.q_proj(query))
        k, v = kv
        p = self.dropout if self.training else 0.0
        if self.scoring == "additive":
            scores = self.add_v(torch.tanh(self.add_q(q).unsqueeze(3) + self.add_k(k).unsqueeze(2))).squeeze(-1)
            out, w = _softmax_apply(scores, v, mask, causal, p, self.training)
        elif need_weights:
            scale = 1.0 if self.scoring in ("dot", "bilinear") else 1.0 / math.sqrt(self.d_head)
            out, w = _softmax_apply((q @ k.transpose(-2, -1)) * scale, v, mask, causal, p, self.training)
        else:  # fused kernels (flash / memory-efficient) where the inputs allow
            scale = 1.0 if self.scoring in ("dot", "bilinear") else None
            lq, lk = q.size(2), k.size(2)
            if causal and (mask is not None or lq != lk):  # SDPA's is_causal aligns top-left; ours bottom-right
                tril = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
                mask = tril if mask is None else mask & tril
                causal = False
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal and q.size(2) > 1, scale=scale
            )
            w = None
        out = out.transpose(1, 2).reshape(query.size(0), query.size(1), self.h * self.d_head)
        return self.out_proj(out), w
