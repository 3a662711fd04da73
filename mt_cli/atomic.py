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


class _RecordingFile:
    """A binary file that remembers the first OSError of its writes. torch.save's zip writer swallows the
    ENOSPC of a full disk and fails later with an unrelated RuntimeError ("unexpected pos"), or not at all."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def _call(self, method, *args):
        try:
            return method(*args)
        except OSError as e:
            self.error = self.error or e
            raise

    def write(self, data):
        return self._call(self._f.write, data)

    def flush(self):
        return self._call(self._f.flush)

    def __getattr__(self, name):  # seek, tell, fileno, ... as the real file
        return getattr(self._f, name)


@contextmanager
def atomic_file(path: str | Path):
    """Yield a binary file that replaces `path` atomically when the block ends. Any failure while writing,
    even one a library hides in its own exception (torch.save), is reported as the OSError it was: an
    OutputError such as `cannot write PATH: the disk is full (...)`; `path` is untouched, no temp file stays."""
    with atomic_path(path) as tmp:
        f = None
        try:
            with open(tmp, "wb") as raw:
                f = _RecordingFile(raw)
                yield f
        except Exception:
            if f is not None and f.error is not None:
                raise f.error from None  # atomic_path turns it into the OutputError
            raise
        if f.error is not None:  # a writer that ignored the failure and returned as if all was written
            raise f.error


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
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


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


class SameFileError(ValueError):
    """An output that names one of the command's own inputs (exit 2: writing it would destroy the input)."""


def _same_file(a: Path, b: Path) -> bool:
    """The same file, by path or through a symbolic or hard link (os.path.samefile: device and inode).
    Only files and folders count: a terminal or pipe as both input and output destroys nothing."""
    try:
        return (a.is_file() or a.is_dir()) and os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist (yet): it cannot be the other
        return False


def refuse_overwrite(outputs, inputs: dict, option: str = "--output") -> None:
    """Refuse, before anything is written, an output file that is one of the inputs. `outputs`: a path or the
    paths the command will write; `inputs`: {label: path or list of paths}, e.g. {"--input": "in.de"}."""
    outs = [outputs] if isinstance(outputs, (str, Path)) else list(outputs)
    for label, paths in inputs.items():
        for given in [paths] if isinstance(paths, (str, Path)) else paths or []:
            if given in (None, "-"):
                continue
            for out in outs:
                if out not in (None, "-") and _same_file(Path(out), Path(given)):
                    shown = outs[0] if len(outs) == 1 else out
                    raise SameFileError(f"{option} {shown}: is the same file as {label} {given}; choose another output")


def refuse_overwrite_in(folder, pattern: str, inputs: dict, option: str) -> None:
    """Refuse an output folder whose files (named like the glob `pattern`) could replace an input in it."""
    if folder is None or not Path(folder).is_dir():
        return  # a folder that does not exist yet holds no input
    for label, paths in inputs.items():
        for given in [paths] if isinstance(paths, (str, Path)) else paths or []:
            if given in (None, "-") or not Path(given).exists():
                continue
            real = Path(given).resolve()
            if _same_file(real.parent, Path(folder)) and real.match(pattern):
                raise SameFileError(
                    f"{option} {folder}: would overwrite {label} {given} (it writes {pattern} "
                    f"files there); choose another folder"
                )


def first_missing(path: str | Path) -> Path | None:
    """The outermost folder on the way to `path` that does not exist yet (what writing there would create)."""
    path, missing = Path(path).absolute(), None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


@contextmanager
def no_new_folders_on_failure(*folders):
    """If the block fails, remove the folders on the way to `folders` that it created, when they are empty
    again (only empty ones: a concurrent command's files in them are never touched)."""
    roots = {r for r in (first_missing(f) for f in folders if f is not None) if r is not None}
    try:
        yield
    except BaseException:
        for root in roots:
            remove_empty_tree(root)
        raise


def remove_empty_tree(root: Path) -> None:
    """Remove `root` and the folders under it, bottom up, as far as they hold no files."""
    if not root.is_dir() or root.is_symlink():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass
