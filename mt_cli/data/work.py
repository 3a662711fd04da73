"""What `mt prepare`'s worker processes do to one chunk of raw lines: count tokens, normalize, or encode."""

from __future__ import annotations

from collections import Counter
from itertools import chain

import numpy as np

from mt_cli.data.clean import REASONS, pair_digests, pair_filter
from mt_cli.data.stream import BOM, TOKEN_SEP, Chunk, decode_chunk, decode_side
from mt_cli.data.tokenize import flatten, normalize_lines

_JOB: dict = {}  # this process's job: set once per worker by init(), read by the chunk functions


def init(job: dict) -> None:
    _JOB.clear()
    _JOB.update(job)


def _normalized(c: Chunk) -> tuple[list[str], list[str], list[str]]:
    """The raw source lines of a chunk, and the normalized lines of each side."""
    src, tgt = decode_chunk(c)
    if c.pick is not None:  # a sample: only these lines are normalized
        src, tgt = [src[i] for i in c.pick], [tgt[i] for i in c.pick]
    lc = _JOB["data"].lowercase
    return src, normalize_lines(src, lc), normalize_lines(tgt, lc)


def count_tokens(c: Chunk) -> tuple[Counter, Counter, bytes, bytes]:
    """Word-token counts of both sides of a training chunk (for the word vocabularies), and the tokens
    (one line per sentence) so that the encoding pass need not tokenize again."""
    _, src, tgt = _normalized(c)
    out = []
    for codec, texts in zip(_JOB["codecs"], (src, tgt)):
        toks = codec.tokenize_normalized(texts)
        out.append((Counter(chain.from_iterable(toks)), "".join(TOKEN_SEP.join(t) + "\n" for t in toks).encode()))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def normalized_text(c: Chunk) -> tuple[bytes, bytes, int, int]:
    """The normalized non-empty lines of both sides (sentencepiece's training input) and their counts."""
    _, src, tgt = _normalized(c)
    src, tgt = ([t for t in side if t] if "" in side else side for side in (src, tgt))
    return _lines_blob(src), _lines_blob(tgt), len(src), len(tgt)


def _lines_blob(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else b""


def encode(c: Chunk) -> dict:
    """Ids, lengths and texts of the pairs of a chunk that are kept (training: after the cleaning rules; the
    duplicate rule needs the whole corpus and is applied by the caller to the `digests`)."""
    raw_src, src, tgt = _normalized(c)
    data = _JOB["data"]
    codecs = _JOB["codecs"]
    if c.tokens is not None:  # tokenized by the fitting pass already
        words = [[t.split(TOKEN_SEP) if t else [] for t in decode_side(b, c.n, 2, "tokens")] for b in c.tokens]
        (src_ids, src_len), (tgt_ids, tgt_len) = (
            flatten([codec.vocab.encode(w) for w in side]) for codec, side in zip(codecs, words)
        )
    else:
        (src_ids, src_len), (tgt_ids, tgt_len) = (codec.encode_flat(texts) for codec, texts in zip(codecs, (src, tgt)))
    if c.split == "train":
        keep, counts = pair_filter(src_len, tgt_len, src, tgt, data)
    else:  # evaluation splits keep every line: their scores must cover the whole test set
        keep, counts = np.ones(len(src), bool), dict.fromkeys(REASONS, 0)
    rows = np.flatnonzero(keep)
    dtype = _JOB["dtype"]
    everything = len(rows) == len(src)
    return {
        "n": c.n,
        "counts": counts,
        "src_len": src_len[rows],
        "tgt_len": tgt_len[rows],
        "src": (src_ids if everything else src_ids[np.repeat(keep, src_len)]).astype(dtype),
        "tgt": (tgt_ids if everything else tgt_ids[np.repeat(keep, tgt_len)]).astype(dtype),
        # the texts as the bytes the files get: the reading process only writes them (no strings to unpickle)
        "src_text": _raw_source(c, raw_src) if everything else _lines_blob([raw_src[i] for i in rows]),
        "ref_text": _lines_blob(tgt if everything else [tgt[i] for i in rows]),
        "digests": pair_digests([src[i] for i in rows], [tgt[i] for i in rows])
        if c.split == "train" and data.dedup
        else None,
        "samples": _samples(c, [src[i] for i in rows], [tgt[i] for i in rows]) if c.split == "train" else [],
    }


def _samples(c: Chunk, src: list[str], tgt: list[str]) -> list[dict]:
    """data.subword_samples sampled segmentations of the kept pairs, each {src, src_len, tgt, tgt_len}. The seed
    comes from the sample's number and the chunk's first line, so any number of workers draws the same."""
    data, codecs, dtype = _JOB["data"], _JOB["codecs"], _JOB["dtype"]
    out = []
    for k in range(1, data.subword_samples + 1):
        sample = {}
        for side, codec, texts in zip(("src", "tgt"), codecs, (src, tgt)):
            seed = (k * 1_000_003 + (side == "tgt") * 7_919 + c.first) * 2_654_435_761
            ids, lens = codec.encode_sampled(texts, data.subword_alpha, seed, data.max_len)
            sample[side], sample[f"{side}_len"] = ids.astype(dtype), lens
        out.append(sample)
    return out


def _raw_source(c: Chunk, lines: list[str]) -> bytes:
    """The source lines of a whole chunk as UTF-8 lines: the bytes read, where decoding changed nothing."""
    if c.tgt is not None and b"\r" not in c.src and not (c.first == 1 and c.src.startswith(BOM)):
        return c.src
    return _lines_blob(lines)
