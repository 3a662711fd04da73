"""End to end through the real entry point (`python -m mt_cli`, i.e. mt_cli.cli.main) in a scratch folder:
prepare -> train -> evaluate -> translate, and the one-line errors users see for bad input.

The main pipeline runs as real subprocesses. The error cases call mt_cli.cli.main in this process (the same
function `mt` runs, with sys.argv, cwd and stdin set) because each interpreter start costs seconds here."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY
from sacrebleu.metrics import BLEU, TER

from mt_cli.checkpoint import load_checkpoint, load_for_inference
from mt_cli.config import load_config
from mt_cli.data.sources import read_lines
from mt_cli.translate import translate_lines

METRIC_KEYS = {"epoch", "step", "train_loss", "val_loss", "val_ppl", "val_bleu", "lr", "seconds", "tokens_per_s"}


def mt(*args, cwd, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MT_MULTI30K_DIR"}  # --source must be what is used
    return subprocess.run(
        [sys.executable, "-m", "mt_cli", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def cli(capfd, monkeypatch):
    """Run mt_cli.cli.main with `args` in `cwd`; returns (returncode, stdout, stderr) like subprocess.run."""
    from mt_cli.cli import main

    def call(*args, cwd, stdin: str | bytes = ""):
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["mt", *map(str, args)])
        raw = stdin if isinstance(stdin, bytes) else stdin.encode("utf-8")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
        capfd.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return call


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr
    return p


def one_line_error(p: subprocess.CompletedProcess, code: int | None = None) -> str:
    """The failure contract of mt_cli.cli.main: a non-zero exit, one line on stderr, no traceback."""
    assert p.returncode != 0, p.stdout
    if code is not None:
        assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory, multi30k_dir):
    """`mt prepare` then `mt train` of configs/tiny.yaml (data under the scratch folder, 20 steps, short
    decoding limits so an untrained model's validation and test decoding stay quick)."""
    tmp = tmp_path_factory.mktemp("cli")
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["root"] = "data"
    raw["train"]["max_tokens"] = 1024
    raw["decode"].update(max_len_a=0.0, max_len_b=4)
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    prep = ok(mt("prepare", "--config", "tiny.yaml", "--source", multi30k_dir, cwd=tmp))
    tr = ok(mt("train", "--config", "tiny.yaml", "--set", "train.max_steps=20", "--device", "cpu", cwd=tmp))
    return {"tmp": tmp, "prepare": prep, "train": tr, "cfg": load_config(tmp / "tiny.yaml", ["train.max_steps=20"])}


def test_prepare_builds_the_corpus_from_the_source_folder(run):
    tmp = run["tmp"]
    manifests = list((tmp / "data").glob("*/manifest.json"))
    assert len(manifests) == 1
    man = json.loads(manifests[0].read_text())
    assert man["splits"]["train"]["pairs"] == 29000 and man["splits"]["valid"]["pairs"] == 1014
    assert man["fingerprint"] == run["cfg"].data.fingerprint()
    assert sorted(p.name for p in (tmp / "data" / "multi30k_raw").iterdir()) == sorted(man["files_sha256"])


def test_second_prepare_reuses_the_corpus(run, cli):
    again = ok(cli("prepare", "--config", "tiny.yaml", "--source", "/nonexistent", cwd=run["tmp"]))
    assert "up to date" in again.stderr


def test_train_writes_what_it_claims(run):
    tmp, out = run["tmp"], run["train"].stdout
    assert "run tiny: checkpoints in saved/tiny, logs in result/tiny" in out
    saved, result = tmp / "saved" / "tiny", tmp / "result" / "tiny"
    for f in (
        saved / "best.pt",
        saved / "last.pt",
        result / "metrics.jsonl",
        result / "config.yaml",
        result / "summary.json",
    ):
        assert f.is_file() and f.stat().st_size > 0, f

    recs = [json.loads(line) for line in (result / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 1  # max_steps=20 ends the run inside epoch 1
    rec = recs[0]
    assert METRIC_KEYS <= rec.keys()
    assert rec["epoch"] == 1 and rec["step"] == 20
    assert all(math.isfinite(rec[k]) for k in ("train_loss", "val_loss", "val_ppl", "lr", "seconds"))
    assert rec["val_ppl"] == pytest.approx(math.exp(rec["val_loss"]), rel=1e-3)
    assert 0 <= rec["val_bleu"] <= 100 and rec["lr"] == pytest.approx(1e-3)
    assert rec["seconds"] > 0 and rec["tokens_per_s"] > 0

    assert load_config(result / "config.yaml").to_dict() == run["cfg"].to_dict()  # reloadable, same settings

    summary = json.loads((result / "summary.json").read_text())
    assert summary["run"] == "tiny" and summary["best_epoch"] == 1
    assert summary["best_val_loss"] == pytest.approx(rec["val_loss"], abs=1e-4)
    assert {"valid", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"} <= summary["test"].keys()
    for split in ("valid", "test_2016_flickr"):
        hyp = result / f"{split}.beam2.hyp"
        assert len(read_lines(hyp)) == summary["test"][split]["sentences"]
    assert summary["test"]["test_2016_flickr"]["sentences"] == 1000

    best = load_checkpoint(saved / "best.pt")
    last = load_checkpoint(saved / "last.pt")
    assert best["config"] == run["cfg"].to_dict() and best["step"] == 20 and best["metrics"]["step"] == 20
    assert "train_state" in last and last["step"] == 20
    assert best["model"].keys() == last["model"].keys()


def test_second_run_gets_its_own_folders(run):
    """A new run of the same config never overwrites the first (checked without training: the folders exist)."""
    from mt_cli.training.resume import run_folders

    saved, result = run_folders(run["cfg"], str(run["tmp"] / "saved"), str(run["tmp"] / "result"))
    assert saved.name == result.name == "tiny-2"


def test_runs_of_one_config_started_at_once_claim_different_folders(run, tmp_path):
    """A sweep starting the same config several times at the same moment: each run claims its own folders."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mt_cli.training.resume import run_folders

    (tmp_path / "result" / "tiny-3").mkdir(parents=True)  # a run whose saved/ folder was deleted keeps its name
    start = threading.Barrier(8)

    def claim(_):
        start.wait()
        return run_folders(run["cfg"], str(tmp_path / "saved"), str(tmp_path / "result"), claim=True)

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(claim, range(8)))
    names = sorted(s.name for s, _ in claimed)
    assert all(s.name == r.name and s.is_dir() and r.is_dir() for s, r in claimed)
    assert names == sorted(["tiny"] + [f"tiny-{n}" for n in (2, 4, 5, 6, 7, 8, 9)])


def test_evaluate_prints_the_table_and_writes_reports(run):
    tmp = run["tmp"]
    p = ok(
        mt("evaluate", "--checkpoint", "saved/tiny/best.pt", "--split", "test_2016_flickr", "--device", "cpu", cwd=tmp)
    )
    lines = p.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["split", "BLEU"])
    assert lines[header].split() == ["split", "BLEU", "BLEU", "lc", "chrF", "TER", "beam", "sent/s"]
    row = lines[header + 1].split()
    assert row[0] == "test_2016_flickr" and row[5] == "1"  # beam 1 (greedy) by default
    # the headline is cased sacreBLEU, as the field reports it; the lowercased score and its signature beside
    sig = next(line for line in lines if line.startswith("BLEU signature: "))
    assert sig.startswith("BLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    sig_lc = next(line for line in lines if line.startswith("BLEU lc signature: "))
    assert sig_lc.startswith("BLEU lc signature: nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:")

    out = tmp / "result" / "tiny" / "eval"
    report = json.loads((out / "eval.best.beam1.json").read_text())
    assert list(report) == ["test_2016_flickr"]
    r = report["test_2016_flickr"]
    assert r["checkpoint"] == "saved/tiny/best.pt"
    assert r["sentences"] == 1000 and r["beam_size"] == 1 and f"BLEU signature: {r['bleu_signature']}" == sig
    assert [float(x) for x in row[1:5]] == pytest.approx([r["bleu"], r["bleu_lc"], r["chrf"], r["ter"]], abs=0.01)
    hyps = read_lines(out / "test_2016_flickr.best.beam1.hyp")
    assert len(hyps) == 1000
    refs = read_lines(next((tmp / "data").glob("*/test_2016_flickr.ref.en")))
    assert BLEU().corpus_score(hyps, [refs]).score == pytest.approx(r["bleu"], abs=0.01)
    assert BLEU(lowercase=True).corpus_score(hyps, [refs]).score == pytest.approx(r["bleu_lc"], abs=0.01)
    assert TER().corpus_score(hyps, [refs]).score == pytest.approx(r["ter"], abs=0.01)
    assert any(ref != ref.lower() for ref in refs)  # the corpus keeps its case (configs/tiny.yaml)
    # another split of the same checkpoint joins the report; another checkpoint gets its own files
    ok(mt("evaluate", "--checkpoint", "saved/tiny/best.pt", "--split", "test_2017_mscoco", "--device", "cpu", cwd=tmp))
    assert set(json.loads((out / "eval.best.beam1.json").read_text())) == {"test_2016_flickr", "test_2017_mscoco"}
    ok(mt("evaluate", "--checkpoint", "saved/tiny/last.pt", "--split", "test_2017_mscoco", "--device", "cpu", cwd=tmp))
    assert list(json.loads((out / "eval.last.beam1.json").read_text())) == ["test_2017_mscoco"]
    t = (tmp / "saved" / "tiny" / "best.pt").stat().st_mtime_ns + 10**9
    os.utime(tmp / "saved" / "tiny" / "best.pt", ns=(t, t))  # best.pt rewritten (trained further): old scores go
    ok(mt("evaluate", "--checkpoint", "saved/tiny/best.pt", "--split", "valid", "--device", "cpu", cwd=tmp))
    assert list(json.loads((out / "eval.best.beam1.json").read_text())) == ["valid"]
    assert (out / "test_2017_mscoco.last.beam1.hyp").is_file() and (out / "test_2017_mscoco.best.beam1.hyp").is_file()


def test_translate_keeps_line_count_order_and_empty_lines(run, real_lines, cli):
    tmp = run["tmp"]
    de = real_lines("test_2016_flickr", "de")
    lines = [de[0], "", de[1], "   ", de[2], de[3], "", de[4]]
    (tmp / "in.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = ok(
        mt(
            "translate",
            "--checkpoint",
            "saved/tiny/best.pt",
            "--input",
            "in.de",
            "--output",
            "out/g.en",
            "--device",
            "cpu",
            cwd=tmp,
        )
    )
    got = (tmp / "out" / "g.en").read_text(encoding="utf-8").split("\n")
    assert got[-1] == "" and len(got) - 1 == len(lines)  # one output line per input line, newline-terminated
    got = got[:-1]
    assert [g for g, src in zip(got, lines) if not src.strip()] == ["", "", ""]
    # line i is the translation of input line i: translate each line on its own and compare
    model, cfg, codecs = load_for_inference(tmp / "saved" / "tiny" / "best.pt", torch.device("cpu"))
    for src, hyp in zip(lines, got):
        if src.strip():
            assert hyp == translate_lines(model, cfg, codecs, [src], torch.device("cpu"))[0][0]
    assert p.stdout == ""
    # stdin to stdout gives the same text
    q = ok(
        cli(
            "translate", "--checkpoint", "saved/tiny/best.pt", "--device", "cpu", cwd=tmp, stdin="\n".join(lines) + "\n"
        )
    )
    assert q.stdout.split("\n")[:-1] == got


# --- bad input: exit code and one line on stderr ------------------------------------------------


def test_unknown_config_key_exits_2(tmp_path, cli):
    (tmp_path / "bad.yaml").write_text("model:\n  d_modle: 64\n", encoding="utf-8")
    line = one_line_error(mt("train", "--config", "bad.yaml", cwd=tmp_path), 2)  # a real process: its exit code
    assert line.startswith("error: ") and "bad.yaml" in line and "model.d_modle" in line and "unknown key" in line
    line = one_line_error(cli("prepare", "--config", TINY, "--set", "train.foo=1", cwd=tmp_path), 2)
    assert "train.foo" in line


def test_help_and_config_errors_answer_without_importing_torch(tmp_path):
    """Importing torch costs seconds; `mt --help` and a typo in a config should not wait for it."""
    probe = (
        "import sys\nfrom mt_cli.cli import main\nsys.argv = ['mt'] + sys.argv[1:]\n"
        "code = 0\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\nprint('torch' in sys.modules, code)\n"
    )
    for args in (
        ["--help"],
        ["train", "--help"],
        ["train", "--config", "missing.yaml"],
        ["bench", "--set", "train.lr=abc"],
    ):
        p = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True)
        assert p.stdout.split()[-2:] == ["False", "0" if "--help" in args else "2"], (args, p.stdout, p.stderr)


def test_bad_config_value_exits_2(tmp_path, cli):
    line = one_line_error(cli("train", "--config", TINY, "--set", "model.n_heads=3", cwd=tmp_path), 2)
    assert line.startswith("error: --set model.n_heads=3: must divide model.d_model")


def test_missing_checkpoint_exits_2(tmp_path, cli):
    for cmd in ("evaluate", "translate"):
        line = one_line_error(cli(cmd, "--checkpoint", "nope.pt", "--device", "cpu", cwd=tmp_path, stdin="x\n"), 2)
        assert "nope.pt" in line


def test_garbage_checkpoints_exit_2(tmp_path, run, cli):
    g = torch.Generator().manual_seed(0)
    (tmp_path / "random.pt").write_bytes(bytes(torch.randint(0, 256, (5000,), generator=g, dtype=torch.uint8)))
    (tmp_path / "text.pt").write_text("hello\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    good = (run["tmp"] / "saved" / "tiny" / "best.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    for name in ("random.pt", "text.pt", "empty.pt", "truncated.pt", "foreign.pt"):
        line = one_line_error(cli("evaluate", "--checkpoint", name, "--device", "cpu", cwd=tmp_path), 2)
        assert name in line and line.startswith("error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_gpu_exits_2(tmp_path, run, cli):
    ckpt = run["tmp"] / "saved" / "tiny" / "best.pt"
    line = one_line_error(cli("translate", "--checkpoint", ckpt, "--device", "cuda", cwd=tmp_path, stdin="x\n"), 2)
    assert "cuda" in line.lower()
    line = one_line_error(cli("train", "--config", "tiny.yaml", "--device", "cuda", cwd=run["tmp"]), 2)
    assert "cuda" in line.lower()
    assert not (run["tmp"] / "saved" / "tiny-2").exists()  # nothing was started


def test_unwritable_output_folder_fails_with_one_line(tmp_path, run, cli):
    ckpt = run["tmp"] / "saved" / "tiny" / "best.pt"
    (tmp_path / "in.de").write_text("Ein Hund.\n", encoding="utf-8")
    (tmp_path / "afile").write_text("a file where a folder is needed\n")
    line = one_line_error(
        cli(
            "translate",
            "--checkpoint",
            ckpt,
            "--input",
            "in.de",
            "--output",
            "afile/out/g.en",
            "--device",
            "cpu",
            cwd=tmp_path,
        )
    )
    assert "afile" in line and line.startswith("error: ")
    line = one_line_error(
        cli(
            "evaluate",
            "--checkpoint",
            ckpt,
            "--split",
            "test_2017_mscoco",
            "--out",
            "afile/ev",
            "--data-root",
            run["tmp"] / "data",
            "--device",
            "cpu",
            cwd=tmp_path,
        )
    )
    assert "afile" in line


def test_evaluate_from_another_folder_finds_the_corpus(tmp_path, run, cli):
    """data.root is relative ("data"); the checkpoint also records where that was, so no --data-root is needed."""
    ckpt = run["tmp"] / "saved" / "tiny" / "best.pt"
    p = cli(
        "evaluate", "--checkpoint", ckpt, "--split", "test_2017_mscoco", "--out", "ev", "--device", "cpu", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert len(read_lines(tmp_path / "ev" / "test_2017_mscoco.best.beam1.hyp")) == 461
    (tmp_path / "data" / run["cfg"].data.corpus_name).mkdir(parents=True)  # a local data/ wins over the record
    line = one_line_error(
        cli("evaluate", "--checkpoint", ckpt, "--split", "test_2017_mscoco", "--device", "cpu", cwd=tmp_path), 2
    )
    assert "test_2017_mscoco" in line and "--data-root" in line


def test_missing_input_file_and_split(tmp_path, run, cli):
    ckpt = run["tmp"] / "saved" / "tiny" / "best.pt"
    line = one_line_error(
        cli("translate", "--checkpoint", ckpt, "--input", "missing.de", "--device", "cpu", cwd=tmp_path), 2
    )
    assert "missing.de" in line
    line = one_line_error(
        cli(
            "evaluate",
            "--checkpoint",
            ckpt,
            "--split",
            "test_2099",
            "--data-root",
            run["tmp"] / "data",
            "--device",
            "cpu",
            cwd=tmp_path,
        ),
        2,
    )
    assert "test_2099" in line and "test_2016_flickr" in line and "codecs" not in line  # names what is available


def test_usage_errors_exit_2_and_bare_mt_shows_help(tmp_path, cli):
    p = cli(cwd=tmp_path)
    assert p.returncode == 0 and "[OPTIONS] COMMAND" in p.stdout + p.stderr and "translate" in p.stdout + p.stderr
    for args, words in (
        (["exprot"], "No such command 'exprot'"),
        (["translate"], "Missing option '--checkpoint'"),
        (["translate", "--checkpoint", "x", "--beam", "abc"], "Invalid value for '--beam'"),
    ):
        p = cli(*args, cwd=tmp_path)
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    p = cli("translate", "--help", cwd=tmp_path)
    assert "[config's decode.beam_size]" in " ".join(p.stdout.split())  # not eaten as markup


def test_option_values_out_of_range_exit_2(tmp_path, run, cli):
    ckpt = run["tmp"] / "saved" / "tiny" / "best.pt"
    for args, words in (
        (["translate", "--beam", "0"], "--beam 0: must be in [1, 64]"),
        (["translate", "--beam", "-3"], "--beam -3: must be in [1, 64]"),
        (["evaluate", "--beam", "65"], "--beam 65: must be in [1, 64]"),
        (["translate", "--nbest", "0"], "--nbest 0: must be >= 1"),
        (["translate", "--device", "mps"], "--device mps: not a device mt_cli uses"),
    ):
        line = one_line_error(cli(*args, "--checkpoint", ckpt, cwd=tmp_path, stdin="ein Hund\n"), 2)
        assert words in line, (args, line)
    line = one_line_error(
        cli("translate", "--checkpoint", ckpt, "--device", "cpu", cwd=tmp_path, stdin=b"ein Hund\nein M\xe4nnchen\n"), 2
    )
    assert line == "error: stdin:2: invalid UTF-8 at byte 5; convert the text to UTF-8"
    (tmp_path / "adir").mkdir()
    line = one_line_error(cli("translate", "--checkpoint", ckpt, "-i", "adir", "--device", "cpu", cwd=tmp_path), 2)
    assert "adir: is a folder, not a text file" in line
    line = one_line_error(
        cli("translate", "--checkpoint", ckpt, "-o", "adir", "--device", "cpu", cwd=tmp_path, stdin="ein Hund\n"), 2
    )
    assert "--output adir: is a folder" in line
    p = cli("translate", "--checkpoint", ckpt, "-i", os.devnull, "--device", "cpu", cwd=tmp_path)  # not a regular file
    assert p.returncode == 0 and p.stdout == "", p.stderr


def test_ctrl_c_says_interrupted_and_exits_130(tmp_path, cli, monkeypatch):
    import mt_cli.cli.cmd_train as C

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_load", interrupted)
    p = cli("train", "--config", TINY, cwd=tmp_path)
    assert p.returncode == 130 and p.stderr.strip() == "interrupted", p.stderr


def test_a_complete_raw_cache_needs_no_source(run, monkeypatch):
    from mt_cli.data.prepare import _split_files

    monkeypatch.chdir(run["tmp"])
    monkeypatch.setenv("MT_MULTI30K_DIR", "/nonexistent/multi30k")  # stale, but every file is cached
    splits, _ = _split_files(run["cfg"].data, None, lambda *_: None, run["tmp"])
    assert len(read_lines(splits["train"][0])) == 29000


def test_failed_commands_leave_no_empty_folders(tmp_path, cli, multi30k_dir):
    before = set(tmp_path.iterdir())
    one_line_error(
        cli(
            "train",
            "--config",
            TINY,
            "--set",
            "data.root=nodata",
            "--saved",
            "s",
            "--result",
            "r",
            "--device",
            "cpu",
            cwd=tmp_path,
        ),
        2,
    )  # no prepared corpus
    one_line_error(
        cli(
            "translate",
            "--checkpoint",
            "missing.pt",
            "-o",
            "newdir/x.txt",
            "--device",
            "cpu",
            cwd=tmp_path,
            stdin="x\n",
        ),
        2,
    )
    one_line_error(
        cli(
            "translate",
            "--checkpoint",
            "missing.pt",
            "--attention",
            "maps",
            "--attention-layer",
            "x",
            "--device",
            "cpu",
            cwd=tmp_path,
            stdin="x\n",
        ),
        2,
    )
    one_line_error(
        cli("prepare", "--config", TINY, "--set", "data.root=d2", "--source", "/nonexistent", cwd=tmp_path), 2
    )
    assert set(tmp_path.iterdir()) == before
