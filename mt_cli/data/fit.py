"""The codecs of a corpus, fitted on its training text in one streaming pass: word vocabularies from summed
token counts, or sentencepiece models trained on a bounded random sample of the (normalized) text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mt_cli.data import work
from mt_cli.data.multilingual import tags
from mt_cli.data.sources import DataError
from mt_cli.data.stream import count_lines, ordered_map, read_chunks, sample_chunks
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import SPECIALS, Vocab


def token_files(data, tmp: Path) -> list[Path] | None:
    """Where the fitting pass leaves the tokenized training text of a word-level corpus (None: sentencepiece)."""
    return None if data.tokenizer == "sentencepiece" else [tmp / f"train.tokens.{side}" for side in ("src", "tgt")]


def _train_sentencepiece(args: tuple) -> SideCodec:
    return SideCodec.train_sentencepiece_files(*args)


def fit_codecs(data, files: list[Path], workers: int, tmp: Path, log) -> tuple[SideCodec, SideCodec]:
    """(source codec, target codec) from the training files (a TSV, or the source and target files); a word-level
    corpus also leaves its training text tokenized in token_files()."""
    if data.tokenizer == "sentencepiece":
        return _fit_sentencepiece(data, files, workers, tmp, log)
    tokens = token_files(data, tmp)
    codecs = tuple(SideCodec("spacy", lang, data.lowercase, Vocab([])) for lang in (data.src_lang, data.tgt_lang))
    for codec in codecs:
        codec.tokenizer  # noqa: B018 - loaded here, before the workers fork, so that they share it
    counts: tuple[Counter, Counter] = (Counter(), Counter())
    chunks = read_chunks("train", files)
    with open(tokens[0], "wb") as fs, open(tokens[1], "wb") as ft:
        for src, tgt, src_tok, tgt_tok in ordered_map(
            work.count_tokens, chunks, workers, work.init, {"data": data, "codecs": codecs}
        ):
            counts[0].update(src)
            counts[1].update(tgt)
            fs.write(src_tok)
            ft.write(tgt_tok)
    for side, (codec, n) in enumerate(zip(codecs, counts)):
        codec.vocab = Vocab.from_counts(n, data.min_freq, data.max_size)
        if len(codec.vocab) <= len(SPECIALS):
            raise DataError(
                f"{files[min(side, len(files) - 1)]}: the {codec.lang} vocabulary would hold only the "
                f"special tokens (no word occurs data.min_freq={data.min_freq} times in the training "
                f"data); lower data.min_freq or use more data"
            )
    return codecs


def _fit_sentencepiece(data, files: list[Path], workers: int, tmp: Path, log) -> tuple[SideCodec, SideCodec]:
    # A seeded sample of data.sp_sample pairs is drawn here from the line count, and only those lines are
    # normalized into the temporary files sentencepiece trains on. (Letting sentencepiece sample all of the text
    # cost a normalizing pass over the whole corpus, and it grew by ~100 MB at 10M pairs doing so.)
    paths = [tmp / f"sp_input.{lang}.txt" for lang in (data.src_lang, data.tgt_lang)]
    pairs = data.sp_sample // 2 if data.joint_vocab else data.sp_sample  # a joint model samples both sides
    chunks = read_chunks("train", files)
    total = count_lines(files[0])
    if total > pairs:
        chunks = sample_chunks(chunks, total, pairs)
    lines = [0, 0]
    with open(paths[0], "wb") as fs, open(paths[1], "wb") as ft:
        for src, tgt, n_src, n_tgt in ordered_map(work.normalized_text, chunks, workers, work.init, {"data": data}):
            fs.write(src)
            ft.write(tgt)
            lines[0] += n_src
            lines[1] += n_tgt
    for side, n in enumerate(lines):
        if not n:
            raise DataError(
                f"{files[min(side, len(files) - 1)]}: no {(data.src_lang, data.tgt_lang)[side]} text "
                f"in the training data; sentencepiece needs some"
            )
    joint = ", joint" if data.joint_vocab else ""
    most = sum(lines) if data.joint_vocab else max(lines)
    sampled = f", sampled from {total:,} pairs" if total > pairs else ""
    models = f"{data.sp_type} models (vocab {data.sp_vocab_size}{joint}"
    log(f"training sentencepiece {models}; on {most:,} sentences{sampled})")

    # the language tags of data.pairs as pieces of their own, with the word-start mark a sentence's first word
    # gets (a bare "<2de>" would cost an extra "▁" piece)
    symbols = tuple("\u2581" + tag for tag in tags(data))

    def job(inputs: list[Path], lang: str) -> tuple:  # all of the (sampled) input, in order
        return inputs, lang, data.lowercase, data.sp_type, data.sp_vocab_size, None, 1, symbols

    jobs = (
        [job(paths, data.src_lang)]
        if data.joint_vocab
        else [job(paths[:1], data.src_lang), job(paths[1:], data.tgt_lang)]
    )
    try:
        # One thread per model, whatever --workers (a model file records its thread count); with workers, the
        # two sides' models train side by side in child processes, and the memory sentencepiece takes (its
        # sample, its tables) goes when they end instead of staying here and in the workers forked next.
        codecs = list(
            ordered_map(_train_sentencepiece, iter(jobs), min(workers, len(jobs)), work.init, {}, processes=workers > 1)
        )
        if data.joint_vocab:
            joint = codecs[0]
            return joint, SideCodec("sentencepiece", data.tgt_lang, data.lowercase, joint.vocab, joint.sp_model)
        return codecs[0], codecs[1]
    finally:
        for p in paths:
            p.unlink(missing_ok=True)
