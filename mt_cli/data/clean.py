"""Cleaning of training pairs (the config's data.* options), applied to the training split only and counted."""

from __future__ import annotations

import hashlib

import numpy as np

# Why a training pair is dropped, in the order the rules apply; manifest key skipped_<reason>.
REASONS = ("empty", "too_long", "ratio", "identical", "duplicate")


def pair_filter(src_len: np.ndarray, tgt_len: np.ndarray, src: list[str], tgt: list[str], data) -> tuple:
    """(keep mask, {reason: count}) for one chunk of pairs; `src`/`tgt` are the normalized texts.
    Duplicates need the whole corpus seen so far: DigestSet does that after this."""
    counts = dict.fromkeys(REASONS, 0)
    keep = np.ones(len(src_len), bool)

    def drop(reason: str, mask: np.ndarray) -> None:
        hit = keep & mask
        counts[reason] = int(hit.sum())
        keep[hit] = False

    drop("empty", (src_len == 0) | (tgt_len == 0))
    drop("too_long", (src_len > data.max_len) | (tgt_len > data.max_len))
    if data.max_ratio is not None:
        longer, shorter = np.maximum(src_len, tgt_len), np.maximum(np.minimum(src_len, tgt_len), 1)
        drop("ratio", longer > data.max_ratio * shorter)
    if data.drop_identical:
        drop("identical", np.fromiter((a == b for a, b in zip(src, tgt)), bool, len(src)))
    return keep, counts


def pair_digests(src: list[str], tgt: list[str]) -> np.ndarray:
    """An 8-byte BLAKE2b digest per (normalized) pair: two pairs share one only if they are equal, or with a
    chance of about n²/2⁶⁵ for n pairs (one false duplicate in 10 billion pairs)."""
    out = np.empty(len(src), np.uint64)
    for i, (a, b) in enumerate(zip(src, tgt)):
        out[i] = int.from_bytes(hashlib.blake2b(f"{a}\t{b}".encode(), digest_size=8).digest(), "little")
    return out


class DigestSet:
    """The digests of the pairs seen so far, for exact-duplicate removal in a streaming pass.

    Memory grows by 8 bytes per unique pair (80 MB at 10M pairs; plus a merge copy), held as a few sorted
    numpy arrays whose sizes halve level by level: lookups are binary searches, inserts are merges."""

    def __init__(self):
        self.levels: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(a) for a in self.levels)

    def add_new(self, digests: np.ndarray) -> np.ndarray:
        """Mask of the digests not seen before (the first of equal ones inside `digests` counts as new);
        the new ones are added."""
        _, first = np.unique(digests, return_index=True)
        new = np.zeros(len(digests), bool)
        new[first] = True
        for level in self.levels:
            pos = np.searchsorted(level, digests)
            seen = (pos < len(level)) & (level[np.minimum(pos, len(level) - 1)] == digests)
            new &= ~seen
        self._insert(np.sort(digests[new]))
        return new

    def _insert(self, run: np.ndarray) -> None:
        if not len(run):
            return
        # merge while the newest level is not bigger than the run: log2(n) levels, each item merged log2(n) times
        while self.levels and len(self.levels[-1]) <= 2 * len(run):
            run = np.sort(np.concatenate([self.levels.pop(), run]), kind="stable")
        self.levels.append(run)
