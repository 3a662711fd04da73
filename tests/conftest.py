"""Shared fixtures: the real Multi30k files, one prepared corpus per session, small models."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mt_cli import atomic
from mt_cli.config import ModelConfig, load_config
from mt_cli.data.sources import read_lines
from mt_cli.data.vocab import PAD

REPO = Path(__file__).resolve().parents[1]
MULTI30K = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
TINY = REPO / "configs" / "tiny.yaml"

# the suite shares 2 CPU cores with other work: more threads only add contention
torch.set_num_threads(1)


def missing_multi30k():
    """Skip locally, but fail in CI: a green CI must not mean that the data tests never ran."""
    msg = f"Multi30k raw files not found in {MULTI30K} (expected ../shared/data/multi30k from the repo)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    if not (MULTI30K / "train.de.gz").is_file():
        missing_multi30k()
    return MULTI30K


@pytest.fixture(scope="session")
def real_lines(multi30k_dir):
    """Raw Multi30k lines, read once: {(split, lang): [lines]}."""
    cache: dict = {}

    def get(split: str, lang: str) -> list[str]:
        if (split, lang) not in cache:
            cache[split, lang] = read_lines(multi30k_dir / f"{split}.{lang}.gz")
        return cache[split, lang]

    return get


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, multi30k_dir):
    """configs/tiny.yaml's corpus (all of Multi30k de→en), prepared once into a temporary data root."""
    from mt_cli.data.prepare import load_manifest, prepare_corpus
    from mt_cli.data.tokenize import SideCodec

    # MT_TEST_DATA_ROOT: a fixed root, prepared once and reused by later sessions (the mutation run starts one
    # pytest session per mutant: benchmarks/mutation/run.sh)
    fixed = os.environ.get("MT_TEST_DATA_ROOT")
    root = Path(fixed) if fixed else tmp_path_factory.mktemp("data")
    cfg = load_config(TINY, [f"data.root={root}"])
    log: list[str] = []
    folder = prepare_corpus(cfg.data, source=str(multi30k_dir), log=log.append)
    state = torch.load(folder / "codecs.pt", map_location="cpu", weights_only=True)
    codecs = {side: SideCodec.from_state(state[side]) for side in ("src", "tgt")}
    return SimpleNamespace(cfg=cfg, root=root, folder=folder, codecs=codecs, manifest=load_manifest(folder), log=log)


def small_model(src_vocab: int = 50, tgt_vocab: int = 60, seed: int = 0, **overrides):
    """A tiny Transformer (no dropout, eval mode unless told otherwise) for property tests."""
    from mt_cli.model import build_model

    kw = dict(d_model=32, n_heads=4, enc_layers=2, dec_layers=2, d_ff=64, dropout=0.0)
    kw.update(overrides)
    cfg = ModelConfig(**kw)
    cfg.validate()
    torch.manual_seed(seed)
    return build_model(cfg, src_vocab, tgt_vocab, PAD).eval()


def random_ids(batch: int, length: int, vocab: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random non-special token ids (specials are 0..3)."""
    return torch.randint(4, vocab, (batch, length), generator=generator)


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`mt ARGS` in this process (the same main() as the console script): (exit code, stdout, stderr)."""
    from mt_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["mt", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def write_tsv(path: Path, src: list[str], tgt: list[str]) -> Path:
    """A two-column parallel TSV file (the `files` corpus format)."""
    path.write_text("".join(f"{a}\t{b}\n" for a, b in zip(src, tgt)), encoding="utf-8")
    return path


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a small real file system and `fill(leave)`, which leaves `leave` bytes free in it: a 1 MiB
    tmpfs where mount is allowed (root), else every temp-file write of mt_cli.atomic there goes to /dev/full."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode
        == 0
        if shutil.which("mount")
        else False
    )
    if mounted:

        def fill(leave: int = 128 << 10):
            with open(folder / "filler", "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            # `leave` free: torch.save's first writes succeed and a later one fails, the case where its zip
            # writer loses the ENOSPC (writing into a completely full disk fails at once, and clearly)
            os.truncate(folder / "filler", max(0, os.path.getsize(folder / "filler") - leave))

        yield SimpleNamespace(folder=folder, fill=fill, mounted=True)
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        return
    if not os.path.exists("/dev/full"):
        pytest.skip("neither a tmpfs mount nor /dev/full is available")

    def fill(leave: int = 0):
        real = builtins.open

        def to_dev_full(path, mode="r", *args, **kwargs):  # temp files in the folder: the atomic writes there
            full = "w" in mode and str(path).endswith(atomic.TEMP_SUFFIX) and str(path).startswith(str(folder))
            return real("/dev/full" if full else path, mode, *args, **kwargs)

        monkeypatch.setattr(atomic, "open", to_dev_full, raising=False)

    yield SimpleNamespace(folder=folder, fill=fill, mounted=False)


@pytest.fixture(scope="session")
def small(tmp_path_factory, real_lines):
    """A 400-pair corpus of real Multi30k lines (corpus: files, TSV; two test splits), prepared with sentencepiece."""
    from mt_cli.data.prepare import prepare_corpus

    d = tmp_path_factory.mktemp("small")
    for name, split, a, b in (
        ("train", "train", 0, 400),
        ("valid", "val", 0, 40),
        ("test_small", "test_2016_flickr", 0, 30),
        ("test_tiny", "test_2017_flickr", 0, 10),
    ):
        src, tgt = real_lines(split, "de")[a:b], real_lines(split, "en")[a:b]
        write_tsv(d / f"{name}.tsv", src, tgt)
    overrides = [
        f"data.root={d / 'data'}",
        "data.corpus=files",
        f"data.train={d / 'train.tsv'}",
        f"data.valid={d / 'valid.tsv'}",
        f"data.test=[{d / 'test_small.tsv'},{d / 'test_tiny.tsv'}]",
        "data.tokenizer=sentencepiece",
        "data.sp_vocab_size=400",
        "train.max_tokens=1024",
        "decode.max_len_a=0",
        "decode.max_len_b=8",
    ]
    cfg = load_config(TINY, overrides)
    prepare_corpus(cfg.data, log=lambda *_: None)
    return d, overrides
