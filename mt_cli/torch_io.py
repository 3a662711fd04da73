"""Every torch file of mt_cli goes through here: saved atomically, with a full disk said as such, and loaded
with weights_only=True, each way a file can be unusable (missing, truncated, foreign, unsafe) being one line."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from mt_cli.atomic import atomic_file


class TorchFileError(ValueError):
    """A torch file that cannot be used: missing, damaged, foreign or unsafe (exit 2)."""


def save(path: str | Path, obj) -> None:
    """torch.save `obj` atomically; any write failure is an OutputError (`cannot write PATH: the disk is full
    ...`), with the old file intact and no temp file left (torch's own RuntimeError hides the ENOSPC)."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def _first_line(e: BaseException, default: str = "") -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else default


def _check_file(path: Path, what: str, error: type[ValueError], tail: str) -> None:
    try:
        if path.is_dir():
            raise error(f"{path}: is a folder, not a {what} file{tail}")
        if not path.is_file():
            raise error(f"{path}: {what} not found{tail}")
        if path.stat().st_size == 0:
            raise error(f"{path}: empty file, not a {what} (an interrupted copy?){tail}")
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:  # a name too long, a folder without read permission, ...
        raise error(f"{path}: cannot read: {e.strerror or e}{tail}") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise error(f"{path}: not a {what} (not a file written by torch.save){tail}")


def _refusal(path: Path, e: pickle.UnpicklingError, what: str) -> str:
    """torch's refusal, without its advice to turn weights_only off: what the file asked for, in one line."""
    unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))
    if unsafe:
        return (
            f"{path}: refused to load: it asks to import {unsafe.group(1)}, which could run code; mt_cli only "
            f"loads tensors and plain data (weights_only). Do not use {what}s from untrusted sources"
        )
    op = re.search(r"(Unsupported operand \d+|Unsupported class [\w.]+)", str(e))
    return (
        f"{path}: refused to load: not an mt_cli {what} (data other than tensors and plain values"
        f"{': ' + op.group(1) if op else ''})"
    )


def safe_load(
    path: str | Path,
    what: str = "checkpoint",
    error: type[ValueError] = TorchFileError,
    fix: str | None = None,
    mmap: bool = False,
):
    """torch.load(weights_only=True) on the CPU: tensors and plain data, never code. Failures raise `error`
    (a ValueError: exit 2) in one line naming `path`; `what` names the kind of file, `fix` what to do."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    _check_file(path, what, error, tail)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise error(_refusal(path, e, what) + tail) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, EOFError) or re.search(r"central directory|truncat|EOF", str(e)):
            raise error(
                f"{path}: damaged: the file is truncated (a crash while copying or writing it?); "
                f"{fix or 'use another copy'}"
            ) from None
        first = re.split(r"(?<=\.) ", _first_line(e, type(e).__name__))[0]
        raise error(f"{path}: damaged or not a {what} ({first}){tail}") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}{tail}") from None
    except Exception as e:  # noqa: BLE001 - foreign files fail in many ways (KeyError, ValueError, ...)
        raise error(f"{path}: not a {what} ({type(e).__name__}: {_first_line(e, 'unreadable')}){tail}") from None
