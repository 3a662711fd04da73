"""Prepared splits as padded id tensors, and length-bucketed batches of fixed shapes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from mt_cli.data.sources import DataError
from mt_cli.data.vocab import BOS, EOS, PAD
from mt_cli.torch_io import safe_load


@dataclass
class Batch:
    src: torch.Tensor       # (batch, len) source ids + <eos>, padded
    tgt_in: torch.Tensor    # (batch, len) <bos> + target ids, padded
    tgt_out: torch.Tensor   # (batch, len) target ids + <eos>, padded
    n_src: int              # non-pad source tokens
    n_tgt: int              # non-pad target tokens (the loss is over these)


class Split:
    """One prepared split, held as padded matrices; row `n` is an all-padding filler row."""

    def __init__(self, path: Path, bucket_width: int = 8):
        if not path.exists():
            raise DataError(f"{path}: missing; run `mt prepare` again")
        d = safe_load(path, "prepared split", DataError, fix="run `mt prepare --force` to rebuild it")
        self.name = path.stem
        self.bucket_width = bucket_width
        src_lens = d["src_off"].diff()
        tgt_lens = d["tgt_off"].diff()
        self.n = len(src_lens)
        self.src_len = src_lens + 1             # + <eos>
        self.tgt_len = tgt_lens + 1             # + <eos> (what the loss counts)
        width = self._round(max(1, int(self.src_len.max()) if self.n else 1, int(self.tgt_len.max()) if self.n else 1))
        self.src = torch.full((self.n + 1, width), PAD, dtype=torch.int64)
        self.tgt = torch.full((self.n + 1, width + 1), PAD, dtype=torch.int64)
        self.src[self.n, 0] = EOS               # filler rows attend to one token, never to nothing
        _scatter_rows(self.src, d["src"].long(), src_lens, first=0)
        self.src[torch.arange(self.n), src_lens] = EOS
        self.tgt[: self.n, 0] = BOS
        _scatter_rows(self.tgt, d["tgt"].long(), tgt_lens, first=1)
        self.tgt[torch.arange(self.n), tgt_lens + 1] = EOS
        w = bucket_width
        self.bucket = (torch.maximum(self.src_len, self.tgt_len) + w - 1).div(w, rounding_mode="floor").clamp(min=1) * w

    def _round(self, n: int) -> int:
        w = self.bucket_width
        return max(w, math.ceil(n / w) * w)

    def __len__(self) -> int:
        return self.n

    def to(self, device) -> "Split":
        self.src, self.tgt = self.src.to(device), self.tgt.to(device)
        return self

    def source_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Source ids of sentences `idx`, trimmed to their longest."""
        L = int(self.src_len[idx].max()) if len(idx) else 1
        return self.src[idx.to(self.src.device), :L]


def _scatter_rows(matrix: torch.Tensor, flat: torch.Tensor, lens: torch.Tensor, first: int) -> None:
    """Write the concatenated sequences `flat` (lengths `lens`) into rows 0..n-1 of `matrix`,
    starting at column `first`, in one indexing operation."""
    rows = torch.repeat_interleave(torch.arange(len(lens)), lens)
    starts = torch.cumsum(lens, 0) - lens
    cols = torch.arange(len(flat)) - torch.repeat_interleave(starts, lens) + first
    matrix[rows, cols] = flat


def batch_plan(split: Split, batch_sentences: int | None, max_tokens: int | None, *, shuffle: bool,
               seed: int = 0, epoch: int = 0, fill: bool = True) -> list[tuple[torch.Tensor, int]]:
    """Batches as (row indices, padded length). Sentences of one length bucket share a batch, so
    shapes repeat (CUDA graphs, compiled kernels); with `fill`, short batches are topped up with
    filler rows so every batch of a bucket has the same shape."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    plan = []
    for L in torch.unique(split.bucket).tolist():
        rows = torch.nonzero(split.bucket == L).flatten()
        if shuffle:
            rows = rows[torch.randperm(len(rows), generator=g)]
        else:  # by length inside the bucket: less padding when decoding
            rows = rows[torch.argsort(split.src_len[rows], stable=True)]
        size = batch_sentences or max(1, max_tokens // L)
        for i in range(0, len(rows), size):
            idx = rows[i: i + size]
            if fill and len(idx) < size:
                idx = torch.cat([idx, torch.full((size - len(idx),), split.n, dtype=torch.int64)])
            plan.append((idx, L))
    if shuffle:
        order = torch.randperm(len(plan), generator=g).tolist()
        plan = [plan[i] for i in order]
    return plan


def shard(plan: list, rank: int, world: int) -> list:
    """Disjoint equal shares for `world` ranks; the last batches wrap around so counts match."""
    if world == 1:
        return plan
    n = math.ceil(len(plan) / world) * world
    padded = plan + plan[: n - len(plan)]
    return padded[rank::world]


def iterate(split: Split, plan: list[tuple[torch.Tensor, int]], device: torch.device, start: int = 0):
    """Yield Batch objects on `device`; the epoch's indices travel to the device in one copy."""
    if not plan:
        return
    sizes = [len(idx) for idx, _ in plan]
    all_idx = torch.cat([idx for idx, _ in plan])
    tok_src = split.src_len.index_select(0, all_idx.clamp(max=split.n - 1)) * (all_idx < split.n)
    tok_tgt = split.tgt_len.index_select(0, all_idx.clamp(max=split.n - 1)) * (all_idx < split.n)
    if device.type == "cuda":
        all_idx_dev = all_idx.pin_memory().to(device, non_blocking=True)
    else:
        all_idx_dev = all_idx
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    n_src = torch.tensor([int(tok_src[a:b].sum()) for a, b in zip(offsets, offsets[1:])]).tolist()
    n_tgt = torch.tensor([int(tok_tgt[a:b].sum()) for a, b in zip(offsets, offsets[1:])]).tolist()
    for k in range(start, len(plan)):
        L = plan[k][1]
        idx = all_idx_dev[offsets[k]: offsets[k + 1]]
        yield Batch(split.src[idx, :L], split.tgt[idx, :L], split.tgt[idx, 1: L + 1], n_src[k], n_tgt[k])
