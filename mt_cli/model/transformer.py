"""The encoder–decoder Transformer, with incremental (cached) decoding for search."""

from __future__ import annotations

import torch
from torch import nn

from mt_cli.config import ModelConfig
from mt_cli.model.layers import DecoderLayer, Embeddings, EncoderLayer


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        pre = cfg.norm == "pre"
        args = (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attn_dropout, pre, cfg.attention)
        self.src_embed = Embeddings(src_vocab, cfg.d_model, pad_id, cfg.dropout, cfg.positional, cfg.max_positions)
        self.tgt_embed = Embeddings(tgt_vocab, cfg.d_model, pad_id, cfg.dropout, cfg.positional, cfg.max_positions)
        if cfg.share_embeddings:
            self.src_embed.tok.weight = self.tgt_embed.tok.weight
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(cfg.dec_layers))
        # pre-LN stacks need a final norm; post-LN outputs are normalized already
        self.enc_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.dec_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.generator = nn.Linear(cfg.d_model, tgt_vocab)
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        if cfg.tie_output or cfg.share_embeddings:
            self.generator.weight = self.tgt_embed.tok.weight

    @property
    def max_positions(self) -> int | None:
        """Longest sequence the model can represent: learned positions end; sinusoids do not (None)."""
        return self.tgt_embed.pos.num_embeddings if self.tgt_embed.learned else None

    def src_mask(self, src: torch.Tensor) -> torch.Tensor:
        return (src != self.pad_id)[:, None, None, :]  # (batch, 1, 1, src_len), True = real token

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.src_mask(src)
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of the encoder output for every decoder layer."""
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder]

    def decode(self, tgt_in, memory, src_mask, need_weights: bool = False, keep: torch.Tensor | None = None):
        """Teacher-forced decoder pass: logits (batch, tgt_len, vocab) [and per-layer cross-attention].
        keep: bool (batch, tgt_len); then logits only at those positions, (n_kept, vocab)."""
        x = self.tgt_embed(tgt_in)
        weights = []
        for layer, kv in zip(self.decoder, self.memory_kv(memory)):
            x, w = layer(x, kv, src_mask, need_weights=need_weights)
            weights.append(w)
        if keep is not None:  # the output layer is the widest matrix: skip the positions no loss reads
            x = x[keep]
        logits = self.generator(self.dec_norm(x))
        return (logits, weights) if need_weights else logits

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask, keep=keep)

    # --- incremental decoding ------------------------------------------------
    def start_state(self, src: torch.Tensor, expand: int = 1, max_steps: int = 64) -> dict:
        """Encode once; each sentence's state is repeated `expand` times (beams). `max_steps` sizes
        the key/value buffers (they grow if decoding goes further)."""
        memory, mask = self.encode(src)
        kv = self.memory_kv(memory)
        if expand > 1:
            kv = [(k.repeat_interleave(expand, 0), v.repeat_interleave(expand, 0)) for k, v in kv]
            mask = mask.repeat_interleave(expand, 0)
        return {"memory_kv": kv, "src_mask": mask, "caches": [{"capacity": max_steps} for _ in self.decoder], "pos": 0}

    def step(self, tokens: torch.Tensor, state: dict) -> torch.Tensor:
        """Log-probabilities (n, vocab) of the next token after `tokens` (n,), reusing cached keys/values."""
        x = self.tgt_embed(tokens[:, None], offset=state["pos"])
        for layer, kv, cache in zip(self.decoder, state["memory_kv"], state["caches"]):
            x, _ = layer(x, kv, state["src_mask"], cache=cache)
        state["pos"] += 1
        return torch.log_softmax(self.generator(self.dec_norm(x[:, -1])).float(), dim=-1)

    @staticmethod
    def reorder_state(state: dict, order: torch.Tensor) -> None:
        """Keep hypotheses `order` (beam search); encoder keys/values are equal within a sentence."""
        for cache in state["caches"]:
            for key in ("k", "v"):  # the whole buffer: same size every step, so its memory is reused
                cache[key] = cache[key].index_select(0, order)


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int) -> Transformer:
    return Transformer(cfg, src_vocab, tgt_vocab, pad_id)
