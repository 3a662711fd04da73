"""mt_cli.evaluate: the validation loss against a sentence-by-sentence reference, a split's scores against
sacreBLEU, the final test of a run (which checkpoint, what is logged) and the report files (which earlier
scores a report keeps, what a failed write leaves)."""

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
from mt_cli.data.batching import Split
from mt_cli.data.prepare import corpus_dir
from mt_cli.data.sources import DataError
from mt_cli.data.vocab import PAD
from mt_cli.evaluate import evaluate_splits, final_test, validation_loss

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
    # a model given without its file: no file tells such calls apart, so each keeps the other's split
    cfg, (model, _, codecs) = trained[0], restore(load_checkpoint(best))
    for split in ("valid", "test_small"):
        evaluate_splits(model.eval(), codecs, cfg, [split], CPU, 1, tmp_path / "plain", log=lambda *_: None)
    kept = json.loads((tmp_path / "plain" / "eval.beam1.json").read_text())
    assert list(kept) == ["valid", "test_small"] and "checkpoint" not in kept["valid"]


def test_an_evaluation_split_is_streamed_beyond_data_resident_max_mb(trained):
    cfg, _, overrides = trained
    assert evaluate.load_eval_split(cfg, "valid")[0].resident
    data, refs = evaluate.load_eval_split(load_config(TINY, overrides + ["data.resident_max_mb=0"]), "valid")
    assert not data.resident and len(refs) == len(data) > 0


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


def test_the_validation_loss_is_the_token_mean_of_each_sentence_scored_alone(trained):
    cfg, saved, _ = trained
    model, _, _ = restore(load_checkpoint(saved / "best.pt"))
    model.train()  # dropout on: validation_loss must turn it off, and back on after
    split, rows = Split(corpus_dir(cfg.data) / "valid"), Split(corpus_dir(cfg.data) / "valid", 1, resident=False)
    total = tokens = 0.0
    with torch.no_grad():
        model.eval()
        for i in range(len(split)):
            src, tgt = (torch.as_tensor(a) for a in rows.rows(torch.tensor([i]), 200))
            src, tgt = src[:, src[0] != PAD], tgt[:, tgt[0] != PAD]  # this sentence alone, no padding
            logp = torch.log_softmax(model(src, tgt[:, :-1]).float(), -1)[0]
            total -= logp.gather(1, tgt[0, 1:, None]).sum().item()
            tokens += tgt.shape[1] - 1
        model.train()
    # fp32 throughout: a bare CPU autocast (bfloat16) is off by ~2e-5 here
    assert validation_loss(model, split, cfg, CPU, None) == pytest.approx(total / tokens, rel=1e-6)
    assert model.training


def test_a_split_report_and_its_log_line_agree_with_sacrebleu(trained, small, tmp_path):
    from sacrebleu.metrics import BLEU, CHRF, TER

    cfg, saved, _ = trained
    best, logs = saved / "best.pt", []
    model, _, codecs = restore(load_checkpoint(best))
    report = evaluate_splits(model.eval(), codecs, cfg, ["test_small"], CPU, 2, tmp_path, log=logs.append,
                             checkpoint=str(best))  # fmt: skip
    r = report["test_small"]
    hyps = (tmp_path / "test_small.beam2.hyp").read_text(encoding="utf-8").splitlines()
    refs = [line.split("\t")[1] for line in (small[0] / "test_small.tsv").read_text(encoding="utf-8").splitlines()]
    assert len(hyps) == r["sentences"] == 30
    assert r["bleu"] == pytest.approx(BLEU().corpus_score(hyps, [refs]).score, abs=0.01)
    assert r["bleu_lc"] == pytest.approx(BLEU(lowercase=True).corpus_score(hyps, [refs]).score, abs=0.01)
    assert r["chrf"] == pytest.approx(CHRF().corpus_score(hyps, [refs]).score, abs=0.01)
    assert r["ter"] == pytest.approx(TER().corpus_score(hyps, [refs]).score, abs=0.01)
    assert r["beam_size"] == 2 and r["engine"] == "pytorch"
    seconds = r["seconds"]  # rounded to 1 ms; the speed is of the unrounded time
    assert 30 / (seconds + 0.0005) - 0.05 <= r["sentences_per_s"] <= 30 / max(seconds - 0.0005, 1e-9) + 0.05
    # the report's precision: milliseconds, and tenths of a sentence per second (a float, not an int)
    assert seconds == round(seconds, 3) and isinstance(r["sentences_per_s"], float)
    assert r["sentences_per_s"] == round(r["sentences_per_s"], 1)
    from datetime import datetime

    assert r["checkpoint"] == str(best)
    assert r["checkpoint_modified"] == datetime.fromtimestamp(best.stat().st_mtime).isoformat()
    assert logs == [
        f"test_small: BLEU {r['bleu']:.2f} (lc {r['bleu_lc']:.2f})  chrF {r['chrf']:.2f}  TER {r['ter']:.2f}  "
        f"(30 sentences, beam 2, {r['sentences_per_s']:.0f} sent/s)"
    ]


def test_an_unknown_split_is_refused_before_any_decoding(trained, tmp_path):
    cfg, saved, _ = trained
    model, _, codecs = restore(load_checkpoint(saved / "best.pt"))
    logs = []
    with pytest.raises(DataError, match="no split 'nope' \\(available: test_small, test_tiny, train, valid\\)"):
        evaluate_splits(model, codecs, cfg, ["valid", "nope"], CPU, 1, tmp_path / "out", log=logs.append)
    assert logs == [] and not (tmp_path / "out").exists()
    empty = load_config(TINY, [f"data.root={tmp_path}", "data.corpus=files", "data.train=x.tsv", "data.valid=y.tsv"])
    (corpus_dir(empty.data)).mkdir(parents=True)
    with pytest.raises(DataError, match="no split 'valid' \\(run `mt prepare` with this config first"):
        evaluate_splits(model, codecs, empty, ["valid"], CPU, 1, None, log=logs.append)


@pytest.mark.parametrize("engine", ["pytorch", "ctranslate2"])
def test_a_split_is_decoded_at_the_beam_asked_for_not_the_configured_one(trained, tmp_path, engine):
    from mt_cli.ct2_engine import load_translator
    from mt_cli.decode import translate_ids

    cfg, saved, _ = trained  # configs/tiny.yaml: decode.beam_size 2
    model, _, codecs = restore(load_checkpoint(saved / "best.pt"))
    model.eval()
    if engine == "ctranslate2":
        pytest.importorskip("ctranslate2")
        from mt_cli.export import export_ctranslate2

        engine_model, _, _ = load_translator(export_ctranslate2(model, cfg, codecs, tmp_path / "ct2"), CPU)
    else:
        engine_model = model
    split = Split(corpus_dir(cfg.data) / "test_small")
    src = split.source_rows(torch.arange(len(split)))
    hyps = {}
    for beam in (1, 4):
        got = evaluate_splits(engine_model, codecs, cfg, ["test_small"], CPU, beam, tmp_path / f"b{beam}", log=print)
        assert got["test_small"]["beam_size"] == beam
        hyps[beam] = (tmp_path / f"b{beam}" / f"test_small.beam{beam}.hyp").read_text(encoding="utf-8").splitlines()
        direct = translate_ids(model, src, cfg.decode, CPU, beam_size=beam)  # PyTorch, this beam, directly
        assert hyps[beam] == [codecs["tgt"].decode(r[0][0]) for r in direct]
    assert hyps[1] != hyps[4]  # the two beams translate some sentence differently, so the beam is visible


def test_a_report_names_every_checkpoint_file_and_its_time_and_times_within_the_call(trained):
    """An ensemble's report lists its members and their modification times; the decoding time is within the
    call's wall time."""
    import time
    from datetime import datetime

    cfg, saved, _ = trained
    model, _, codecs = restore(load_checkpoint(saved / "best.pt"))
    files = [str(saved / "best.pt"), str(saved / "last.pt")]
    started = time.perf_counter()
    report = evaluate_splits(model.eval(), codecs, cfg, ["test_small"], CPU, 1, None, log=lambda *_: None,
                             checkpoint=files)["test_small"]  # fmt: skip
    wall = time.perf_counter() - started
    made = [datetime.fromtimestamp(os.stat(f).st_mtime).isoformat() for f in files]
    assert report["checkpoint"] == " + ".join(files) and report["checkpoint_modified"] == " + ".join(made)
    assert 0 < report["seconds"] <= wall + 0.0005
