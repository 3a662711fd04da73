"""`mt translate`: raw text in, translations out, streamed chunk by chunk (length-sorted batches within a
chunk), each chunk written in input order as soon as it is done; line count, order and empty lines kept."""

from __future__ import annotations

import contextlib
import gzip
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import torch
from tqdm import tqdm

from mt_cli.atomic import atomic_path
from mt_cli.config import Config
from mt_cli.data.sources import DataError
from mt_cli.data.vocab import EOS
from mt_cli.decode import translate_ids

DEFAULT_CHUNK_LINES = 10_000
# A line longer than this is refused: one line is held whole in memory and encoded at once (a 1 MB line
# took 746 MB), so the bound on the line is the bound on the memory.
DEFAULT_MAX_LINE_BYTES = 1 << 20
# A chunk also ends once it holds this much text, so memory stays bounded by the chunk even for long lines.
CHUNK_BYTES = 16 << 20


def open_input(path: str) -> tuple[BinaryIO, str]:
    """The byte stream of `path` (- = stdin; .gz files are decompressed) and its name for messages.
    Raises DataError for a missing file or a folder, before any model is loaded."""
    if path == "-":
        return sys.stdin.buffer, "stdin"
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a folder, not a text file")
    if not p.exists():  # (not is_file: /dev/stdin, a pipe or <(command) are fine)
        raise DataError(f"{p}: file not found")
    try:
        return (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")), str(p)
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None


def read_chunks(
    stream: BinaryIO,
    where: str,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[list[str]]:
    """Lines of a UTF-8 stream in chunks of at most `chunk_lines` lines (or about `chunk_bytes` of text)."""
    return chunked(read_bounded_lines(stream, where, max_line_bytes), chunk_lines, chunk_bytes, _line_size)


def read_bounded_lines(stream: BinaryIO, where: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[str]:
    """Lines of a UTF-8 stream (line ends, a leading byte-order mark and a final CR dropped), one at a time:
    never reads past the line it yields (a pipe's writer may be waiting for the answer) and never holds more
    than `max_line_bytes` of one line: a longer line is a DataError naming it."""
    number = 0
    while True:
        try:
            raw = stream.readline(max_line_bytes + 2)  # + room for "\r\n"
        except (OSError, EOFError) as e:
            raise DataError(f"{where}: cannot read ({e})") from None
        if not raw:
            return
        number += 1
        yield _decode_line(raw, where, number, max_line_bytes)


def chunked(items: Iterator, chunk_lines: int, chunk_bytes: int = CHUNK_BYTES, size=len) -> Iterator[list]:
    """Lists of at most `chunk_lines` items, ended early once their `size` reaches `chunk_bytes`."""
    chunk: list = []
    total = 0
    for item in items:
        chunk.append(item)
        total += size(item)
        if len(chunk) >= chunk_lines or total >= chunk_bytes:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


def _line_size(line: str) -> int:
    return len(line) + 1  # characters and the line end: about the bytes held


def _decode_line(raw: bytes, where: str, number: int, max_line_bytes: int) -> str:
    body = raw[:-1] if raw.endswith(b"\n") else raw
    body = body[:-1] if body.endswith(b"\r") else body
    if len(body) > max_line_bytes:
        raise DataError(
            f"{where}:{number}: line longer than {max_line_bytes:,} bytes; split it, or raise --max-line-bytes"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}:{number}: invalid UTF-8 at byte {e.start}; convert the text to UTF-8") from None
    return text.removeprefix("\ufeff") if number == 1 else text  # a byte-order mark is not text


def translate_lines(
    model,
    cfg: Config,
    codecs: dict,
    lines: list[str],
    device,
    beam_size: int | None = None,
    nbest: int = 1,
    amp_dtype=None,
    show_progress: bool = False,
    warn=print,
    ids_out: list | None = None,
    first_line: int = 1,
    progress: Callable | None = None,
    sampler=None,
) -> list[list[str]]:
    """Translate each line; an empty line gives an empty translation. Returns n-best lists of text.
    With `ids_out`, (line index, source ids, best hypothesis ids) of each non-empty line are appended to it.
    `first_line` numbers the lines in messages (a chunk's place in its file); `progress(n)` counts lines done."""
    keep = [i for i, line in enumerate(lines) if line.strip()]
    src_ids = codecs["src"].encode([lines[i] for i in keep])
    long = [keep[j] + first_line for j, ids in enumerate(src_ids) if len(ids) > cfg.data.max_len]
    if long:
        warn(
            f"warning: {len(long)} input line(s) longer than the training max_len={cfg.data.max_len} tokens "
            f"(first: line {long[0]}); translated in full, quality may suffer"
        )
    limit = model.max_positions
    too_long = [keep[j] + first_line for j, ids in enumerate(src_ids) if limit is not None and len(ids) + 1 > limit]
    if too_long:
        raise ValueError(
            f"input line {too_long[0]} is longer than the model's {limit} learned positions "
            f"({len(too_long)} such line(s)); split it"
        )
    sources = [torch.tensor(ids + [EOS], dtype=torch.long) for ids in src_ids]
    dec = replace(cfg.decode, nbest=nbest) if nbest > 1 else cfg.decode
    bar = tqdm(total=len(sources), unit="sent", disable=not show_progress, leave=False)
    step = progress or bar.update
    try:
        if not sources:
            results = []
        elif hasattr(model, "translate_ids"):  # the CTranslate2 engine (an exported folder)
            results = model.translate_ids(sources, dec, beam_size, sampler=sampler, progress=step)
        else:
            results = translate_ids(
                model, sources, dec, device, beam_size=beam_size, amp_dtype=amp_dtype, progress=step, sampler=sampler
            )
    finally:
        bar.close()
    if progress is not None:
        progress(len(lines) - len(keep))  # empty lines are done too
    out: list[list[str]] = [[""] * nbest for _ in lines]
    for i, src, hyps in zip(keep, src_ids, results):
        if ids_out is not None:
            ids_out.append((i, src, hyps[0][0]))
        texts = [codecs["tgt"].decode(ids) for ids, _ in hyps]
        out[i] = (texts + [texts[-1]] * nbest)[:nbest]
    return out


def translate_stream(
    model,
    cfg: Config,
    codecs: dict,
    chunks: Iterator[list[str]],
    write: Callable[[str], None],
    device,
    beam_size: int | None = None,
    nbest: int = 1,
    amp_dtype=None,
    show_progress=False,
    warn=print,
    on_chunk: Callable | None = None,
    sampler=None,
) -> int:
    """Translate chunk after chunk, calling `write(text)` with each chunk's lines (n-best tab-separated) in
    input order as soon as the chunk is done. `on_chunk(items)` gets the chunk's (line number, source ids,
    best ids) of non-empty lines (attention maps). Returns the number of lines."""
    warned: list[str] = []

    def warn_once(msg: str) -> None:  # the max_len warning of the first chunk that has one, not one per chunk
        if not warned:
            warned.append(msg)
            warn(msg)

    done = 0
    with tqdm(unit=" lines", disable=not show_progress, leave=False, file=sys.stderr) as bar:
        for chunk in chunks:
            ids: list | None = [] if on_chunk is not None else None
            hyps = translate_lines(
                model,
                cfg,
                codecs,
                chunk,
                device,
                beam_size,
                nbest,
                amp_dtype,
                warn=warn_once,
                ids_out=ids,
                first_line=done + 1,
                progress=bar.update,
                sampler=sampler,
            )
            write("".join("\t".join(h) + "\n" for h in hyps))
            if on_chunk is not None:
                on_chunk([(done + i + 1, s, h) for i, s, h in ids])
            done += len(chunk)
    return done


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises KeyboardInterrupt while the block runs, so `atomic_path` removes its temporary file
    and the output is complete or absent (the default SIGTERM kills the process without any clean-up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def output_writer(output: str):
    """A `write(text)` that puts text out at once: stdout (flushed per call, so a reader sees each chunk
    as it is done), or a named file that is complete or absent (a temporary file renamed at the end)."""
    if output == "-":

        def to_stdout(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        yield to_stdout
        return
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:

        def to_file(text: str) -> None:
            f.write(text)
            f.flush()

        yield to_file
