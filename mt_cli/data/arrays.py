"""The on-disk form of a prepared split: per side one flat token array and an int64 offsets array, as .npy
files (memory-mappable, no pickle). Row i of a side is tokens[offsets[i]:offsets[i + 1]]."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from mt_cli.data.sources import DataError

SIDES = ("src", "tgt")
_HEADER = 128  # bytes reserved for the .npy header: rewritten in place once the length is known


def token_dtype(vocab_size: int) -> np.dtype:
    """int16 where every id fits (half the disk and page cache), else int32."""
    return np.dtype(np.int16 if vocab_size <= np.iinfo(np.int16).max + 1 else np.int32)


def array_path(folder: Path, split: str, side: str, offsets: bool = False) -> Path:
    return folder / f"{split}.{side}{'_off' if offsets else ''}.npy"


def split_paths(folder: Path, split: str) -> list[Path]:
    return [array_path(folder, split, side, off) for side in SIDES for off in (False, True)]


def has_split(folder: Path, split: str) -> bool:
    return all(p.is_file() for p in split_paths(folder, split))


def split_names(folder: Path) -> list[str]:
    """Names of the complete prepared splits in `folder`, sorted."""
    if not folder.is_dir():
        return []
    names = {p.name.removesuffix(".src.npy") for p in folder.glob("*.src.npy")}
    return sorted(n for n in names if has_split(folder, n))


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """A version 1.0 .npy header of exactly _HEADER bytes for a 1-D array of `n` items."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (dtype.str, n)
    body = text.ljust(_HEADER - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class ArrayWriter:
    """Appends to a 1-D .npy file of unknown final length; close() writes the real length into the header."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self.f = open(path, "wb")
        self.f.write(_npy_header(self.dtype, 0))

    def append(self, values: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.n += len(values)

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, self.n))
        self.f.close()


class OffsetsWriter(ArrayWriter):
    """The offsets array of one side: starts at 0, then the running total of the row lengths."""

    def __init__(self, path: Path):
        super().__init__(path, np.int64)
        self.total = 0
        self.append(np.zeros(1, np.int64))

    def add_lengths(self, lengths: np.ndarray) -> None:
        ends = np.cumsum(lengths, dtype=np.int64) + self.total
        if len(ends):
            self.total = int(ends[-1])
        self.append(ends)


def _header(path: Path, f) -> tuple[np.dtype, int, int]:
    """(dtype, length, data offset) of the .npy file open in `f`; DataError when it is no 1-D .npy array."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    except (ValueError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable prepared array ({type(e).__name__}); run `mt prepare --force`") from None
    if len(shape) != 1 or dtype.kind != "i" or os.fstat(f.fileno()).st_size != f.tell() + shape[0] * dtype.itemsize:
        raise DataError(f"{path}: not a complete prepared array; run `mt prepare --force`")
    return dtype, shape[0], f.tell()


class MappedArray:
    """A read-only memory map of a 1-D .npy file. `release()` drops the pages this process has touched from its
    resident set (they stay in the page cache), so reading a large corpus does not grow the process."""

    def __init__(self, path: Path):
        try:
            with open(path, "rb") as f:
                self.dtype, self.n, start = _header(path, f)
                size = os.fstat(f.fileno()).st_size
                self._map = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else None
        except FileNotFoundError:
            raise DataError(f"{path}: missing; run `mt prepare` again") from None
        if self._map is not None and hasattr(mmap, "MADV_RANDOM"):  # batches read scattered rows: no read-ahead
            self._map.madvise(mmap.MADV_RANDOM)
        self.array = np.frombuffer(self._map, self.dtype, self.n, start) if self.n else np.zeros(0, self.dtype)

    def release(self) -> None:
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)


def load_array(path: Path) -> np.ndarray:
    """The whole array in memory (for splits small enough to keep resident)."""
    m = MappedArray(path)
    out = np.array(m.array)
    m.release()
    return out


def _length_blocks(path: Path, chunk: int):
    """Row lengths from an offsets file, block by block (plain reads: no mapped pages stay resident)."""
    with open(path, "rb") as f:
        dtype, n, _ = _header(path, f)
        if dtype != np.int64 or n < 1:
            raise DataError(f"{path}: not an offsets array; run `mt prepare --force`")
        prev = int(np.fromfile(f, np.int64, 1)[0])
        while len(block := np.fromfile(f, np.int64, chunk)):
            lens = np.diff(block, prepend=prev)
            prev = int(block[-1])
            if lens.min() < 0:
                raise DataError(f"{path}: offsets go backwards; run `mt prepare --force`")
            yield n - 1, lens


def row_lengths(path: Path, chunk: int = 1 << 20) -> np.ndarray:
    """Row lengths of one side, in one pass: int16 while they fit with room for <eos> and bucket rounding (widened
    to int32 only if a longer row comes), so that no int64 array of the whole split is ever held."""
    out, at = None, 0
    for n, lens in _length_blocks(path, chunk):
        if out is None:
            out = np.empty(n, np.int16)
        if out.dtype == np.int16 and int(lens.max()) >= 30_000:
            out = out.astype(np.int32)
        out[at : at + len(lens)] = lens
        at += len(lens)
    return out if out is not None else np.zeros(0, np.int16)
