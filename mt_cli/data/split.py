"""One prepared split for training and evaluation: device-resident padded matrices when they fit the memory
budget (the fast path), else rows built on the fly from the memory-mapped arrays (the streamed path)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mt_cli.data.arrays import SIDES, MappedArray, array_path, load_array, row_lengths
from mt_cli.data.sources import DataError
from mt_cli.data.vocab import BOS, EOS, PAD

RESIDENT_MAX_MB = 1024  # the default of data.resident_max_mb


class Split:
    """A prepared split: `path` is <corpus folder>/<split name> (a trailing .pt, the old format's name, is
    accepted). Row `n` is an all-padding filler row. `resident` forces (True) or forbids (False) the padded
    matrices; None decides by their size against `resident_max_mb`."""

    def __init__(
        self, path: Path, bucket_width: int = 8, resident: bool | None = None, resident_max_mb: float = RESIDENT_MAX_MB
    ):
        path = Path(path)
        self.folder, self.name = path.parent, path.name.removesuffix(".pt")
        self.bucket_width = bucket_width
        lens = {}
        for side in SIDES:
            p = array_path(self.folder, self.name, side, offsets=True)
            if not p.is_file():
                raise DataError(f"{p}: missing; run `mt prepare` again")
            lens[side] = row_lengths(p)
        if len(lens["src"]) != len(lens["tgt"]):
            raise DataError(
                f"{self.folder}: split {self.name} has {len(lens['src'])} source rows but "
                f"{len(lens['tgt'])} target rows; run `mt prepare --force`"
            )
        self.n = len(lens["src"])
        for side in SIDES:  # in place: the arrays are ours, and a 10M-pair split has no room for copies
            lens[side] += 1  # + <eos> (on the target side, what the loss counts)
        self.src_len, self.tgt_len = torch.from_numpy(lens["src"]), torch.from_numpy(lens["tgt"])
        self.bucket = torch.from_numpy(_buckets(lens["src"], lens["tgt"], bucket_width))
        self.width = self._round(
            max(1, int(self.src_len.max()) if self.n else 1, int(self.tgt_len.max()) if self.n else 1)
        )
        self.matrix_mb = (self.n + 1) * (2 * self.width + 1) * 8 / 2**20  # both padded int64 matrices
        self.resident = self.matrix_mb <= resident_max_mb if resident is None else resident
        self.device = torch.device("cpu")
        self._arrays = {
            s: (
                MappedArray(array_path(self.folder, self.name, s)),
                MappedArray(array_path(self.folder, self.name, s, offsets=True)),
            )
            for s in SIDES
        }
        for side in SIDES:
            tokens, offsets = self._arrays[side]
            if offsets.n != self.n + 1 or (self.n and int(offsets.array[-1]) != tokens.n):
                raise DataError(f"{tokens_path(self, side)}: does not match its offsets; run `mt prepare --force`")
        if self.resident:
            self._build_matrices()
            self._arrays = None  # the matrices hold everything: no file stays mapped

    def _round(self, n: int) -> int:
        w = self.bucket_width
        return max(w, math.ceil(n / w) * w)

    @property
    def description(self) -> str:
        """One line for the training log: which path this split takes and why."""
        size = f"{self.matrix_mb:,.0f} MB" if self.resident else f"padded, it would take {self.matrix_mb:,.0f} MB"
        how = "device-resident padded matrices" if self.resident else "streamed from memory-mapped arrays"
        return f"{self.name}: {self.n:,} pairs, {how} ({size})"

    def _build_matrices(self) -> None:
        flat = {s: torch.from_numpy(load_array(array_path(self.folder, self.name, s)).astype(np.int64)) for s in SIDES}
        src_lens, tgt_lens = self.src_len.long() - 1, self.tgt_len.long() - 1
        self.src = torch.full((self.n + 1, self.width), PAD, dtype=torch.int64)
        self.tgt = torch.full((self.n + 1, self.width + 1), PAD, dtype=torch.int64)
        self.src[self.n, 0] = EOS  # filler rows attend to one token, never to nothing
        _scatter_rows(self.src, flat["src"], src_lens, first=0)
        self.src[torch.arange(self.n), src_lens] = EOS
        self.tgt[: self.n, 0] = BOS
        _scatter_rows(self.tgt, flat["tgt"], tgt_lens, first=1)
        self.tgt[torch.arange(self.n), tgt_lens + 1] = EOS

    def __len__(self) -> int:
        return self.n

    def to(self, device) -> "Split":
        self.device = torch.device(device)
        if self.resident:
            self.src, self.tgt = self.src.to(device), self.tgt.to(device)
        return self

    def rows(self, idx: torch.Tensor, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded int64 (source, target) rows `idx` on the host, `length` and `length` + 1 wide, as the resident
        matrices hold them: source ids + <eos>; <bos> + target ids + <eos>; filler rows (idx n) as padding."""
        idx = idx.cpu().numpy()
        return self._side_rows("src", idx, length), self._side_rows("tgt", idx, length + 1)

    def _side_rows(self, side: str, idx: np.ndarray, width: int) -> np.ndarray:
        tokens, offsets = self._arrays[side]
        first = 1 if side == "tgt" else 0  # the target rows start with <bos>
        real = idx < self.n
        safe = np.where(real, idx, 0)
        start = offsets.array[safe]
        n_tok = np.where(real, offsets.array[np.minimum(safe + 1, self.n)] - start, 0)
        cols = np.arange(width) - first
        inside = (cols >= 0) & (cols < n_tok[:, None])
        pos = np.where(inside, start[:, None] + cols, 0)
        m = np.where(inside, tokens.array[pos] if tokens.n else 0, PAD).astype(np.int64)
        m[real, n_tok[real] + first] = EOS
        if first:
            m[real, 0] = BOS
        else:
            m[~real, 0] = EOS  # filler rows attend to one token, never to nothing
        return m

    def release(self) -> None:
        """Drop the mapped pages read so far from this process's memory (the streamed path calls it now and then)."""
        for tokens, offsets in (self._arrays or {}).values():
            tokens.release()
            offsets.release()

    def source_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Source ids of sentences `idx`, trimmed to their longest."""
        L = int(self.src_len[idx].max()) if len(idx) else 1
        if self.resident:
            return self.src[:, :L].index_select(0, idx.to(self.src.device))
        return torch.from_numpy(self._side_rows("src", idx.cpu().numpy(), L)).to(self.device)


def tokens_path(split: Split, side: str) -> Path:
    return array_path(split.folder, split.name, side)


def _buckets(src_len: np.ndarray, tgt_len: np.ndarray, width: int, block: int = 1 << 20) -> np.ndarray:
    """Each pair's bucket: its longer side rounded up to a multiple of `width` (at least `width`), computed block
    by block in the lengths' dtype, so that the temporaries stay small whatever the split's size."""
    out = np.empty(len(src_len), np.result_type(src_len, tgt_len))
    for a in range(0, len(out), block):
        longest = np.maximum(src_len[a : a + block], tgt_len[a : a + block])
        longest += width - 1
        longest //= width
        np.maximum(longest, 1, out=longest)
        longest *= width
        out[a : a + block] = longest
    return out


def _scatter_rows(matrix: torch.Tensor, flat: torch.Tensor, lens: torch.Tensor, first: int) -> None:
    """Write the concatenated sequences `flat` (lengths `lens`) into rows 0..n-1 of `matrix`,
    starting at column `first`, in one indexing operation."""
    rows = torch.repeat_interleave(torch.arange(len(lens)), lens)
    starts = torch.cumsum(lens, 0) - lens
    cols = torch.arange(len(flat)) - torch.repeat_interleave(starts, lens) + first
    matrix[rows, cols] = flat
