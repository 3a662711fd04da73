"""Streaming parallel text: chunks of raw lines read from the files (validated as they come), and an ordered
parallel map over chunks whose memory is a few chunks per worker, whatever the size of the corpus."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mt_cli.data.sources import DataError
from mt_cli.limits import MAX_LINE_BYTES

CHUNK_LINES = 10_000
_BLOCK = 1 << 20
NL = b"\n"
BOM = "\ufeff".encode()
TOKEN_SEP = "\x1f"  # joins word tokens on disk: normalize() leaves none in the text (str.split() splits at it)


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class Chunk:
    """Consecutive raw lines of one split: `src` and `tgt` hold `n` lines each (a TSV: the lines in `src`,
    `tgt` None); `first` is the 1-based number of the first line."""

    split: str
    first: int
    n: int
    src: bytes
    tgt: bytes | None
    where: tuple[str, ...]  # the file(s), for error messages
    tokens: tuple[bytes, bytes] | None = None  # the same lines tokenized: words joined by TOKEN_SEP
    pick: list[int] | None = None  # for sentencepiece's sample: the (0-based) lines of the chunk it takes


class LineBlocks:
    """Whole lines of one (optionally gzipped) file, taken n at a time as one bytes object."""

    def __init__(self, path: Path):
        if path.is_dir():
            raise DataError(f"{path}: is a folder, not a text file")
        if not path.exists():  # (not is_file: /dev/stdin, a pipe or <(command) are fine)
            raise DataError(f"{path}: file not found")
        self.path, self.lines, self.buf, self.eof = path, 0, b"", False
        try:
            self.f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None

    def _too_long(self, line: int) -> DataError:
        return DataError(
            f"{self.path}:{line}: a line longer than {MAX_LINE_BYTES:,} bytes; is it a text file with "
            f"one sentence per line?"
        )

    def _read(self) -> bytes:
        try:
            return self.f.read(_BLOCK)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            line = self.lines + self.buf.count(NL)
            raise DataError(
                f"{self.path}: cannot read after line {line} ({type(e).__name__}: {e}); the file is "
                f"damaged or truncated, get a good copy"
            ) from None

    def take(self, n: int) -> tuple[bytes, int]:
        """Up to `n` lines (fewer only at the end of the file), each ending in a newline, and their count."""
        have = self.buf.count(NL)
        while not self.eof and have < n:  # newlines counted block by block, not over the whole buffer again
            block = self._read()
            self.eof = not block
            self.buf += block
            have += block.count(NL)
            if len(self.buf) - 1 - self.buf.rfind(NL) > MAX_LINE_BYTES:  # /dev/zero, a binary file: not read whole
                raise self._too_long(self.lines + self.buf.count(NL) + 1)
        ends = np.flatnonzero(np.frombuffer(self.buf, np.uint8) == 10)
        if len(ends) < n and self.buf and not self.buf.endswith(NL):  # the last line of the file, without newline
            self.buf += NL
            ends = np.append(ends, len(self.buf) - 1)
        k = min(n, len(ends))
        if k:
            lens = np.diff(ends[:k], prepend=-1) - 1
            if lens.max() > MAX_LINE_BYTES:
                raise self._too_long(self.lines + int(np.argmax(lens)) + 1)
        cut = int(ends[k - 1]) + 1 if k else 0
        out, self.buf = self.buf[:cut], self.buf[cut:]
        self.lines += k
        return out, k

    def count_rest(self) -> int:
        """The total number of lines, reading to the end (for the message about unequal files)."""
        while True:
            _, k = self.take(1 << 16)
            if not k:
                return self.lines

    def close(self) -> None:
        self.f.close()


def count_lines(path: Path) -> int:
    """The number of lines of a file (a last line without a newline counts), at the speed of reading it."""
    blocks = LineBlocks(path)
    try:
        n, last = 0, NL
        while block := blocks._read():
            n += block.count(NL)
            last = block[-1:]
        return n + (last != NL)
    finally:
        blocks.close()


def sample_chunks(chunks: Iterator[Chunk], total: int, k: int, seed: int = 1234) -> Iterator[Chunk]:
    """The chunks, each with `pick` set so that together they pick a uniform random `k` of the `total` lines:
    each chunk's share is a hypergeometric draw, then its lines are drawn inside it. Seeded, and decided here
    in the reading process, so the sample is the same for any number of workers; memory: one chunk's picks."""
    rng = np.random.default_rng(seed)
    left, need = total, min(k, total)
    for c in chunks:
        m = min(c.n, left)
        if need and left > m:
            take = int(rng.hypergeometric(m, min(left - m, 10**9 - 1), need))  # numpy's bound on the population
        else:
            take = min(need, m)
        c.pick = np.sort(rng.choice(m, take, replace=False)).tolist() if take < m else list(range(m))
        left, need = left - m, need - take
        yield c


def read_chunks(
    split: str, files: list[Path], tokens: list[Path] | None = None, chunk_lines: int | None = None
) -> Iterator[Chunk]:
    """The chunks of one split: files = [TSV] or [source file, target file] (checked to have equal lengths);
    `tokens`: files of the same lines already tokenized (by the fitting pass), read alongside."""
    chunk_lines = chunk_lines or CHUNK_LINES
    readers = [LineBlocks(p) for p in files]
    extra = [LineBlocks(p) for p in tokens or []]
    where = tuple(str(p) for p in files)
    try:
        first = 1
        while True:
            got = [r.take(chunk_lines) for r in readers]
            counts = {k for _, k in got}
            if len(counts) > 1:
                a, b = (r.count_rest() for r in readers)
                raise DataError(f"{files[0]} has {a} lines but {files[1]} has {b}; parallel files must match")
            n = counts.pop()
            if not n:
                break
            toks = tuple(r.take(n)[0] for r in extra) or None
            yield Chunk(split, first, n, got[0][0], got[1][0] if len(got) > 1 else None, where, toks)
            first += n
    finally:
        for r in readers + extra:
            r.close()


def decode_side(blob: bytes, n: int, first: int, where: str) -> list[str]:
    """`n` newline-terminated UTF-8 lines → str lines (no line ends, no \\r, no byte-order mark on line 1)."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        start = blob.rfind(NL, 0, e.start) + 1
        line = first + blob.count(NL, 0, e.start)
        raise DataError(f"{where}:{line}: invalid UTF-8 at byte {e.start - start}; convert the text to UTF-8") from None
    lines = text.split("\n", n)[:n]
    if "\r" in text:
        lines = [s.rstrip("\r") for s in lines]
    if first == 1 and lines and lines[0].startswith("\ufeff"):  # a byte-order mark is not text
        lines[0] = lines[0][1:]
    return lines


def decode_chunk(c: Chunk) -> tuple[list[str], list[str]]:
    """(source lines, target lines) of a chunk; a TSV line must have exactly two columns."""
    if c.tgt is not None:
        return decode_side(c.src, c.n, c.first, c.where[0]), decode_side(c.tgt, c.n, c.first, c.where[1])
    src, tgt = [], []
    for i, line in enumerate(decode_side(c.src, c.n, c.first, c.where[0]), c.first):
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(f"{c.where[0]}:{i}: expected 2 tab-separated columns, found {len(cols)}")
        src.append(cols[0])
        tgt.append(cols[1])
    return src, tgt


def ordered_map(
    fn: Callable, tasks: Iterator, workers: int, init: Callable, init_arg, processes: bool | None = None
) -> Iterator:
    """fn(task) for every task, in order, in `workers` processes (1: in this one, unless `processes`). Unlike
    Pool.imap, which reads its whole input ahead, at most 3 tasks per worker are in flight: memory stays bounded."""
    if not (workers > 1 if processes is None else processes):
        init(init_arg)
        yield from map(fn, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)  # fork: no re-import per worker
    with ctx.Pool(workers, init, (init_arg,)) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            if len(pending) >= 3 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
