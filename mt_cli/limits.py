"""Bounded reading of inputs that are read whole: an endless device (/dev/zero), a gzip bomb or a huge
file is refused in one line after reading at most a little more than the limit, never with a MemoryError."""

from __future__ import annotations

MAX_LINE_BYTES = 1 << 20  # a sentence is at most a few KiB; a longer "line" is not text of sentences
MAX_INPUT_BYTES = 1 << 30  # 1 GiB of text, millions of sentences: more should be split into several files
_CHUNK = 1 << 20


class InputTooLarge(ValueError):
    """An input beyond the limits above (exit 2): the message names it and says what to do."""


def read_bounded(f, where: str, max_bytes: int = MAX_INPUT_BYTES, max_line: int = MAX_LINE_BYTES) -> bytes:
    """All bytes of the binary stream `f`, refused (InputTooLarge) as soon as they pass `max_bytes` or a line
    passes `max_line` bytes; `where` names the input (a file, stdin) in the message."""
    chunks, total, lines, carried = [], 0, 0, 0  # carried: bytes of the line the next chunk continues
    while chunk := f.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise InputTooLarge(
                f"{where}: larger than {max_bytes:,} bytes, the most mt_cli reads at once; split it into smaller files"
            )
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts):
            if len(part) + (carried if i == 0 else 0) > max_line:
                raise InputTooLarge(
                    f"{where}: line {lines + i + 1} is longer than {max_line:,} bytes; is it a "
                    f"text file with one sentence per line?"
                )
        carried = len(parts[-1]) + (carried if len(parts) == 1 else 0)
        lines += len(parts) - 1
        chunks.append(chunk)
    return b"".join(chunks)
