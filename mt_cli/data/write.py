"""The encoding pass of `mt prepare`: every split streamed through the workers into its arrays and text files."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np

from mt_cli.data import work
from mt_cli.data.arrays import SIDES, ArrayWriter, OffsetsWriter, array_path, token_dtype
from mt_cli.data.clean import REASONS, DigestSet
from mt_cli.data.multilingual import split_langs
from mt_cli.data.sources import DataError
from mt_cli.data.stream import ordered_map, read_chunks
from mt_cli.data.vocab import UNK


def _select_ids(r: dict, keep: np.ndarray) -> dict:
    """The ids and lengths of both sides in `r` restricted to the pairs in `keep`."""
    out = dict(r)
    for side in SIDES:
        out[side] = r[side][np.repeat(keep, r[f"{side}_len"])]
        out[f"{side}_len"] = r[f"{side}_len"][keep]
    return out


def _select(r: dict, keep: np.ndarray) -> dict:
    """Chunk result `r` restricted to the pairs in `keep`."""
    rows = np.flatnonzero(keep)
    out = _select_ids(r, keep)
    out["samples"] = [_select_ids(sample, keep) for sample in r.get("samples", [])]
    for key in ("src_text", "ref_text"):  # UTF-8 lines, each ending in a newline (none inside: \r is gone too)
        lines = r[key].split(b"\n")
        out[key] = b"".join(lines[i] + b"\n" for i in rows)
    return out


class SplitWriter:
    """The files of one split in the (temporary) corpus folder, appended chunk by chunk."""

    def __init__(self, folder: Path, name: str, data, dtype):
        self.name = name
        self.tokens = {s: ArrayWriter(array_path(folder, name, s), dtype) for s in SIDES}
        self.offsets = {s: OffsetsWriter(array_path(folder, name, s, offsets=True)) for s in SIDES}
        src_lang, tgt_lang = split_langs(data, name)
        self.src_text = open(folder / f"{name}.{src_lang}", "wb")  # UTF-8 lines from the workers
        self.ref_text = open(folder / f"{name}.ref.{tgt_lang}", "wb")
        self.seen = DigestSet() if name == "train" and data.dedup else None
        # the sampled segmentations of the training split: splits train.s1 ... (ids only; the text is train's)
        self.samples = [
            {
                s: (
                    ArrayWriter(array_path(folder, f"{name}.s{k}", s), dtype),
                    OffsetsWriter(array_path(folder, f"{name}.s{k}", s, offsets=True)),
                )
                for s in SIDES
            }
            for k in range(1, (data.subword_samples if name == "train" else 0) + 1)
        ]
        self.sample_info = [{"pairs": 0, "src_tokens": 0, "tgt_tokens": 0} for _ in self.samples]
        self.info = {
            "pairs": 0,
            "raw_lines": 0,
            **{f"skipped_{k}": 0 for k in REASONS},
            "src_tokens": 0,
            "tgt_tokens": 0,
            "tgt_unk": 0,
        }

    def add(self, r: dict) -> None:
        counts = dict(r["counts"])
        if self.seen is not None:
            new = self.seen.add_new(r["digests"])
            counts["duplicate"] = int((~new).sum())
            if counts["duplicate"]:
                r = _select(r, new)
        for side in SIDES:
            self.tokens[side].append(r[side])
            self.offsets[side].add_lengths(r[f"{side}_len"])
            self.info[f"{side}_tokens"] += len(r[side])
        for writers, sample, totals in zip(self.samples, r["samples"], self.sample_info):
            for side, (tokens, offsets) in writers.items():
                tokens.append(sample[side])
                offsets.add_lengths(sample[f"{side}_len"])
                totals[f"{side}_tokens"] += len(sample[side])
            totals["pairs"] += len(sample["src_len"])
        self.src_text.write(r["src_text"])
        self.ref_text.write(r["ref_text"])
        self.info["pairs"] += len(r["src_len"])
        self.info["raw_lines"] += r["n"]
        self.info["tgt_unk"] += int(np.count_nonzero(r["tgt"] == UNK))
        for k, v in counts.items():
            self.info[f"skipped_{k}"] += v

    def close(self) -> dict:
        sampled = (w for writers in self.samples for pair in writers.values() for w in pair)
        for w in chain(self.tokens.values(), self.offsets.values(), sampled):
            w.close()
        self.src_text.close()
        self.ref_text.close()
        return self.info


def _skipped(info: dict, data) -> str:
    why = {
        "empty": "with an empty side",
        "too_long": f"longer than max_len={data.max_len} tokens",
        "ratio": f"with a length ratio above max_ratio={data.max_ratio}",
        "identical": "with identical sides",
        "duplicate": "repeating an earlier pair",
    }
    return ", ".join(f"{info[f'skipped_{k}']} {why[k]}" for k in REASONS if info[f"skipped_{k}"])


def write_splits(
    folder: Path, specs: dict[str, list[Path]], data, codecs, workers: int, log, train_tokens: list[Path] | None = None
) -> dict:
    """Encode every split (training first) into `folder`; returns the manifest's per-split counts.
    `train_tokens`: the training text tokenized already (word-level corpora), used instead of tokenizing again."""
    dtype = token_dtype(max(len(c.vocab) for c in codecs))
    job = {"data": data, "codecs": codecs, "dtype": dtype}
    chunks = chain.from_iterable(
        read_chunks(name, files, train_tokens if name == "train" else None) for name, files in specs.items()
    )
    info: dict[str, dict] = {}
    writers: dict[str, SplitWriter] = {}
    try:
        for name, r in ordered_map(_encode, chunks, workers, work.init, job):
            if name not in writers:
                if writers:
                    _finish(writers, info, specs, data, log)
                writers[name] = SplitWriter(folder, name, data, dtype)
            writers[name].add(r)
        _finish(writers, info, specs, data, log)
    finally:
        for w in writers.values():
            w.close()
        for p in train_tokens or []:
            p.unlink(missing_ok=True)
    return info


def _encode(chunk) -> tuple[str, dict]:
    return chunk.split, work.encode(chunk)


def _finish(writers: dict, info: dict, specs: dict, data, log) -> None:
    """Close the split being written, log its counts, and refuse a training split that kept nothing."""
    name = next(reversed(writers))
    w = writers.pop(name)
    info[name] = w.close()
    for k, counts in enumerate(w.sample_info, 1):  # the manifest lists them, so a lost one makes it stale
        info[f"{name}.s{k}"] = counts
    if w.sample_info:
        grown = sum(c["src_tokens"] + c["tgt_tokens"] for c in w.sample_info) / len(w.sample_info)
        usual = info[name]["src_tokens"] + info[name]["tgt_tokens"]
        log(
            f"{name}: {len(w.sample_info)} sampled segmentations (data.subword_alpha={data.subword_alpha}), "
            f"{grown / max(usual, 1) - 1:+.1%} tokens"
        )
    skipped = _skipped(info[name], data)
    if skipped:
        log(f"{name}: skipped {skipped}")
    if name == "train" and not info[name]["pairs"]:
        raise DataError(
            f"{specs['train'][0]}: no usable training pairs: all {info[name]['raw_lines']} were skipped "
            f"({skipped}); check the file, data.max_len and the cleaning options"
        )
    log(f"{name}: {info[name]['pairs']} pairs")
