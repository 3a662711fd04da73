"""Length-bucketed batches of fixed shapes over a prepared Split: the plan (a function of seed and epoch, from
the lengths alone), its shards, and the batches themselves, from device-resident matrices or streamed."""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from mt_cli.data.split import Split

__all__ = ["Batch", "Plan", "Split", "batch_plan", "iterate", "shard"]

PREFETCH = 4  # streamed batches built ahead of the training step (a background thread)
RELEASE_EVERY = 4  # streamed batches between drops of the mapped pages read (each row read maps ~64 KB)


@dataclass
class Batch:
    src: torch.Tensor  # (batch, len) source ids + <eos>, padded
    tgt_in: torch.Tensor  # (batch, len) <bos> + target ids, padded
    tgt_out: torch.Tensor  # (batch, len) target ids + <eos>, padded
    n_src: int  # non-pad source tokens
    n_tgt: int  # non-pad target tokens (the loss is over these)


class Plan:
    """A sequence of batches (row indices, padded length), stored compactly: one int32 array of all rows plus
    (start, size, length) per batch, 4 bytes per sentence instead of one tensor per batch. Indexing, slicing
    (with steps), `+` and `*` work as on a list of (idx, L) pairs."""

    def __init__(self, rows: torch.Tensor, start: torch.Tensor, size: torch.Tensor, length: torch.Tensor):
        self.rows, self.start, self.size, self.length = rows, start, size, length

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return Plan(self.rows, self.start[k], self.size[k], self.length[k])
        a = int(self.start[k])
        return self.rows[a : a + int(self.size[k])].long(), int(self.length[k])

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]

    def select(self, batches) -> "Plan":
        order = torch.as_tensor(batches, dtype=torch.int64)
        return Plan(self.rows, self.start[order], self.size[order], self.length[order])

    def __add__(self, other):
        if isinstance(other, Plan) and other.rows is self.rows:
            return Plan(
                self.rows,
                *(
                    torch.cat([a, b])
                    for a, b in ((self.start, other.start), (self.size, other.size), (self.length, other.length))
                ),
            )
        return list(self) + list(other)

    def __mul__(self, times: int) -> "Plan":
        return Plan(self.rows, self.start.repeat(times), self.size.repeat(times), self.length.repeat(times))

    def indices(self) -> torch.Tensor:
        """All row indices of the plan, batch after batch (int64)."""
        total = int(self.size.sum())
        first = torch.cumsum(self.size, 0) - self.size
        pos = torch.repeat_interleave(self.start - first, self.size) + torch.arange(total)
        return self.rows[pos].long()


def batch_plan(
    split: Split,
    batch_sentences: int | None,
    max_tokens: int | None,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    fill: bool = True,
) -> Plan:
    """Batches as (row indices, padded length). Sentences of one length bucket share a batch, so
    shapes repeat (CUDA graphs, compiled kernels); with `fill`, short batches are topped up with
    filler rows so every batch of a bucket has the same shape."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    buckets, counts = _bucket_counts(split.bucket.numpy())
    sizes = [batch_sentences or max(1, max_tokens // L) for L in buckets]
    padded = [math.ceil(c / s) * s if fill else c for c, s in zip(counts, sizes)]
    starts = np.cumsum([0] + padded[:-1]).tolist()
    rows = _rows_by_bucket(split.bucket.numpy(), buckets, starts, sum(padded))
    start, size, length = [], [], []
    for L, at, count, n_rows, bsize in zip(buckets, starts, counts, padded, sizes):
        idx = rows[at : at + count]  # this bucket's rows, in file order
        if shuffle:
            idx[:] = idx[torch.randperm(count, generator=g).numpy()]
        else:  # by length inside the bucket: less padding when decoding
            idx[:] = idx[np.argsort(split.src_len.numpy()[idx], kind="stable")]
        rows[at + count : at + n_rows] = split.n  # filler rows
        first = torch.arange(0, n_rows, bsize)
        start.append(first + at)
        size.append(torch.clamp(n_rows - first, max=bsize))
        length.append(torch.full((len(first),), L, dtype=torch.int64))
    cat = lambda parts: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)  # noqa: E731
    plan = Plan(torch.from_numpy(rows), cat(start), cat(size), cat(length))
    if shuffle:
        plan = plan.select(torch.randperm(len(plan), generator=g))
    return plan


def _bucket_counts(bucket: np.ndarray, block: int = 1 << 20) -> tuple[list[int], list[int]]:
    """The bucket lengths present (ascending) and their pair counts; counted block by block (np.bincount would
    make an int64 copy of the whole array)."""
    counts = np.zeros(int(bucket.max()) + 1 if len(bucket) else 0, np.int64)
    for a in range(0, len(bucket), block):
        counts += np.bincount(bucket[a : a + block], minlength=len(counts))
    present = np.flatnonzero(counts)
    return present.tolist(), counts[present].tolist()


def _rows_by_bucket(bucket: np.ndarray, buckets: list[int], starts: list[int], total: int, block: int = 1 << 20):
    """int32 rows of `total` slots holding each bucket's row indices in ascending order from its slot `starts[k]`
    on: a counting sort, block by block, so the only temporaries are one block's (no argsort of the whole split)."""
    rows = np.empty(total, np.int32)
    filled = dict(zip(buckets, starts))
    for a in range(0, len(bucket), block):
        part = bucket[a : a + block]
        order = np.argsort(part, kind="stable")  # a radix sort of small ints; within a bucket, ascending rows
        count = np.bincount(part, minlength=max(buckets) + 1)[buckets]
        for L, i, c in zip(buckets, np.cumsum(count) - count, count.tolist()):
            rows[filled[L] : filled[L] + c] = order[i : i + c] + a
            filled[L] += c
    return rows


def shard(plan, rank: int, world: int):
    """Disjoint equal shares for `world` ranks; the last batches wrap around so counts match."""
    if world == 1:
        return plan
    n = math.ceil(len(plan) / world) * world
    order = list(range(len(plan)))
    mine = (order + order[: n - len(plan)])[rank::world]
    return plan.select(mine) if isinstance(plan, Plan) else [plan[i] for i in mine]


def _flatten(plan) -> tuple[torch.Tensor, list[int], list[int]]:
    """(all row indices, batch sizes, padded lengths) of a Plan or of a list of (idx, L) pairs."""
    if isinstance(plan, Plan):
        return plan.indices(), plan.size.tolist(), plan.length.tolist()
    return torch.cat([idx for idx, _ in plan]), [len(idx) for idx, _ in plan], [L for _, L in plan]


def iterate(split: Split, plan, device: torch.device, start: int = 0, trim: bool = False):
    """Yield Batch objects on `device`, from batch `start` on: the same tensors on either path of the split.
    trim: drop filler rows and cut each side to its longest sentence (eager CPU steps take any shape, and
    every padded position costs the same as a real one there)."""
    if not len(plan):
        return
    if split.resident:
        yield from _iterate_resident(split, plan, device, start, trim)
    else:
        yield from _iterate_streamed(split, plan, device, start, trim)


def _iterate_resident(split: Split, plan, device: torch.device, start: int, trim: bool):
    # the epoch's indices travel to the device in one copy
    all_idx, sizes, lengths = _flatten(plan)
    real = all_idx < split.n
    safe = all_idx.clamp(max=max(split.n - 1, 0))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    tok = [(split.src_len.index_select(0, safe) * real).long(), (split.tgt_len.index_select(0, safe) * real).long()]
    bounds = torch.tensor(offsets[1:], dtype=torch.int64)
    n_src, n_tgt = (
        torch.diff(torch.cumsum(t, 0)[bounds - 1], prepend=torch.zeros(1, dtype=torch.int64)).tolist() for t in tok
    )
    all_idx_dev = all_idx.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else all_idx
    for k in range(start, len(sizes)):
        src_width = tgt_width = lengths[k]
        idx = all_idx_dev[offsets[k] : offsets[k + 1]]
        if trim:
            batch = slice(offsets[k], offsets[k + 1])
            idx = idx[real[batch]]
            src_width, tgt_width = int(tok[0][batch].max()), int(tok[1][batch].max())
        # index_select, not split.src[idx, :L]: the same tensors, but CPU advanced indexing can take milliseconds
        yield Batch(
            split.src[:, :src_width].index_select(0, idx),
            split.tgt[:, :tgt_width].index_select(0, idx),
            split.tgt[:, 1 : tgt_width + 1].index_select(0, idx),
            n_src[k],
            n_tgt[k],
        )


def _host_batch(split: Split, idx: torch.Tensor, L: int, trim: bool = False):
    """A batch's int64 arrays (source, target in, target out) and its token counts: one (3, rows, L) array
    (one pinned copy to a GPU), or with `trim` three arrays cut to their side's longest sentence."""
    src, tgt = split.rows(idx, L)
    is_real = idx < split.n
    src_len, tgt_len = split.src_len[idx[is_real]], split.tgt_len[idx[is_real]]
    if trim:
        keep, src_width, tgt_width = is_real.numpy(), int(src_len.max()), int(tgt_len.max())
        arrays = tuple(
            np.ascontiguousarray(a[keep]) for a in (src[:, :src_width], tgt[:, :tgt_width], tgt[:, 1 : tgt_width + 1])
        )
    else:
        arrays = np.stack([src, tgt[:, :L], tgt[:, 1:]])
    return arrays, int(src_len.sum()), int(tgt_len.sum())


def _iterate_streamed(split: Split, plan, device: torch.device, start: int, trim: bool):
    """Batches built from the memory-mapped arrays by a background thread, PREFETCH ahead of the caller."""
    q: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for k in range(start, len(plan)):
                if not put(_host_batch(split, *plan[k], trim)):
                    return
                if (k - start) % RELEASE_EVERY == RELEASE_EVERY - 1:
                    split.release()
            put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put(e)

    worker = threading.Thread(target=produce, name=f"batches-{split.name}", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            arrays, n_src, n_tgt = item
            if isinstance(arrays, tuple):  # trimmed: CPU steps
                yield Batch(*(torch.from_numpy(a) for a in arrays), n_src, n_tgt)
                continue
            t = torch.from_numpy(arrays)
            if device.type == "cuda":  # pinned: the copy overlaps the running step and never syncs the host
                t = t.pin_memory().to(device, non_blocking=True)
            yield Batch(t[0], t[1], t[2], n_src, n_tgt)
    finally:
        stop.set()
        worker.join()
