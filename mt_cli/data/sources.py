"""Raw parallel text: Multi30k download/copy with SHA-256 checks, and reading of text files."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mt_cli.atomic import atomic_path, check_writable
from mt_cli.limits import read_bounded

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{file}"
MULTI30K_ENV = "MT_MULTI30K_DIR"
DOWNLOAD_TIMEOUT_S = 60  # per blocking read: a server that accepts and never answers must not hang `mt prepare`
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
# SHA-256 of the upstream files (multi30k/dataset, data/task1/raw).
MULTI30K_SHA256 = {
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2017_mscoco.fr.gz": "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}


class DataError(ValueError):
    """Bad or missing input data; the message says what, where and how to fix it."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def multi30k_splits(src: str, tgt: str) -> list[str]:
    """Splits that exist for both languages (Czech has no 2017 test sets)."""
    return [s for s in MULTI30K_SPLITS if f"{s}.{src}.gz" in MULTI30K_SHA256 and f"{s}.{tgt}.gz" in MULTI30K_SHA256]


def _download(url: str, dest: Path) -> None:
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r,
            atomic_path(dest) as tmp,
            open(tmp, "wb") as f,
        ):
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: r.read(1 << 16), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise DataError(f"cannot download {url} ({e}); offline, pass --source DIR or set {MULTI30K_ENV}") from None


def multi30k_source(source: str | None) -> str | None:
    """The local folder to copy Multi30k from (--source, else $MT_MULTI30K_DIR), checked; None: download."""
    source = source or os.environ.get(MULTI30K_ENV)
    if source and not Path(source).is_dir():
        raise DataError(
            f"{source}: no such folder; --source (or {MULTI30K_ENV}) names the folder holding the Multi30k .gz files"
        )
    return source


def fetch_multi30k(files: list[str], raw_dir: Path, source: str | None) -> dict[str, str]:
    """Make verified copies of `files` in raw_dir, from `source` (a folder) or the official URLs."""
    source = source or os.environ.get(MULTI30K_ENV)
    check_writable(raw_dir)
    sums = {}
    for name in files:
        dest = raw_dir / name
        want = MULTI30K_SHA256[name]
        if not (dest.is_file() and sha256_of(dest) == want):
            if source:
                src = Path(multi30k_source(source)) / name
                if not src.is_file():
                    raise DataError(f"{src}: missing; the folder must hold the Multi30k task-1 raw files ({name})")
                with atomic_path(dest) as tmp:
                    shutil.copyfile(src, tmp)
            else:
                _download(MULTI30K_URL.format(file=name), dest)
            got = sha256_of(dest)
            if got != want:
                dest.unlink()
                raise DataError(
                    f"{source or 'download'}: {name} has SHA-256 {got[:12]}…, expected {want[:12]}…; "
                    "the file is corrupt or not the official one"
                )
        sums[name] = want
    return sums


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (optionally gzipped), without line ends."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a text file")
    if not path.exists():  # (not is_file: /dev/stdin, a pipe or <(command) are fine)
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = read_bounded(f, str(path))  # /dev/zero, a gzip bomb: refused, not a MemoryError
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    return decode_lines(data, str(path))


def decode_lines(data: bytes, where: str) -> list[str]:
    """UTF-8 bytes → lines without line ends; `where` names the source in errors (a file, stdin)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8").rstrip("\r")
            out.append(text.removeprefix("\ufeff") if i == 1 else text)  # a byte-order mark is not text
        except UnicodeDecodeError as e:
            raise DataError(f"{where}:{i}: invalid UTF-8 at byte {e.start}; convert the text to UTF-8") from None
    return out


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; parallel files must match")
    return src, tgt


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for i, line in enumerate(read_lines(path), 1):
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(f"{path}:{i}: expected 2 tab-separated columns, found {len(cols)}")
        src.append(cols[0])
        tgt.append(cols[1])
    return src, tgt


def split_files(spec: str, src_lang: str, tgt_lang: str) -> list[Path]:
    """The file(s) of a user corpus split: [a TSV file] or [P.<src>, P.<tgt>] for a prefix P, where each side
    may be gzipped instead (P.<lang>.gz)."""
    p = Path(spec)
    sides = [Path(f"{spec}.{lang}") for lang in (src_lang, tgt_lang)]
    sides = [f if f.exists() or not Path(f"{f}.gz").exists() else Path(f"{f}.gz") for f in sides]
    if p.suffix == ".tsv" or (p.is_file() and not sides[0].exists()):
        return [p]
    return sides


def read_split_files(spec: str, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    """A user corpus split: a .tsv file (optionally .gz), or a prefix P with files P.<src> and P.<tgt>."""
    files = split_files(spec, src_lang, tgt_lang)
    return read_tsv(files[0]) if len(files) == 1 else read_parallel(*files)


def fresh_tempdir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))
