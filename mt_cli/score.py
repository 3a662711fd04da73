"""`mt score`: the model's log-probability of given translations (forced decoding), for filtering and reranking.
Streamed in chunks like `mt translate`: memory is bounded by the chunk and the longest line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import zip_longest

import torch

from mt_cli.data.sources import DataError
from mt_cli.data.vocab import BOS, EOS, PAD
from mt_cli.decode import length_penalty

# Target positions per forced-decoding batch: logits are (positions × vocabulary) floats, kept near 64 MB.
LOGIT_BUDGET = 1 << 24


def paired_lines(src: Iterator[str], hyp: Iterator[str], src_name: str, hyp_name: str) -> Iterator[tuple[str, str]]:
    """(source, translation) line pairs; files of different lengths are a DataError naming the shorter."""
    missing = object()
    for n, (s, h) in enumerate(zip_longest(src, hyp, fillvalue=missing), 1):
        if s is missing or h is missing:
            short, long = (src_name, hyp_name) if s is missing else (hyp_name, src_name)
            raise DataError(
                f"{short} ends at line {n - 1} but {long} goes on; each translation needs its source "
                f"line (the files must have as many lines)"
            )
        yield s, h


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


@torch.no_grad()
def score_ids(
    model, src_ids: list[list[int]], hyp_ids: list[list[int]], device, alpha: float, budget: int = LOGIT_BUDGET
) -> list[tuple[float, float]]:
    """(log P / GNMT length penalty, log P) of each hypothesis + <eos> given its source + <eos>. The
    normalised score is what beam search ranks by, so n-best lists can be rescored on the same scale."""
    vocab = model.generator.out_features
    order = sorted(range(len(src_ids)), key=lambda i: (len(hyp_ids[i]), len(src_ids[i])), reverse=True)
    out: list = [None] * len(order)
    start = 0
    while start < len(order):
        width = len(hyp_ids[order[start]]) + 1  # the longest target of this batch (sorted longest first)
        rows = max(1, budget // (width * vocab))
        idx = order[start : start + rows]
        start += len(idx)
        src = _pad([src_ids[i] + [EOS] for i in idx]).to(device)
        tgt_in = _pad([[BOS] + hyp_ids[i] for i in idx]).to(device)
        tgt_out = _pad([hyp_ids[i] + [EOS] for i in idx]).to(device)
        logp = torch.log_softmax(model(src, tgt_in).float(), -1).gather(-1, tgt_out[..., None]).squeeze(-1)
        raw = logp.masked_fill(tgt_out == PAD, 0.0).sum(1).tolist()
        for i, r in zip(idx, raw):
            out[i] = (r / length_penalty(len(hyp_ids[i]) + 1, alpha), r)
    return out


def score_stream(
    model, codecs: dict, chunks: Iterator[list[tuple[str, str]]], write: Callable[[str], None], device, alpha: float
) -> int:
    """Score chunk after chunk of (source, translation) pairs, writing "normalised<TAB>raw" lines in order."""
    done = 0
    was_training = model.training
    model.eval()
    try:
        for chunk in chunks:
            src = codecs["src"].encode([s for s, _ in chunk])
            hyp = codecs["tgt"].encode([h for _, h in chunk])
            _check_positions(model, src, hyp, done)
            scores = score_ids(model, src, hyp, device, alpha)
            write("".join(f"{n:.4f}\t{r:.4f}\n" for n, r in scores))
            done += len(chunk)
    finally:
        model.train(was_training)
    return done


def _check_positions(model, src: list[list[int]], hyp: list[list[int]], done: int) -> None:
    limit = model.max_positions
    if limit is None:
        return
    for i, (s, h) in enumerate(zip(src, hyp)):
        if max(len(s), len(h)) + 1 > limit:
            raise DataError(f"line {done + i + 1}: longer than the model's {limit} learned positions; split it")
