"""`mt runs`: two real tiny runs that differ in one config key, listed with that key and their scores."""

from __future__ import annotations

import json

import pytest
from conftest import run_main, write_tsv

from mt_cli.config import config_from_dict
from mt_cli.runs import differing_keys, find_runs, flatten, format_runs, runs_report


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, real_lines):
    from mt_cli.data.prepare import prepare_corpus
    from mt_cli.training import train

    base = tmp_path_factory.mktemp("runs")
    de, en = real_lines("train", "de")[:120], real_lines("train", "en")[:120]
    write_tsv(base / "train.tsv", de, en)
    vde, ven = real_lines("val", "de")[:12], real_lines("val", "en")[:12]
    (base / "dev.de").write_text("\n".join(vde) + "\n", encoding="utf-8")
    (base / "dev.en").write_text("\n".join(ven) + "\n", encoding="utf-8")
    raw = {
        "name": "exp",
        "data": {
            "corpus": "files",
            "train": str(base / "train.tsv"),
            "valid": str(base / "dev"),
            "test": [str(base / "dev")],
            "root": str(base / "data"),
            "min_freq": 1,
        },
        "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "d_ff": 64},
        "train": {"epochs": 1, "max_tokens": 512, "max_steps": 3, "cuda_graphs": False},
        "decode": {"beam_size": 1, "max_len_b": 3},
    }
    result = base / "result"
    for lr in ("1e-3", "2e-3"):
        cfg = config_from_dict(raw, [f"train.lr={lr}"])
        prepare_corpus(cfg.data, log=lambda *_: None)
        train(cfg, device="cpu", saved_root=str(base / "saved"), result_root=str(result), log=lambda *_: None)
    return result


def test_report_lists_the_differing_key_and_scores(two_runs):
    folders = find_runs(two_runs)
    assert [f.name for f in folders] == ["exp", "exp-2"]  # oldest first
    report = runs_report(folders)
    assert report["differences"] == ["train.lr"]
    a, b = report["runs"]
    assert (a["config"]["train.lr"], b["config"]["train.lr"]) == (1e-3, 2e-3)
    for r in (a, b):
        assert r["epochs"] == 1 and r["finished"]
        assert isinstance(r["best_val_bleu"], float)
        summary = json.loads((two_runs / r["run"] / "summary.json").read_text())
        assert r["test_bleu"] == {"test_dev": summary["test"]["test_dev"]["bleu"]}
        assert r["test_bleu_lc"] == {"test_dev": summary["test"]["test_dev"]["bleu_lc"]}
    table = format_runs(report).splitlines()
    assert table[0].split() == [
        "run",
        "train.lr",
        "epochs",
        "best",
        "val",
        "BLEU",
        "best",
        "val",
        "loss",
        "test_dev",
        "BLEU",
        "test_dev",
        "BLEU",
        "lc",
    ]
    assert table[-1].startswith("BLEU: cased sacreBLEU")
    assert table[2].split()[:3] == ["exp", "0.001", "1"] and table[3].split()[:3] == ["exp-2", "0.002", "1"]


def test_mt_runs_cli(two_runs, monkeypatch, capsys, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, "runs", "--result", str(two_runs))
    assert code == 0, err
    assert "train.lr" in out.splitlines()[0] and "exp-2" in out
    code, out, err = run_main(monkeypatch, capsys, "runs", "exp-2", "--result", str(two_runs), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert [r["run"] for r in rep["runs"]] == ["exp-2"] and rep["differences"] == []
    # errors: one line, no traceback
    code, _, err = run_main(monkeypatch, capsys, "runs", "--result", str(tmp_path / "none"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(monkeypatch, capsys, "runs", "--result", str(tmp_path / "empty"))
    assert code == 1 and "no runs" in err, err


def test_unfinished_run_and_missing_keys(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_loss": 4.0, "val_bleu": None}) + "\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"name": "b", "train": {"lr": 0.1}}))
    (tmp_path / "not_a_run").mkdir()
    report = runs_report(find_runs(tmp_path))
    assert [r["run"] for r in report["runs"]] == ["a", "b"] or [r["run"] for r in report["runs"]] == ["b", "a"]
    assert report["differences"] == ["train.lr"]
    a = next(r for r in report["runs"] if r["run"] == "a")
    assert a["best_val_bleu"] is None and a["best_val_loss"] == 4.0 and not a["finished"]
    table = format_runs(report).splitlines()
    assert table[0].split() == ["run", "train.lr", "epochs", "best", "val", "BLEU", "best", "val", "loss"]
    assert set(table[1]) == {"-", " "}  # the separator row
    # a missing value is "-" in its own cell: a's lr (no config) and BLEU (null), b's scores (no metrics yet)
    assert table[-1].startswith("BLEU: cased sacreBLEU")
    rows = {line.split()[0]: line.split() for line in table[2:-1]}
    assert rows == {"a": ["a", "-", "1", "-", "4"], "b": ["b", "0.1", "0", "-", "-"]}


def test_a_nan_epoch_is_not_the_best(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    recs = [
        {"epoch": 1, "val_loss": float("nan"), "val_bleu": float("nan")},
        {"epoch": 2, "val_loss": 3.0, "val_bleu": 7.5},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = runs_report(find_runs(tmp_path))["runs"][0]
    assert (r["best_val_loss"], r["best_val_bleu"]) == (3.0, 7.5)


def test_flatten_and_differences():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    assert differing_keys([{"name": "x", "k": 1, "l": [1]}, {"name": "y", "k": 2, "l": [1]}]) == ["k"]
