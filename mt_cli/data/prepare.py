"""`mt prepare`: raw parallel text → tokenized, numericalized corpus under data/<name>/; and loading it."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from mt_cli import __version__
from mt_cli.atomic import write_json, write_text
from mt_cli.config import Config, DataConfig
from mt_cli.data.batching import Split
from mt_cli.data.sources import (DataError, fetch_multi30k, fresh_tempdir, multi30k_source, multi30k_splits,
                                 read_parallel, read_split_files, sha256_of, split_files)
from mt_cli.data.tokenize import SideCodec, normalize
from mt_cli.data.vocab import Vocab
from mt_cli.torch_io import safe_load

MANIFEST = "manifest.json"


def corpus_dir(data: DataConfig) -> Path:
    return Path(data.root) / data.corpus_name


def is_prepared(data: DataConfig) -> bool:
    m = corpus_dir(data) / MANIFEST
    if not m.is_file():
        return False
    try:
        man = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if data.corpus == "files" and man.get("files_sha256") != user_file_sums(data):
        return False
    return man.get("fingerprint") == data.fingerprint() and all(
        (corpus_dir(data) / f"{s}.pt").is_file() for s in man.get("splits", {}))


def _raw_splits(data: DataConfig, source: str | None, log) -> tuple[dict[str, tuple[list[str], list[str]]], dict]:
    """Read every split as (source lines, target lines); Multi30k files are verified first."""
    if data.corpus == "multi30k":
        names = multi30k_splits(data.src_lang, data.tgt_lang)
        files = [f"{s}.{lang}.gz" for s in names for lang in (data.src_lang, data.tgt_lang)]
        raw_dir = Path(data.root) / "multi30k_raw"
        if not all((raw_dir / f).is_file() for f in files):  # a complete cache needs no source
            source = multi30k_source(source)
        log(f"fetching {len(files)} Multi30k files into {raw_dir} ({'from ' + source if source else 'download or cache'})")
        sums = fetch_multi30k(files, raw_dir, source)
        splits = {s: read_parallel(raw_dir / f"{s}.{data.src_lang}.gz", raw_dir / f"{s}.{data.tgt_lang}.gz")
                  for s in names}
        splits["valid"] = splits.pop("val")
        return splits, sums
    specs = user_splits(data)
    log(f"reading {', '.join(f'{s} ({spec})' for s, spec in specs.items())}")
    return {s: read_split_files(spec, data.src_lang, data.tgt_lang) for s, spec in specs.items()}, user_file_sums(data)


def user_splits(data: DataConfig) -> dict[str, str]:
    """Split name -> file spec of a 'files' corpus. Test splits are named after their file, with a
    'test_' prefix where the name lacks 'test' at the start (training tests every test* split)."""
    specs = {"train": data.train, "valid": data.valid}
    for t in data.test:
        name = Path(t).name.removesuffix(".gz").removesuffix(".tsv")
        name = name if name.startswith("test") else f"test_{name}"
        if name in specs:
            raise DataError(f"data.test: {t} and {specs[name]} would both be split {name!r}; rename one")
        specs[name] = t
    return specs


def user_file_sums(data: DataConfig) -> dict[str, str]:
    """SHA-256 of every input file of a 'files' corpus: an edited file makes the prepared corpus stale."""
    sums = {}
    for spec in user_splits(data).values():
        for f in split_files(spec, data.src_lang, data.tgt_lang):
            sums[str(f)] = sha256_of(f) if f.is_file() else "missing"
    return sums


def _build_codecs(data: DataConfig, train_src: list[str], train_tgt: list[str], log):
    kw = dict(lowercase=data.lowercase)
    if data.tokenizer == "sentencepiece":
        log(f"training sentencepiece {data.sp_type} models (vocab {data.sp_vocab_size}"
            f"{', joint' if data.joint_vocab else ''})")
        if data.joint_vocab:
            joint = SideCodec.train_sentencepiece(train_src + train_tgt, data.src_lang, data.lowercase,
                                                  data.sp_type, data.sp_vocab_size)
            return joint, SideCodec("sentencepiece", data.tgt_lang, data.lowercase, joint.vocab, joint.sp_model)
        return tuple(SideCodec.train_sentencepiece(texts, lang, data.lowercase, data.sp_type, data.sp_vocab_size)
                     for texts, lang in ((train_src, data.src_lang), (train_tgt, data.tgt_lang)))
    codecs = []
    for texts, lang in ((train_src, data.src_lang), (train_tgt, data.tgt_lang)):
        c = SideCodec("spacy", lang, vocab=Vocab([]), **kw)
        c.vocab = Vocab.build(c.tokenize(texts), data.min_freq, data.max_size)
        codecs.append(c)
    return tuple(codecs)


def _pack(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    return flat, offsets


def prepare_corpus(data: DataConfig, source: str | None = None, force: bool = False,
                   log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the prepared corpus for `data`; returns its folder."""
    out = corpus_dir(data)
    if not force and is_prepared(data):
        log(f"{out}: prepared corpus is up to date (data config {data.fingerprint()}), reusing it")
        return out
    t0 = time.time()
    splits, sums = _raw_splits(data, source, log)
    train_src, train_tgt = splits["train"]
    src_codec, tgt_codec = _build_codecs(data, train_src, train_tgt, log)
    log(f"vocabularies: {data.src_lang} {len(src_codec.vocab)}, {data.tgt_lang} {len(tgt_codec.vocab)}")
    tmp = fresh_tempdir(out.parent)
    try:
        info = {}
        for name, (src, tgt) in splits.items():
            src_ids, tgt_ids = src_codec.encode(src), tgt_codec.encode(tgt)
            keep = list(range(len(src)))
            n_empty = n_long = 0
            if name == "train":
                keep = []
                for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
                    if not s or not t:
                        n_empty += 1
                    elif len(s) > data.max_len or len(t) > data.max_len:
                        n_long += 1
                    else:
                        keep.append(i)
            s_flat, s_off = _pack([src_ids[i] for i in keep])
            t_flat, t_off = _pack([tgt_ids[i] for i in keep])
            torch.save({"src": s_flat, "src_off": s_off, "tgt": t_flat, "tgt_off": t_off}, tmp / f"{name}.pt")
            write_text(tmp / f"{name}.{data.src_lang}", "".join(src[i] + "\n" for i in keep))
            write_text(tmp / f"{name}.ref.{data.tgt_lang}",
                       "".join(normalize(tgt[i], data.lowercase) + "\n" for i in keep))
            unk = sum(1 for i in keep for t in tgt_ids[i] if t == 0)
            info[name] = {"pairs": len(keep), "raw_lines": len(src), "skipped_empty": n_empty,
                          "skipped_too_long": n_long, "src_tokens": int(s_off[-1]), "tgt_tokens": int(t_off[-1]),
                          "tgt_unk": unk}
            if n_empty or n_long:
                log(f"{name}: skipped {n_empty} pairs with an empty side and {n_long} longer than "
                    f"max_len={data.max_len} tokens")
            log(f"{name}: {len(keep)} pairs")
        torch.save({"src": src_codec.state(), "tgt": tgt_codec.state()}, tmp / "codecs.pt")
        write_json(tmp / f"vocab.{data.src_lang}.json", src_codec.vocab.itos)
        write_json(tmp / f"vocab.{data.tgt_lang}.json", tgt_codec.vocab.itos)
        write_json(tmp / MANIFEST, {
            "fingerprint": data.fingerprint(), "data_config": {k: v for k, v in vars(data).items()},
            "splits": info, "files_sha256": sums, "vocab_sizes": {"src": len(src_codec.vocab),
                                                                  "tgt": len(tgt_codec.vocab)},
            "mt_cli_version": __version__, "seconds": round(time.time() - t0, 1)})
        # Swap the whole folder in at once: a reader sees the old corpus or the new one, never a mix.
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"prepared {out} in {time.time() - t0:.1f}s")
    return out


def load_manifest(folder: Path) -> dict:
    m = folder / MANIFEST
    if not m.is_file():
        raise DataError(f"{folder}: no prepared corpus; run `mt prepare --config <your config>` first")
    return json.loads(m.read_text(encoding="utf-8"))


def load_corpus(cfg: Config, bucket_width: int):
    """The prepared corpus of `cfg`: (codecs, train split, valid split, manifest)."""
    folder = corpus_dir(cfg.data)
    man = load_manifest(folder)
    if man.get("fingerprint") != cfg.data.fingerprint():
        raise DataError(f"{folder}: prepared with another data config; run `mt prepare --config <this config>`")
    if cfg.data.corpus == "files":  # a file edited since `mt prepare` (files absent here, e.g. on a GPU box, are fine)
        now, then = user_file_sums(cfg.data), man.get("files_sha256") or {}
        changed = [f for f, s in now.items() if s != "missing" and then.get(f) not in (None, s)]
        if changed:
            raise DataError(f"{changed[0]}: changed since `mt prepare` built {folder}; run `mt prepare` again")
    codec_state = safe_load(folder / "codecs.pt", "prepared file", DataError, fix="run `mt prepare --force`")
    codecs = {side: SideCodec.from_state(codec_state[side]) for side in ("src", "tgt")}
    return codecs, Split(folder / "train.pt", bucket_width), Split(folder / "valid.pt", bucket_width), man
