"""`mt score`: forced-decoding log-probabilities, checked against the model's own step-by-step distribution,
against beam search's scores, and by what a memorizing model must prefer; files of unequal length refused."""

from __future__ import annotations

import pytest
import torch
from conftest import run_main
from trained_tiny import trained_tiny

from mt_cli.data.vocab import BOS, EOS
from mt_cli.decode import beam_search
from mt_cli.score import score_ids

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(real_lines):
    return trained_tiny(real_lines)


def stepwise_logprob(model, src: list[int], hyp: list[int]) -> float:
    """Sum of log P(token | prefix) over hyp + <eos>, one sentence at a time through the incremental API."""
    state = model.start_state(torch.tensor([src + [EOS]]), max_steps=len(hyp) + 1)
    total, last = 0.0, BOS
    with torch.no_grad():
        for tok in hyp + [EOS]:
            total += float(model.step(torch.tensor([last]), state)[0, tok])
            last = tok
    return total


def test_raw_scores_are_the_sum_of_the_model_step_log_probabilities(tiny):
    src = tiny.codecs["src"].encode(tiny.src[:10] + [""])
    hyp = tiny.codecs["tgt"].encode(tiny.tgt[3:13] + [""])  # mismatched pairs too, and an empty pair
    got = score_ids(tiny.model, src, hyp, CPU, alpha=0.0, budget=3000)  # a small budget: several batches
    for (norm, raw), s, h in zip(got, src, hyp):
        assert raw == pytest.approx(stepwise_logprob(tiny.model, s, h), abs=1e-3)
        assert norm == raw  # alpha 0: no length normalisation


def test_normalised_scores_are_beam_search_scores(tiny):
    src_ids = tiny.codecs["src"].encode(tiny.src[:8])
    rows = [torch.tensor(s + [EOS]) for s in src_ids]
    for alpha in (0.6, 1.0):
        for s, row in zip(src_ids, rows):
            nbest = beam_search(tiny.model, row[None], beam_size=3, alpha=alpha, nbest=3)[0]
            got = score_ids(tiny.model, [s] * len(nbest), [h for h, _ in nbest], CPU, alpha)
            assert [n for n, _ in got] == pytest.approx([b for _, b in nbest], abs=1e-3)


def test_a_memorizing_model_prefers_each_source_own_translation(tiny):
    src = tiny.codecs["src"].encode(tiny.src)
    own = score_ids(tiny.model, src, tiny.codecs["tgt"].encode(tiny.tgt), CPU, 1.0)
    other = score_ids(tiny.model, src, tiny.codecs["tgt"].encode(tiny.tgt[1:] + tiny.tgt[:1]), CPU, 1.0)
    assert sum(a[0] > b[0] for a, b in zip(own, other)) == len(src)


def test_the_command_prints_one_line_per_pair(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    src, ref = tiny.src[:5] + [""] + tiny.src[5:7], tiny.tgt[:5] + [""] + tiny.tgt[9:11]
    (tmp_path / "src.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("\n".join(ref) + "\n", encoding="utf-8")
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "score",
        "--checkpoint",
        str(tiny.path),
        "-i",
        "src.de",
        "-r",
        "ref.en",
        "--device",
        "cpu",
        "--chunk-lines",
        "3",
    )
    assert code == 0, err
    rows = [tuple(map(float, line.split("\t"))) for line in out.splitlines()]
    want = score_ids(
        tiny.model, tiny.codecs["src"].encode(src), tiny.codecs["tgt"].encode(ref), CPU, tiny.cfg.decode.length_penalty
    )
    assert [x for r in rows for x in r] == pytest.approx([x for w in want for x in w], abs=1e-4)
    assert all(raw < 0 for _, raw in rows) and rows[0][1] > rows[6][1]  # memorized beats mismatched
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "score",
        "--checkpoint",
        str(tiny.path),
        "-i",
        "src.de",
        "-r",
        "ref.en",
        "--device",
        "cpu",
        "-o",
        "scores.tsv",
    )
    assert code == 0 and (tmp_path / "scores.tsv").read_text() == out


def test_files_of_different_lengths_and_overwrites_are_refused(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src.de").write_text("\n".join(tiny.src[:4]) + "\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("\n".join(tiny.tgt[:3]) + "\n", encoding="utf-8")
    base = ["score", "--checkpoint", str(tiny.path), "-i", "src.de", "-r", "ref.en", "--device", "cpu"]
    for extra, msg in (
        (["-o", "s.tsv"], "ref.en ends at line 3 but src.de goes on"),
        (["-o", "ref.en"], "--output ref.en: is the same file as --reference"),
        (["-o", "s.tsv", "--chunk-lines", "0"], "--chunk-lines 0"),
    ):
        code, out, err = run_main(monkeypatch, capsys, *base, *extra)
        assert code == 2 and err.count("\n") == 1 and msg in err, err
    assert not (tmp_path / "s.tsv").exists()
    assert (tmp_path / "ref.en").read_text() == "\n".join(tiny.tgt[:3]) + "\n"
