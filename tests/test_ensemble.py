"""Decode-time ensembles against references written here: per-step log-probabilities equal the renormalised mean
of the members' teacher-forced ones, a wide beam over an ensemble finds the exhaustive best, an ensemble of
copies decodes like the model alone, and `mt translate` / `mt evaluate` take several checkpoints."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import run_main, small_model
from test_decode import brute_force_ranking
from trained_tiny import trained_tiny

from mt_cli.data.vocab import BOS, EOS, PAD
from mt_cli.decode import beam_search, greedy_search
from mt_cli.model.ensemble import Ensemble


class MeanOfLogProbs(torch.nn.Module):
    """The reference: full teacher-forced passes of every member (no cache), log softmax of their mean
    log-probabilities; returns log-probabilities where a model returns logits (log softmax leaves them as they are)."""

    def __init__(self, members):
        super().__init__()
        self.members = members
        self.generator = SimpleNamespace(out_features=members[0].generator.out_features)

    def forward(self, src, tgt_in):
        logps = [torch.log_softmax(m(src, tgt_in).double(), -1) for m in self.members]
        return torch.log_softmax(sum(logps) / len(logps), -1)


def members(vocab: int = 7, n: int = 2, **shape):
    out = []
    for seed in range(n):
        m = small_model(src_vocab=9, tgt_vocab=vocab, seed=seed + 1, **shape).eval()
        with torch.no_grad():  # peaked and different from each other, so the mean is no member's choice
            m.generator.weight.mul_(3)
            m.generator.bias[EOS] = -2.0
        out.append(m)
    return out


SRC = torch.tensor([[5, 8, 4, EOS], [7, 6, EOS, PAD]])


def test_each_step_is_the_mean_of_the_members_teacher_forced_log_probs():
    """Members of different shapes; the cached incremental steps must match full passes at every position."""
    models = [
        small_model(src_vocab=9, tgt_vocab=11, seed=3, d_model=16, n_heads=2, enc_layers=1, dec_layers=1).eval(),
        small_model(src_vocab=9, tgt_vocab=11, seed=4, d_model=32, n_heads=4, enc_layers=2, dec_layers=3).eval(),
    ]
    tgt_in = torch.tensor([[BOS, 5, 9, 4, 10], [BOS, 6, 6, 7, 8]])
    with torch.no_grad():
        want = MeanOfLogProbs(models)(SRC, tgt_in)
        ensemble = Ensemble(models)
        state = ensemble.start_state(SRC, max_steps=2)  # buffers smaller than the run: they must grow
        got = torch.stack([ensemble.step(tgt_in[:, t], state) for t in range(tgt_in.size(1))], 1)
    assert got.exp().sum(-1) == pytest.approx(torch.ones(2, 5), abs=1e-5)  # a distribution at every step
    assert torch.allclose(got.double(), want, atol=1e-5)
    single = torch.log_softmax(models[0](SRC, tgt_in), -1)
    assert not torch.allclose(got, single, atol=1e-2)  # the second member really counts


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_beam_over_an_ensemble_finds_the_exhaustive_best(alpha):
    """340 possible outputs (7-word vocabulary, at most 5 tokens): a beam of 341 over the ensemble must rank them
    as the exhaustive search over the reference's mean log-probabilities does."""
    models = members(d_model=16, n_heads=2, enc_layers=1, dec_layers=1)
    got = beam_search(Ensemble(models), SRC, beam_size=341, alpha=alpha, max_len_a=0.0, max_len_b=5, nbest=10)
    reference = MeanOfLogProbs(models)
    for row, nbest in zip(SRC, got):
        want = brute_force_ranking(reference, row, 5, alpha)[:10]
        assert [tuple(h) for h, _ in nbest[:3]] == [s for s, _ in want[:3]]
        assert [s for _, s in nbest] == pytest.approx([s for _, s in want], abs=1e-4)
    alone = [brute_force_ranking(m, SRC[0], 5, alpha)[0][0] for m in models]
    assert len(set(alone)) == 2, "the members should disagree on the best output, or the test shows nothing"


def test_greedy_over_an_ensemble_is_the_references_argmax_chain():
    models = members(vocab=12, d_model=16, n_heads=2, enc_layers=1, dec_layers=1)
    reference = MeanOfLogProbs(models)
    got = greedy_search(Ensemble(models), SRC, max_len_a=0.0, max_len_b=6)
    for row, hyp in zip(SRC, got):
        prefix = [BOS]
        with torch.no_grad():
            while len(prefix) < 6:
                logp = reference(row[None], torch.tensor([prefix]))[0, -1]
                logp[[PAD, BOS] + ([EOS] if len(prefix) == 1 else [])] = float("-inf")
                token = int(logp.argmax())
                if token == EOS:
                    break
                prefix.append(token)
        assert hyp == prefix[1:]


def test_an_ensemble_of_copies_decodes_like_the_model_alone():
    model = members(vocab=12, n=1, d_model=16, n_heads=2, enc_layers=1, dec_layers=1)[0]
    twice = Ensemble([model, model])
    for k in (1, 4):
        alone = beam_search(model, SRC, beam_size=k, max_len_a=1.5, max_len_b=4, nbest=k)
        both = beam_search(twice, SRC, beam_size=k, max_len_a=1.5, max_len_b=4, nbest=k)
        assert [[h for h, _ in n] for n in both] == [[h for h, _ in n] for n in alone]
        assert [s for n in both for _, s in n] == pytest.approx([s for n in alone for _, s in n], abs=1e-5)


def test_an_ensemble_takes_the_shortest_position_limit():
    learned = small_model(src_vocab=9, tgt_vocab=7, positional="learned", max_positions=12)
    sinus = small_model(src_vocab=9, tgt_vocab=7)
    assert Ensemble([learned, sinus]).max_positions == 12
    assert Ensemble([sinus, sinus]).max_positions is None
    with pytest.raises(ValueError, match="^an ensemble needs at least two models$"):
        Ensemble([sinus])


@pytest.fixture(scope="module")
def two_memorizers(real_lines):
    """Two tiny models trained apart (pre-LN and post-LN) on the same 48 pairs, hence the same vocabularies."""
    return trained_tiny(real_lines, "pre"), trained_tiny(real_lines, "post")


def test_mt_translate_with_two_checkpoints_gives_each_line_its_target(two_memorizers, tmp_path, monkeypatch, capsys):
    pre, post = two_memorizers
    assert pre.greedy == post.greedy  # both memorized the pairs: their ensemble must say the same
    lines = pre.src[::-1][:20]
    want = pre.greedy[::-1][:20]
    src = tmp_path / "in.de"
    src.write_text("\n".join(lines[:10] + [""] + lines[10:]) + "\n", encoding="utf-8")
    out = tmp_path / "out.en"
    code, _, err = run_main(
        monkeypatch, capsys, "translate", "--checkpoint", str(pre.path), "--checkpoint", str(post.path),
        "-i", str(src), "-o", str(out), "--beam", "1", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert out.read_text(encoding="utf-8").split("\n")[:-1] == want[:10] + [""] + want[10:]


def test_mt_evaluate_with_two_checkpoints_names_both(two_memorizers, tmp_path, monkeypatch, capsys):
    pre, post = two_memorizers
    first = tmp_path / "pre.pt"
    shutil.copy(pre.path, first)
    code, _, err = run_main(
        monkeypatch, capsys, "evaluate", "--checkpoint", str(first), "--checkpoint", str(post.path),
        "--split", "valid", "--device", "cpu", "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "eval.pre+tiny.beam1.json").read_text())
    assert report["valid"]["checkpoint"] == f"{first} + {post.path}"
    assert report["valid"]["bleu"] > 90  # memorized: the ensemble returns the references


def test_an_ensemble_of_different_vocabularies_is_refused_in_one_line(
    two_memorizers, prepared, tmp_path, monkeypatch, capsys
):
    pre, _ = two_memorizers
    other = tmp_path / "other.pt"
    from mt_cli.checkpoint import save_checkpoint
    from mt_cli.model import build_model

    # the same model config over another corpus's vocabularies (all of Multi30k, not the 48 pairs)
    model = build_model(pre.cfg.model, len(prepared.codecs["src"].vocab), len(prepared.codecs["tgt"].vocab), PAD)
    save_checkpoint(other, model=model, cfg=pre.cfg, codecs=prepared.codecs, epoch=1, step=1)
    src = tmp_path / "in.de"
    src.write_text(pre.src[0] + "\n", encoding="utf-8")
    code, _, err = run_main(
        monkeypatch, capsys, "translate", "--checkpoint", str(pre.path), "--checkpoint", str(other),
        "-i", str(src), "-o", str(tmp_path / "out.en"), "--device", "cpu",
    )  # fmt: skip
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "vocabulary differs" in err and str(other) in err
    assert not (tmp_path / "out.en").exists()
