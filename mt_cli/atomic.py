"""Crash-safe file writing: write a temporary file in the same folder, flush + fsync, then rename.

A reader (or a resumed run) sees the old file or the new one, never a torn mix. A crash in the middle
of a write can leave a hidden temporary file (`.<name>.<random>.tmp`) next to the target; it is never
read, and `remove_stale_temps` (called when a run starts or resumes) deletes it."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"


class OutputError(OSError):
    """An output location cannot be written (read-only, missing, disk full)."""


def explain(path: str | Path, e: OSError) -> OutputError:
    """Turn a low-level OSError into one clear sentence naming `path` and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full (or the quota is used up); free some space or write elsewhere"
    elif e.errno == errno.EROFS:
        why = "the file system is read-only; choose another location"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "the folder is not writable (permission denied); choose another location"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST) and not Path(path).is_dir():
        why = "a file is in the way where a folder is needed; choose another location"
    elif e.errno == errno.ENAMETOOLONG:
        why = "the path is too long"
    else:
        why = e.strerror or str(e)
    return OutputError(e.errno or 0, f"cannot write {path}: {why}")


_explain = explain  # the old private name


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


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; when the block ends without an error the temporary file is
    fsynced and renamed over `path` (atomic on POSIX and Windows). On any error, `path` is untouched,
    the temporary file is removed, and OSErrors become an OutputError with a clear message."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    except OSError as e:
        raise explain(path, e) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _remove(tmp)
        raise explain(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(p) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files that a crashed writer left in `folder`; returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            _remove(p)
            removed.append(p)
    return removed


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path):
    """A JSON file's content, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def append_line(path: str | Path, line: str) -> None:
    """Append one line by rewriting the file atomically (logs are small; a crash never tears them)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text(path, old + line.rstrip("\n") + "\n")


def check_writable(folder: str | Path) -> None:
    """Fail early, with a clear message, when `folder` cannot take new files. Creates nothing: the nearest
    existing folder on the way is probed, so a command that fails later leaves no empty folders behind."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(probe))
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise explain(folder, e) from None
