"""Crash-safe file writing: write a temporary file in the same folder, fsync, then rename."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class OutputError(OSError):
    """An output location cannot be written (read-only, missing, disk full)."""


def _explain(path: Path, e: OSError) -> OutputError:
    if e.errno == errno.ENOSPC:
        why = "the disk is full; free space or write elsewhere"
    elif e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        why = "the folder is not writable; choose another location"
    else:
        why = e.strerror or str(e)
    return OutputError(e.errno or 0, f"cannot write {path}: {why}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; on success it replaces `path` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise _explain(path, e) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _remove(tmp)
        raise _explain(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(p) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line by rewriting the file atomically (logs are small; a crash never tears them)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text(path, old + line.rstrip("\n") + "\n")


def check_writable(folder: str | Path) -> None:
    """Fail early, with a clear message, when `folder` cannot take new files."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise _explain(folder, e) from None
