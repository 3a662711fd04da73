"""Vocabulary: itos/stoi with fixed special ids, built from training tokens only."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

# Fixed special ids, the same in every vocabulary (the torchtext order of the original design).
UNK, PAD, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<unk>", "<pad>", "<bos>", "<eos>")


class Vocab:
    def __init__(self, tokens: Iterable[str], with_specials: bool = True):
        itos = list(SPECIALS) if with_specials else []
        seen = set(itos)
        for t in tokens:
            if t not in seen:
                itos.append(t)
                seen.add(t)
        self.itos = itos
        self.stoi = {t: i for i, t in enumerate(itos)}

    @classmethod
    def build(cls, sentences: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        """Specials first, then tokens by descending frequency (ties alphabetical, so builds are reproducible)."""
        return cls.from_counts(Counter(t for s in sentences for t in s), min_freq, max_size)

    @classmethod
    def from_counts(cls, counts: Counter, min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        """As build, from token counts (summed over a corpus streamed in chunks)."""
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_freq and t not in SPECIALS), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls(ranked)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t, UNK) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]
