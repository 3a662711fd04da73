"""`mt prepare`: raw parallel text → tokenized, numericalized corpus under data/<name>/; and loading it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from mt_cli import __version__
from mt_cli.atomic import check_writable, explain, no_new_folders_on_failure, write_json
from mt_cli.config import Config, DataConfig
from mt_cli.data.arrays import has_split
from mt_cli.data.fit import fit_codecs, token_files
from mt_cli.data.multilingual import merge_directions
from mt_cli.data.sources import (
    DataError,
    fetch_multi30k,
    fresh_tempdir,
    multi30k_source,
    multi30k_splits,
    sha256_of,
    split_files,
)
from mt_cli.data.stream import LineBlocks, default_workers
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import SPECIALS
from mt_cli.data.write import write_splits
from mt_cli.safe_parse import ParseError, load_json

MANIFEST = "manifest.json"
FORMAT = "npy-1"  # per split and side: <split>.<side>.npy tokens + <split>.<side>_off.npy offsets (data/arrays.py)
SMALL_INPUT_BYTES = 32 << 20  # input files smaller than this in all are prepared without worker processes


def corpus_dir(data: DataConfig) -> Path:
    return Path(data.root) / data.corpus_name


def is_prepared(data: DataConfig) -> bool:
    folder = corpus_dir(data)
    try:
        man = load_manifest(folder)
    except DataError:
        return False
    if data.corpus == "files" and man.get("files_sha256") != user_file_sums(data, man):
        return False
    return (
        man.get("fingerprint") == data.fingerprint()
        and man.get("format") == FORMAT
        and all(has_split(folder, s) for s in man.get("splits", {}))
    )


def _split_files(data: DataConfig, source: str | None, log, tmp: Path) -> tuple[dict[str, list[Path]], dict]:
    """The file(s) of every split, training first (Multi30k files are fetched and verified first; several
    directions are merged into files in `tmp`), and the manifest's record of them (checksums; for a 'files'
    corpus also sizes and modification times)."""
    if data.corpus == "multi30k":
        pairs = data.pairs if len(data.pairs) > 1 else [f"{data.src_lang}-{data.tgt_lang}"]
        per_pair = {}
        for pair in pairs:
            s_lang, t_lang = pair.split("-")
            per_pair[pair] = {
                "valid" if s == "val" else s: [Path(data.root) / "multi30k_raw" / f"{s}.{lang}.gz" for lang in (
                    s_lang, t_lang)] for s in multi30k_splits(s_lang, t_lang)
            }  # fmt: skip
        files = list(dict.fromkeys(p.name for splits in per_pair.values() for pair in splits.values() for p in pair))
        raw_dir = Path(data.root) / "multi30k_raw"
        if not all((raw_dir / f).is_file() for f in files):  # a complete cache needs no source
            source = multi30k_source(source)
        origin = f"from {source}" if source else "download or cache"
        log(f"fetching {len(files)} Multi30k files into {raw_dir} ({origin})")
        sums = fetch_multi30k(files, raw_dir, source)
        specs = per_pair[pairs[0]] if len(pairs) == 1 else merge_directions(data, per_pair, tmp)
    else:
        given = user_splits(data)
        log(f"reading {', '.join(f'{s} ({spec})' for s, spec in given.items())}")
        specs = {s: split_files(spec, data.src_lang, data.tgt_lang) for s, spec in given.items()}
        stats = user_file_stats(data)  # before hashing: a file edited meanwhile is hashed again next time
        sums = user_file_sums(data)
    for name, paths in specs.items():  # a missing or empty file answers before any work
        for p in paths:
            blocks = LineBlocks(p)
            try:
                if not blocks.take(1)[1]:
                    raise DataError(f"{p}: empty; the {name} split needs at least one sentence pair")
            finally:
                blocks.close()
    record = {"files_sha256": sums, **({"files_stat": stats} if data.corpus == "files" else {})}  # for the manifest
    return {"train": specs.pop("train"), "valid": specs.pop("valid"), **specs}, record


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


def user_file_stats(data: DataConfig) -> dict[str, list[int]]:
    """Size and modification time of every input file of a 'files' corpus, as the manifest records them."""
    stats = {}
    for spec in user_splits(data).values():
        for f in split_files(spec, data.src_lang, data.tgt_lang):
            if f.is_file():
                st = f.stat()
                stats[str(f)] = [st.st_size, st.st_mtime_ns]
    return stats


def user_file_sums(data: DataConfig, man: dict | None = None) -> dict[str, str]:
    """SHA-256 of every input file of a 'files' corpus: an edited file makes the prepared corpus stale. A file
    whose size and modification time are those the manifest `man` recorded is not read again (hashing the
    files of a 10M-pair corpus takes seconds)."""
    stats, then = ((man or {}).get(k) or {} for k in ("files_stat", "files_sha256"))
    now = user_file_stats(data)
    sums = {}
    for spec in user_splits(data).values():
        for f in split_files(spec, data.src_lang, data.tgt_lang):
            key = str(f)
            if key not in now:
                sums[key] = "missing"
            else:
                sums[key] = then[key] if key in then and stats.get(key) == now[key] else sha256_of(f)
    return sums


def prepare_corpus(
    data: DataConfig,
    source: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    workers: int | None = None,
) -> Path:
    """Build (or reuse) the prepared corpus for `data`, in `workers` processes (default: the cores available,
    or this process alone for a small corpus); returns its folder. Every pass streams the files in chunks, so
    memory does not grow with the corpus."""
    out = corpus_dir(data)
    if not force and is_prepared(data):
        log(f"{out}: prepared corpus is up to date (data config {data.fingerprint()}), reusing it")
        return out
    if workers is not None and workers < 1:
        raise DataError(f"--workers {workers}: must be >= 1")
    check_writable(data.root)  # a file where data.root needs a folder: one line, before anything is created
    with no_new_folders_on_failure(data.root):  # a failed prepare leaves no empty folders behind
        return _prepare(data, source, workers, log, out)


def _prepare(data: DataConfig, source: str | None, workers: int | None, log, out: Path) -> Path:
    t0 = time.time()
    tmp = fresh_tempdir(out.parent)
    try:
        specs, record = _split_files(data, source, log, tmp)
        if workers is None:  # small corpora (Multi30k) are faster in this process than with workers to start
            size = sum(p.stat().st_size for files in specs.values() for p in files if p.is_file())
            workers = default_workers() if size > SMALL_INPUT_BYTES else 1
        log(f"preparing in {workers} worker processes" if workers > 1 else "preparing in this process")
        src_codec, tgt_codec = fit_codecs(data, specs["train"], workers, tmp, log)
        log(f"vocabularies: {data.src_lang} {len(src_codec.vocab)}, {data.tgt_lang} {len(tgt_codec.vocab)}")
        info = write_splits(tmp, specs, data, (src_codec, tgt_codec), workers, log, token_files(data, tmp))
        for path in (p for files in specs.values() for p in files if p.parent == tmp):  # merged directions
            path.unlink()
        save_codecs(tmp / "codecs.pt", src_codec, tgt_codec)
        write_json(tmp / f"vocab.{data.src_lang}.json", src_codec.vocab.itos)
        write_json(tmp / f"vocab.{data.tgt_lang}.json", tgt_codec.vocab.itos)
        write_json(
            tmp / MANIFEST,
            {
                "fingerprint": data.fingerprint(),
                "data_config": {k: v for k, v in vars(data).items()},
                "format": FORMAT,
                "splits": info,
                **record,
                "vocab_sizes": {"src": len(src_codec.vocab), "tgt": len(tgt_codec.vocab)},
                "mt_cli_version": __version__,
                "workers": workers,
                "seconds": round(time.time() - t0, 1),
            },
        )
        # Swap the whole folder in at once: a reader sees the old corpus or the new one, never a mix.
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise explain(out, e) from None  # the disk full, a read-only folder: one line naming the corpus
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"prepared {out} in {time.time() - t0:.1f}s")
    return out


def save_codecs(path: Path, src_codec: SideCodec, tgt_codec: SideCodec) -> None:
    import torch  # only here: the streaming passes (and their workers) run without torch

    torch.save({"src": src_codec.state(), "tgt": tgt_codec.state()}, path)


def load_manifest(folder: Path) -> dict:
    """The manifest of a prepared corpus; DataError naming the file when it is missing, huge or not JSON."""
    m = folder / MANIFEST
    if not m.is_file():
        raise DataError(f"{folder}: no prepared corpus; run `mt prepare --config <your config>` first")
    try:
        man = load_json(m, what="manifest")
    except ParseError as e:
        raise DataError(f"{e}; run `mt prepare --force`") from None
    if not isinstance(man, dict):
        raise DataError(f"{m}: not a manifest (a JSON object); run `mt prepare --force`")
    return man


def sampled_split_name(cfg: Config, epoch: int) -> str | None:
    """The training split epoch `epoch` reads: with data.subword_samples K, sampled segmentation (epoch - 1) mod
    K + 1 (every epoch of the first K sees a new one); None: the usual training split."""
    k = cfg.data.subword_samples
    return f"train.s{(epoch - 1) % k + 1}" if k else None


def load_sampled_split(cfg: Config, name: str):
    from mt_cli.data.batching import Split

    return Split(corpus_dir(cfg.data) / name, cfg.train.bucket_width, resident_max_mb=cfg.data.resident_max_mb)


def load_corpus(cfg: Config, bucket_width: int, resident: bool | None = None):
    """The prepared corpus of `cfg`: (codecs, train split, valid split, manifest). `resident`: force the splits
    onto (True) or off (False) the device-resident path; None: by data.resident_max_mb."""
    # torch only here: `mt prepare` and the workers it forks run without it (importing it costs each of them
    # ~130 MB resident; measured: peak PSS of the prepare tree 1.13 GB with it at module level, 0.94 GB without)
    from mt_cli.data.batching import Split
    from mt_cli.torch_io import safe_load

    folder = corpus_dir(cfg.data)
    man = load_manifest(folder)
    if man.get("fingerprint") != cfg.data.fingerprint() or man.get("format") != FORMAT:
        raise DataError(
            f"{folder}: prepared with another data config or mt_cli version; run `mt prepare --config <this config>`"
        )
    if cfg.data.corpus == "files":  # a file edited since `mt prepare` (files absent here, e.g. on a GPU box, are fine)
        now, then = user_file_sums(cfg.data, man), man.get("files_sha256") or {}
        changed = [f for f, s in now.items() if s != "missing" and then.get(f) not in (None, s)]
        if changed:
            raise DataError(f"{changed[0]}: changed since `mt prepare` built {folder}; run `mt prepare` again")
    codec_state = safe_load(folder / "codecs.pt", "prepared file", DataError, fix="run `mt prepare --force`")
    codecs = {side: SideCodec.from_state(codec_state[side]) for side in ("src", "tgt")}
    for side, codec in codecs.items():
        if len(codec.vocab) <= len(SPECIALS):
            raise DataError(
                f"{folder}: the {side} vocabulary holds only the special tokens; prepare the corpus "
                f"again with more data or a lower data.min_freq"
            )
    budget = cfg.data.resident_max_mb
    train, valid = (
        Split(folder / name, bucket_width, resident=resident, resident_max_mb=budget) for name in ("train", "valid")
    )
    for split in (train, valid):
        if not len(split):
            raise DataError(
                f"{folder}: no {split.name} pairs; prepare the corpus from a non-empty "
                f"{split.name} file (`mt prepare --force`)"
            )
    return codecs, train, valid, man
