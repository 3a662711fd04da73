"""The final test of a run (mt_cli.evaluate.final_test) and the report files evaluate_splits keeps: which
checkpoint is tested, what is logged, which earlier scores a report keeps, and what a failed write leaves."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from conftest import TINY

from mt_cli import evaluate
from mt_cli.checkpoint import load_checkpoint, restore, save_state
from mt_cli.config import load_config
from mt_cli.evaluate import evaluate_splits, final_test

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(small, tmp_path_factory):
    """Two epochs of configs/tiny.yaml on the small corpus, epoch snapshots kept for an average of two."""
    from mt_cli.training import train

    d, overrides = small
    tmp = tmp_path_factory.mktemp("final")
    more = ["train.epochs=2", "train.average_last=2", "train.val_bleu=false", "train.lr=3e-3"]
    cfg = load_config(TINY, overrides + more)
    summary = train(cfg, device="cpu", saved_root=str(tmp / "saved"), result_root=str(tmp / "result"), log=print)
    return cfg, tmp / "saved" / summary["run"], overrides + more


def _copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "saved", copy_function=shutil.copy2)


def test_without_average_last_best_is_tested_even_beside_epoch_snapshots(trained, tmp_path, capsys):
    _, saved, overrides = trained
    cfg = load_config(TINY, overrides + ["train.average_last=0"])
    saved = _copy(saved, tmp_path)
    (saved / "averaged.pt").unlink()
    logs = []
    rep = final_test(cfg, saved, tmp_path / "result", CPU, None, logs.append)
    assert rep["checkpoint"] == str(saved / "best.pt") and "valid_bleu_of" not in rep
    assert not (saved / "averaged.pt").exists()  # nothing averaged: average_last 0 means no average
    assert logs[0] == "testing best.pt with beam 2 on test_small, test_tiny"
    assert [line.split(":")[0] for line in logs[1:]] == ["valid", "test_small", "test_tiny"]
    assert capsys.readouterr().out == ""  # everything went to the caller's log


def test_the_average_and_best_are_compared_at_the_configured_beam(trained, tmp_path, capsys):
    cfg, saved, _ = trained
    saved = _copy(saved, tmp_path)
    logs = []
    rep = final_test(cfg, saved, tmp_path / "result", CPU, None, logs.append)
    picks = rep["valid_bleu_of"]
    # the validation BLEU of each candidate, decoded independently at beam 2
    for name in ("averaged.pt", "best.pt"):
        model, _, codecs = restore(load_checkpoint(saved / name))
        alone = evaluate_splits(model.eval(), codecs, cfg, ["valid"], CPU, 2, None, log=lambda *_: None)
        assert picks[name] == pytest.approx(alone["valid"]["bleu"], abs=1e-9)
    winner = "averaged.pt" if picks["averaged.pt"] >= picks["best.pt"] else "best.pt"
    assert logs[0] == "averaged the last 2 epochs -> " + str(saved / "averaged.pt")
    want = f"valid BLEU with beam 2: averaged.pt {picks['averaged.pt']:.2f}, best.pt {picks['best.pt']:.2f}"
    assert logs[1] == f"{want} -> {winner}"
    assert logs[2] == f"testing {winner} with beam 2 on test_small, test_tiny"
    assert capsys.readouterr().out == ""


def test_no_best_checkpoint_skips_the_test_and_says_why(trained, tmp_path):
    cfg, _, _ = trained
    logs = []
    assert final_test(cfg, tmp_path, tmp_path / "result", CPU, None, logs.append) == {}
    assert len(logs) == 1 and logs[0].startswith("no best.pt: no epoch improved val_loss") and "skipped" in logs[0]


def test_a_misfit_checkpoint_is_named_in_the_error(trained, tmp_path):
    _, saved, overrides = trained
    cfg = load_config(TINY, overrides + ["train.average_last=0"])
    saved = _copy(saved, tmp_path)
    ckpt = load_checkpoint(saved / "best.pt")
    del ckpt["model"]["decoder_norm.weight" if "decoder_norm.weight" in ckpt["model"] else next(iter(ckpt["model"]))]
    save_state(saved / "best.pt", ckpt)
    with pytest.raises(ValueError, match=f"^{re.escape(str(saved / 'best.pt'))}: incompatible checkpoint"):
        final_test(cfg, saved, tmp_path / "result", CPU, None, lambda *_: None)


def test_a_corpus_without_test_splits_says_so(small, tmp_path):
    from mt_cli.data.prepare import prepare_corpus
    from mt_cli.training import train

    _, overrides = small
    cfg = load_config(TINY, overrides + [f"data.root={tmp_path / 'data'}", "data.test=[]", "train.val_bleu=false"])
    prepare_corpus(cfg.data, log=lambda *_: None)
    logs = []
    train(cfg, device="cpu", saved_root=str(tmp_path / "saved"), result_root=str(tmp_path / "r"), log=logs.append)
    assert "testing best.pt with beam 2 on no test split" in logs


def _reports(trained, out, splits, checkpoint):
    cfg, _, _ = trained
    model, _, codecs = restore(load_checkpoint(checkpoint))
    quiet = lambda *_: None  # noqa: E731
    return evaluate_splits(model.eval(), codecs, cfg, splits, CPU, 1, out, log=quiet, checkpoint=str(checkpoint))


def test_a_report_keeps_only_the_scores_of_the_same_checkpoint_file(trained, tmp_path):
    _, saved, _ = trained
    saved = _copy(saved, tmp_path)
    best, out = saved / "best.pt", tmp_path / "eval"
    report = out / "eval.beam1.json"
    _reports(trained, out, ["valid"], best)
    _reports(trained, out, ["test_small"], best)
    assert list(json.loads(report.read_text())) == ["valid", "test_small"]  # the same file: both kept
    other = saved / "other.pt"
    shutil.copy2(best, other)  # the same weights and time, another file
    _reports(trained, out, ["test_small"], other)
    assert list(json.loads(report.read_text())) == ["test_small"]
    assert json.loads(report.read_text())["test_small"]["checkpoint"] == str(other)
    _reports(trained, out, ["valid"], other)
    later = other.stat().st_mtime_ns + 10**9
    os.utime(other, ns=(later, later))  # other.pt rewritten since: its earlier scores are not its own
    _reports(trained, out, ["test_small"], other)
    assert list(json.loads(report.read_text())) == ["test_small"]


def test_a_failed_report_write_removes_only_the_files_it_created(trained, tmp_path, monkeypatch):
    _, saved, _ = trained
    best, out = saved / "best.pt", tmp_path / "eval"
    _reports(trained, out, ["valid"], best)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"valid.beam1.hyp", "eval.beam1.json"}

    def no_space(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(evaluate, "write_json", no_space)  # the report's write fails after both hypotheses
    with pytest.raises(OSError, match="No space left"):
        _reports(trained, out, ["test_small", "valid"], best)
    # test_small's hypotheses were new: removed; valid's and the report existed: kept whole
    assert {p.name for p in out.iterdir()} == set(before)
    assert (out / "eval.beam1.json").read_bytes() == before["eval.beam1.json"]
