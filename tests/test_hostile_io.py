"""Hostile and careless input and output (issue 12): no output replaces an input, a full disk is said as
such, an unusable input is one line and exit 2 naming it, an endless input is refused in bounded memory,
no error line is unbounded, a malicious prepared file never runs, and a failed evaluate leaves nothing.

Everything is real: files, links, a full file system (a 1 MiB tmpfs, or /dev/full where mounting is not
allowed), /dev/zero, pickles that would run code. The checkpoint is an untrained model of the `prepared`
corpus (no training is needed to decode, only to decode well)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_main

from mt_cli import atomic
from mt_cli.atomic import OutputError
from mt_cli.checkpoint import CheckpointError, load_checkpoint, restore, save_checkpoint, save_state
from mt_cli.config import config_from_dict
from mt_cli.data.vocab import PAD
from mt_cli.model import build_model
from mt_cli.torch_io import save as torch_save

MAX_ERROR_LINE = 1000  # the README's promise: no error line is longer


class _RunsCode:
    """Unpickling this runs a shell command that creates `marker`: the classic malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def ckpt(prepared, tmp_path_factory) -> Path:
    """An mt_cli checkpoint of an untrained tiny model over the prepared corpus; decoding stops after 4 tokens."""
    cfg = config_from_dict(prepared.cfg.to_dict(), ["decode.max_len_a=0", "decode.max_len_b=4"])
    torch.manual_seed(0)
    codecs = prepared.codecs
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model=model, cfg=cfg, codecs=codecs, epoch=1, step=1)
    return path


def one_line(code: int, err: str, want_code: int, *words: str) -> str:
    """The failure contract: exit `want_code`, one line on stderr, no traceback, each of `words` in it."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == want_code and len(lines) == 1 and "Traceback" not in err, (code, err[:3000])
    assert len(lines[0]) <= MAX_ERROR_LINE + len("error: ") and lines[0].startswith("error: "), lines[0][:300]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _link(target: Path, link: Path, kind: str) -> Path:
    """`link` naming `target`: the same path, a symbolic link or a hard link."""
    if kind == "same path":
        return target
    (os.symlink if kind == "symlink" else os.link)(target, link)
    return link


# --- 2. no output may replace one of the command's inputs --------------------------------------------------


@pytest.mark.parametrize("kind", ["same path", "symlink", "hard link"])
def test_translate_refuses_an_output_that_is_its_input(kind, ckpt, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in.de"
    src.write_text("ein Hund läuft.\nzwei Katzen.\n", encoding="utf-8")
    before = src.read_bytes()
    out = _link(src, tmp_path / "out.en", kind)
    code, _, err = run_main(
        monkeypatch, capsys, "translate", "--checkpoint", str(ckpt), "-i", str(src), "-o", str(out), "--device", "cpu"
    )
    one_line(code, err, 2, f"--output {out}: is the same file as --input {src}", "choose another output")
    assert src.read_bytes() == before and out.read_bytes() == before
    assert (kind != "symlink" or out.is_symlink()) and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {"in.de", out.name}
    )  # no temp file, no other output


def test_translate_refuses_to_write_over_its_checkpoint(ckpt, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model.pt"
    shutil.copyfile(ckpt, model)
    link = _link(model, tmp_path / "link.pt", "hard link")
    before = model.read_bytes()
    (tmp_path / "in.de").write_text("ein Hund.\n", encoding="utf-8")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "translate",
        "--checkpoint",
        str(link),
        "-i",
        str(tmp_path / "in.de"),
        "-o",
        str(model),
        "--device",
        "cpu",
    )
    one_line(code, err, 2, f"--output {model}: is the same file as --checkpoint {link}")
    assert model.read_bytes() == before


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
def test_average_refuses_an_output_that_is_one_of_its_checkpoints(kind, ckpt, tmp_path, monkeypatch, capsys):
    a = tmp_path / "a.pt"
    shutil.copyfile(ckpt, a)
    before = a.read_bytes()
    out = _link(a, tmp_path / "avg.pt", kind)
    code, _, err = run_main(monkeypatch, capsys, "average", str(a), str(ckpt), "-o", str(out))
    one_line(code, err, 2, f"--output {out}: is the same file as the checkpoint to average {a}")
    assert a.read_bytes() == before and out.read_bytes() == before
    assert os.stat(out).st_ino == os.stat(a).st_ino  # the link itself was not replaced either


def test_evaluate_bench_and_plot_refuse_outputs_that_are_their_inputs(ckpt, prepared, tmp_path, monkeypatch, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(load_checkpoint(ckpt)["config"]), encoding="utf-8")
    cfg_before, ck_before = cfg_path.read_bytes(), ckpt.read_bytes()
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "bench",
        "--config",
        str(cfg_path),
        "--no-training",
        "--out",
        str(cfg_path),
        "--device",
        "cpu",
    )
    one_line(code, err, 2, f"--out {cfg_path}: is the same file as --config")
    assert cfg_path.read_bytes() == cfg_before
    # evaluate writes <split>.<checkpoint name>.beam1.hyp into --out: here that name is a link to the checkpoint
    ev = tmp_path / "ev"
    ev.mkdir()
    os.link(ckpt, ev / "test_2016_flickr.best.beam1.hyp")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--split",
        "test_2016_flickr",
        "--out",
        str(ev),
        "--device",
        "cpu",
    )
    one_line(code, err, 2, "test_2016_flickr.best.beam1.hyp: is the same file as --checkpoint")
    assert ckpt.read_bytes() == ck_before and files_under(ev) == ["test_2016_flickr.best.beam1.hyp"]
    # plot: a PNG name that is the run's own metrics.jsonl
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 5.0, "val_loss": 4.0, "lr": 0.001}\n')
    os.symlink(run / "metrics.jsonl", tmp_path / "curves.png")
    code, _, err = run_main(monkeypatch, capsys, "plot", str(run), "--out", str(tmp_path / "curves.png"))
    one_line(code, err, 2, "is the same file as the run file")
    assert (run / "metrics.jsonl").read_text().startswith('{"epoch": 1')


# --- 3. a full disk while writing a checkpoint or a prepared split -------------------------------------------


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(f"*{atomic.TEMP_SUFFIX}")]


def test_a_full_disk_while_saving_a_checkpoint_or_a_split_says_so(full_disk):
    last, split = full_disk.folder / "last.pt", full_disk.folder / "train.pt"
    save_state(last, {"format": "old", "w": torch.zeros(3)})
    torch_save(split, {"src": torch.arange(5, dtype=torch.int32), "src_off": torch.tensor([0, 5])})
    before = {p: p.read_bytes() for p in (last, split)}
    full_disk.fill()
    for path, write in (
        (last, lambda: save_state(last, {"format": "new", "w": torch.ones(300_000)})),
        (split, lambda: torch_save(split, {"src": torch.arange(300_000, dtype=torch.int32)})),
    ):
        with pytest.raises(OutputError) as e:
            write()
        assert e.value.errno == errno.ENOSPC
        assert str(e.value.strerror).startswith(f"cannot write {path}: the disk is full")
        assert path.read_bytes() == before[path] and not _temps(full_disk.folder)


def test_the_cli_says_the_disk_is_full_in_one_line(ckpt, full_disk, monkeypatch, capsys):
    out = full_disk.folder / "avg.pt"
    save_state(out, {"format": "an older average"})
    before = out.read_bytes()
    full_disk.fill()
    code, _, err = run_main(monkeypatch, capsys, "average", str(ckpt), str(ckpt), "-o", str(out))
    one_line(code, err, 1, f"cannot write {out}: the disk is full")
    assert out.read_bytes() == before and not _temps(full_disk.folder)


# --- 6. an input at fault is exit 2, naming the file and the tensor; inputs and error lines stay bounded ---------


def test_average_of_checkpoints_with_tensors_of_other_shapes_names_the_tensor(ckpt, tmp_path, monkeypatch, capsys):
    ck = load_checkpoint(ckpt)
    name = next(k for k, v in ck["model"].items() if v.dim() == 2)
    ck["model"][name] = ck["model"][name][:-1].clone()  # one row fewer: same config, same vocabularies
    other = tmp_path / "other.pt"
    save_state(other, ck)
    code, _, err = run_main(monkeypatch, capsys, "average", str(other), str(ckpt), "-o", str(tmp_path / "avg.pt"))
    one_line(code, err, 2, f"tensor {name}", str(other), str(ckpt))
    assert not (tmp_path / "avg.pt").exists()


def test_a_state_dict_that_does_not_fit_names_the_first_tensor(ckpt, tmp_path, monkeypatch, capsys):
    ck = load_checkpoint(ckpt)
    first, *_, last = ck["model"]
    misshaped = {**ck, "model": {**ck["model"], first: torch.zeros(3)}}
    missing = {**ck, "model": {k: v for k, v in ck["model"].items() if k != last}}
    unexpected = {**ck, "model": {**ck["model"], "encoder.extra.weight": torch.zeros(2)}}
    for state, words in (
        (misshaped, f"tensor {first} has shape [3] in the file"),
        (missing, f"tensor {last} is missing"),
        (unexpected, "tensor encoder.extra.weight"),
    ):
        with pytest.raises(CheckpointError, match=f"incompatible checkpoint .*{re.escape(words)}"):
            restore(state, "x.pt")
    save_state(tmp_path / "bad.pt", misshaped)
    code, _, err = run_main(
        monkeypatch, capsys, "translate", "--checkpoint", str(tmp_path / "bad.pt"), "-i", os.devnull, "--device", "cpu"
    )
    one_line(code, err, 2, "bad.pt: incompatible checkpoint", f"tensor {first} has shape [3]")


def test_an_endless_input_is_refused_in_bounded_memory(ckpt, tmp_path):
    """/dev/zero never ends and has no line end: refused after about a MiB, under a 1 GiB data limit (the old
    whole-file read died with MemoryError there)."""
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))
        from pathlib import Path
        from mt_cli.cli import main
        from mt_cli.data.sources import read_lines
        try:
            read_lines(Path("/dev/zero"))
        except ValueError as e:
            print("read_lines refused:", e)
        sys.argv = ["mt", "translate", "--checkpoint", {str(ckpt)!r}, "-i", "/dev/zero", "--device", "cpu"]
        main()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert "read_lines refused: /dev/zero: line 1 is longer than" in r.stdout, (r.stdout, r.stderr[-2000:])
    # (a progress bar may come before it: the error is the one last line)
    one_line(r.returncode, r.stderr.splitlines()[-1], 2, "/dev/zero")
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr


def test_no_error_line_is_unbounded(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    huge = "x" * 50_000_000
    code, _, err = run_main(monkeypatch, capsys, "average", huge, "-o", "avg.pt")
    one_line(code, err, 2, "xxxx…")
    code, _, err = run_main(monkeypatch, capsys, "translate", "--checkpoint", "c.pt", "--beam", huge)
    assert code == 2 and max(len(x) for x in err.splitlines()) <= MAX_ERROR_LINE and "Traceback" not in err


# --- 7. a malicious or foreign prepared file: one line, exit 2, nothing runs, no advice to turn safety off ---------


@pytest.mark.parametrize("victim", ["codecs.pt", "test_2016_flickr.src.npy"])
def test_a_malicious_prepared_file_is_refused_in_one_line(victim, ckpt, prepared, tmp_path, monkeypatch, capsys):
    """codecs.pt is a torch file (weights_only), the token arrays are plain .npy: a pickled object array in
    place of one is refused from its header, never unpickled."""
    import numpy as np

    root = tmp_path / "data"
    shutil.copytree(prepared.root, root)
    marker = tmp_path / "PWNED"
    if victim.endswith(".npy"):
        np.save(root / prepared.folder.name / victim, np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    else:
        torch.save({"src": _RunsCode(marker)}, root / prepared.folder.name / victim)
    cfg_path = tmp_path / "c.yaml"
    raw = load_checkpoint(ckpt)["config"]
    raw["data"]["root"] = str(root)
    cfg_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    if victim == "codecs.pt":  # bench without a checkpoint reads the corpus's codecs.pt
        args = ["bench", "--config", str(cfg_path), "--no-training", "--device", "cpu", "--out", "b.json"]
    else:
        args = [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--data-root",
            str(root),
            "--split",
            "test_2016_flickr",
            "--out",
            "ev",
            "--device",
            "cpu",
        ]
    code, _, err = run_main(monkeypatch, capsys, *args)
    said = "not a complete prepared array" if victim.endswith(".npy") else "refused to load: it asks to import"
    line = one_line(code, err, 2, f"{victim}: {said}", "mt prepare")
    assert "weights_only=False" not in line and not marker.exists()


# --- 8. evaluate checks every argument before writing, and a failure leaves nothing behind -------------------------


def test_evaluate_checks_every_split_before_writing_anything(ckpt, tmp_path, monkeypatch, capsys):
    ev = tmp_path / "result" / "ev"
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--split",
        "test_2016_flickr",
        "--split",
        "bogus",
        "--out",
        str(ev),
        "--device",
        "cpu",
    )
    one_line(code, err, 2, "no split 'bogus'")
    assert files_under(tmp_path) == []


def test_evaluate_on_a_full_disk_leaves_no_folders(ckpt, full_disk, monkeypatch, capsys):
    ev = full_disk.folder / "result" / "ev"
    full_disk.fill(leave=0)
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--split",
        "test_2017_mscoco",
        "--out",
        str(ev),
        "--device",
        "cpu",
    )
    # the split's score is logged before the writing fails; the error is the one last line
    one_line(code, err.splitlines()[-1], 1, f"cannot write {ev}", "the disk is full")
    assert "Traceback" not in err and not (full_disk.folder / "result").exists() and not _temps(full_disk.folder)
