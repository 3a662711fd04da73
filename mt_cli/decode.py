"""Greedy and beam search over batches, on the device, with cached decoder keys/values."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mt_cli.config import DecodeConfig
from mt_cli.data.vocab import BOS, EOS, PAD

NEG_INF = float("-inf")


def _max_lengths(model, src: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Longest output (tokens incl. <eos>) per sentence: a × source length + b, and no longer than the
    model has positions for (<bos> takes position 0)."""
    return ((src != PAD).sum(1).float() * a + b).long().clamp(min=1, max=model.max_positions)


def _next_logp(model, last: torch.Tensor, state: dict, first: bool = False) -> torch.Tensor:
    """The model's next-token log-probabilities; <pad> and <bos> are never a continuation, nor <eos> the first
    token (unless the length limit forces it): an empty output is no translation of a sentence, and in beam
    search it would take one of the finished slots, stopping the search before the real hypotheses end."""
    return model.step(last, state).index_fill_(-1, state["never_first" if first else "never"], NEG_INF)


def _force_eos(logp: torch.Tensor, at_limit: torch.Tensor) -> torch.Tensor:
    """Where a hypothesis reached its length limit, <eos> is its only continuation."""
    only_eos = torch.full_like(logp, NEG_INF)
    only_eos[..., EOS] = 0.0
    return torch.where(at_limit[..., None], only_eos, logp)


def greedy_search(
    model, src: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10, check_every: int = 4
) -> list[list[int]]:
    """Argmax decoding; returns token ids without <bos>/<eos>."""
    return _token_search(model, src, lambda logp: logp.argmax(-1), max_len_a, max_len_b, check_every)


def sample_search(
    model, src: torch.Tensor, sampler: Sampler, max_len_a: float = 1.5, max_len_b: int = 10, check_every: int = 4
) -> list[list[int]]:
    """Like greedy search, but each token is drawn by `sampler` (top-k or nucleus sampling)."""
    return _token_search(model, src, sampler.choose, max_len_a, max_len_b, check_every)


@torch.no_grad()
def _token_search(
    model, src: torch.Tensor, choose, max_len_a: float, max_len_b: int, check_every: int
) -> list[list[int]]:
    """One hypothesis per sentence, extended by `choose(logp) -> tokens` at each step."""
    n = src.size(0)
    limit = _max_lengths(model, src, max_len_a, max_len_b)
    steps, first_limit = int(limit.max()), int(limit.min()) - 1
    state = _start(model, src, 1, steps)
    last = torch.full((n,), BOS, dtype=torch.long, device=src.device)
    out = torch.full((n, steps), PAD, dtype=torch.long, device=src.device)
    done = torch.zeros(n, dtype=torch.bool, device=src.device)
    for t in range(steps):
        logp = _next_logp(model, last, state, first=t == 0)
        if t >= first_limit:  # before that no sentence is at its limit: skip a (batch, vocab) pass
            logp = _force_eos(logp, limit - 1 <= t)
        last = choose(logp).masked_fill(done, PAD)
        out[:, t] = last
        done |= last == EOS
        if t % check_every == check_every - 1 and bool(done.all()):  # one sync every few steps
            break
    return [_until_eos(row) for row in out.tolist()]


class Sampler:
    """Draws the next token from the k most likely ("topk:K") or from the fewest most likely tokens holding
    probability P ("topp:P", nucleus sampling); one seeded generator for the whole run, so a seed repeats it."""

    def __init__(self, kind: str, value: float, seed: int = 0):
        self.kind, self.value, self.seed = kind, value, seed
        self._gen: torch.Generator | None = None

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> Sampler:
        kind, _, value = text.partition(":")
        try:
            v = float(value) if kind == "topp" else int(value)
        except ValueError:
            v = None
        if kind == "topk" and v is not None and v >= 1:
            return cls(kind, v, seed)
        if kind == "topp" and v is not None and 0.0 < v <= 1.0:
            return cls(kind, v, seed)
        raise ValueError(f"--sample {text}: use topk:K (an integer K >= 1) or topp:P (0 < P <= 1)")

    def choose(self, logp: torch.Tensor) -> torch.Tensor:
        if self._gen is None or self._gen.device != logp.device:
            self._gen = torch.Generator(device=logp.device).manual_seed(self.seed)
        if self.kind == "topk":
            vals, idx = logp.topk(min(int(self.value), logp.size(-1)), dim=-1)
        else:
            vals, idx = logp.sort(dim=-1, descending=True)
            probs = vals.exp()
            vals = vals.masked_fill(probs.cumsum(-1) - probs >= self.value, NEG_INF)  # the first always stays
        pick = torch.multinomial(vals.softmax(-1), 1, generator=self._gen)  # softmax renormalises the kept set
        return idx.gather(-1, pick).squeeze(-1)


def _start(model, src: torch.Tensor, beams: int, steps: int) -> dict:
    limit = model.max_positions
    if limit is not None and src.size(1) > limit:
        raise ValueError(
            f"a source sentence of {src.size(1)} tokens is longer than the model's {limit} learned positions; split it"
        )
    state = model.start_state(src, expand=beams, max_steps=steps)
    state["never"] = torch.tensor([PAD, BOS], device=src.device)
    state["never_first"] = torch.tensor([PAD, BOS, EOS], device=src.device)
    return state


def _until_eos(row: list[int]) -> list[int]:
    return row[: row.index(EOS)] if EOS in row else [t for t in row if t != PAD]


def length_penalty(length: torch.Tensor | int, alpha: float):
    """GNMT length penalty ((5 + len) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model,
    src: torch.Tensor,
    beam_size: int = 5,
    alpha: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    nbest: int = 1,
    check_every: int = 4,
) -> list[list[tuple[list[int], float]]]:
    """Batched beam search (sentences × beams on the device). A sentence is finished once `beam_size`
    hypotheses ended in <eos> among the top candidates, so beam 1 is exactly greedy search.
    Returns, per sentence, the n best (token ids, length-normalized log-probability)."""
    B, K, dev = src.size(0), beam_size, src.device
    limit = _max_lengths(model, src, max_len_a, max_len_b)
    T, first_limit = int(limit.max()), int(limit.min()) - 1
    state = _start(model, src, K, T)
    scores = torch.full((B, K), NEG_INF, device=dev)
    scores[:, 0] = 0.0  # one live hypothesis per sentence at the start: no duplicate beams
    hist = torch.full((B, K, T), PAD, dtype=torch.long, device=dev)
    last = torch.full((B * K,), BOS, dtype=torch.long, device=dev)
    fin_tokens = torch.full((B, K + 1, T), PAD, dtype=torch.long, device=dev)  # slot K: a bin for non-finals
    fin_scores = torch.full((B, K + 1), NEG_INF, device=dev)
    fin_count = torch.zeros(B, dtype=torch.long, device=dev)
    first_k = torch.arange(2 * K, device=dev) < K
    row_base = torch.arange(B, device=dev)[:, None] * K
    for t in range(T):
        logp = _next_logp(model, last, state, first=t == 0).view(B, K, -1)
        if t >= first_limit:
            logp = _force_eos(logp, (limit - 1 <= t)[:, None].expand(B, K))
        V = logp.size(-1)
        cand_s, cand_i = (scores[..., None] + logp).view(B, K * V).topk(2 * K, dim=1)  # (B, 2K)
        cand_beam, cand_tok = cand_i // V, cand_i % V
        cand_hist = hist.gather(1, cand_beam[..., None].expand(B, 2 * K, T))  # a new tensor: safe to write
        cand_hist[:, :, t] = cand_tok
        # hypotheses ending in <eos> among the top K candidates are final (while slots remain)
        is_eos = cand_tok == EOS
        final = is_eos & first_k & (cand_s > NEG_INF)
        slot = fin_count[:, None] + final.long().cumsum(1) - 1
        final &= slot < K
        slot = torch.where(final, slot, torch.full_like(slot, K))
        fin_scores.scatter_(1, slot, cand_s / length_penalty(t + 1, alpha))
        fin_tokens.scatter_(1, slot[..., None].expand(B, 2 * K, T), cand_hist)
        fin_count += final.sum(1)
        # the best K candidates that go on become the beam
        scores, keep = torch.where(is_eos, NEG_INF, cand_s).topk(K, dim=1)
        hist = cand_hist.gather(1, keep[..., None].expand(B, K, T))
        last = cand_tok.gather(1, keep).view(-1)
        model.reorder_state(state, (row_base + cand_beam.gather(1, keep)).view(-1))
        if t % check_every == check_every - 1 and bool((fin_count >= K).all()):
            break
    fin_scores, fin_tokens = fin_scores[:, :K], fin_tokens[:, :K]
    order = fin_scores.argsort(dim=1, descending=True)[:, :nbest]
    best_s = fin_scores.gather(1, order).tolist()
    best_t = fin_tokens.gather(1, order[..., None].expand(B, nbest, T)).tolist()
    return [
        [(_until_eos(toks), s) for toks, s in zip(ts, ss) if s > NEG_INF] or [([], NEG_INF)]
        for ts, ss in zip(best_t, best_s)
    ]


# Every decoding batch (and step) brings new attention shapes, and the cuDNN backend of SDPA, which torch
# 2.11 tries first for masked attention on Hopper, builds an execution plan per new shape (~0.4 s each):
# on an H200 a cold batch of 500 sentences took 1.9 s against 0.25 s for 1,000 warm. The other fused
# kernels have no per-shape set-up (on an H100, beam 5 went from ~300 to 3,254 sentences/s in `mt train`'s
# final test). Training keeps cuDNN: its few padded shapes are captured once.
DECODE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def autocast_for(device: torch.device, dtype: torch.dtype | None, cache: bool = True):
    """Autocast to `dtype`, none for fp32 or None (a bare torch.autocast on the CPU would pick bfloat16)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


@torch.no_grad()
def translate_ids(
    model,
    sources: list[torch.Tensor] | torch.Tensor,
    cfg: DecodeConfig,
    device: torch.device,
    beam_size: int | None = None,
    amp_dtype: torch.dtype | None = None,
    progress=None,
    sampler: Sampler | None = None,
) -> list[list[tuple[list[int], float]]]:
    """Decode padded source rows (or a list of 1-D id tensors ending in <eos>) in length-sorted batches;
    results come back in input order, each a list of n-best (ids, score). A `sampler` samples instead
    of searching (one output per sentence, score 0)."""
    if isinstance(sources, list):
        lens = torch.tensor([len(s) for s in sources])
    else:
        lens = (sources != PAD).sum(1).cpu()
    order = torch.argsort(lens, descending=True, stable=True).tolist()
    k = beam_size or cfg.beam_size
    results: list = [None] * len(order)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            width = int(lens[idx].max())
            if isinstance(sources, list):
                src = torch.full((len(idx), width), PAD, dtype=torch.long)
                for r, j in enumerate(idx):
                    src[r, : len(sources[j])] = sources[j]
                src = src.to(device, non_blocking=True)
            else:
                src = sources[torch.tensor(idx, device=sources.device), :width].to(device)
            with autocast_for(device, amp_dtype), sdpa_kernel(DECODE_ATTENTION):
                if sampler is not None:
                    hyps = [[(h, 0.0)] for h in sample_search(model, src, sampler, cfg.max_len_a, cfg.max_len_b)]
                elif k == 1:
                    hyps = [[(h, 0.0)] for h in greedy_search(model, src, cfg.max_len_a, cfg.max_len_b)]
                else:
                    hyps = beam_search(
                        model, src, k, cfg.length_penalty, cfg.max_len_a, cfg.max_len_b, min(cfg.nbest, k)
                    )
            for j, h in zip(idx, hyps):
                results[j] = h
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    return results
