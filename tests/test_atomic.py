"""Crash-safe writes: a temp file in the same folder, fsynced, then renamed. A crash in the middle of a
write leaves the old file intact; a full disk or an unwritable folder is said clearly."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_support as S  # noqa: E402

import mt_cli.checkpoint as C  # noqa: E402
from mt_cli.atomic import (
    OutputError,
    atomic_path,
    check_writable,
    explain,  # noqa: E402
    no_new_folders_on_failure,
    remove_stale_temps,
    write_json,
    write_text,
)

REPO = Path(__file__).resolve().parents[1]


def test_an_error_while_writing_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"bleu": 40.1})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"bleu": 0', encoding="utf-8")
            raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == '{\n  "bleu": 40.1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    # and a successful write replaces it whole, with the usual permissions (not mkstemp's 0600)
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and not S.stray_temps(tmp_path)
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_process_killed_while_writing_a_checkpoint_leaves_the_old_one_intact(tmp_path):
    """SIGKILL halfway through torch.save of a new last.pt: the old last.pt loads unchanged, the half-written
    temp file is never read, and remove_stale_temps (run when training starts or resumes) deletes it."""
    from mt_cli.config import Config, ModelConfig
    from mt_cli.data.tokenize import SideCodec
    from mt_cli.data.vocab import PAD, Vocab
    from mt_cli.model import build_model

    cfg = Config(name="a", model=ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, d_ff=32))
    codecs = {s: SideCodec("spacy", lang, True, Vocab(["x"])) for s, lang in (("src", "de"), ("tgt", "en"))}
    last = tmp_path / "saved" / "last.pt"
    C.save_checkpoint(last, model=build_model(cfg.model, 5, 5, PAD), cfg=cfg, codecs=codecs, epoch=1, step=10)
    before = last.read_bytes()
    child = textwrap.dedent(f"""
        import io, os, signal, torch
        import mt_cli.checkpoint as C
        ck = C.load_checkpoint({str(last)!r})
        ck["model"] = {{k: v + 1 for k, v in ck["model"].items()}}
        ck["step"] = 20
        real = torch.save
        def dying_save(obj, f):  # write half of the real bytes, make them durable, then die
            buf = io.BytesIO()
            real(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        C.save_state({str(last)!r}, ck)
        print("not reached")
    """)
    r = subprocess.run([sys.executable, "-c", child], env=S.env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == -9 and "not reached" not in r.stdout, r.stderr
    assert last.read_bytes() == before
    assert C.load_checkpoint(last)["step"] == 10
    temps = S.stray_temps(tmp_path)
    assert len(temps) == 1 and temps[0].parent == last.parent and temps[0].stat().st_size > 0
    assert remove_stale_temps(last.parent) == temps and not S.stray_temps(tmp_path)
    assert last.read_bytes() == before


def test_a_failed_command_removes_the_empty_folders_it_made_and_nothing_else(tmp_path):
    """A full disk on a real file system is in test_hostile_io.py; here: what is removed after a failure."""
    other = tmp_path / "result" / "other-run" / "log.txt"  # a concurrent command's file under the same new root
    with pytest.raises(RuntimeError, match="boom"):
        with no_new_folders_on_failure(tmp_path / "result" / "ev", tmp_path / "maps" / "a"):
            (tmp_path / "result" / "ev" / "deep").mkdir(parents=True)
            (tmp_path / "maps" / "a").mkdir(parents=True)
            other.parent.mkdir()
            other.write_text("keep me")
            raise RuntimeError("boom")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "result",
        "result/other-run",
        "result/other-run/log.txt",
    ]
    with no_new_folders_on_failure(tmp_path / "kept"):  # no failure: everything stays
        (tmp_path / "kept").mkdir()
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EDQUOT, "the disk is full (or the quota is used up)"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "the folder is not writable"),
        (errno.EPERM, "the folder is not writable"),
        (errno.ENOTDIR, "a file is in the way"),
    ],
)
def test_os_errors_are_explained_in_words(tmp_path, code, words):
    e = explain(tmp_path / "nope" / "x.pt", OSError(code, os.strerror(code)))
    assert isinstance(e, OutputError) and e.errno == code
    assert str(e.strerror).startswith(f"cannot write {tmp_path / 'nope' / 'x.pt'}: {words}")


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody may write to. chmod does not stop root (tests often run as root), so there the
    folder is made immutable (chattr +i); where that is unsupported, /sys (never writable) stands in."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(d)], capture_output=True).returncode == 0:
        try:
            yield d
        finally:
            subprocess.run([chattr, "-i", str(d)], capture_output=True)
        return
    try:
        os.mkdir("/sys/mt_cli_probe")
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            yield Path("/sys")
            return
    pytest.skip("no way to make an unwritable folder here")


def test_a_read_only_folder_is_reported_before_anything_is_written(readonly_dir):
    with pytest.raises(OutputError, match="not writable|read-only"):
        check_writable(readonly_dir / "saved")
    with pytest.raises(OutputError, match=r"cannot write .*x.json: the (folder is not writable|file system is read)"):
        write_json(readonly_dir / "x.json", {})


def test_the_cli_says_in_one_line_when_outputs_cannot_be_written(readonly_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for flag, where, words in (
        ("--saved", readonly_dir / "saved", "not writable"),
        ("--result", blocker / "result", "a file is in the way"),
    ):
        r = S.mt("train", "--config", REPO / "configs" / "tiny.yaml", flag, where, cwd=tmp_path)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith("error: cannot write ") and words in lines[0], r.stderr
