"""Sampling decode (--sample topk:K / topp:P, --seed): top-1 is greedy, a seed repeats its samples, and every
sampled token lies in the set the model's own distribution allows (computed here by a teacher-forced pass)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids, run_main, small_model
from trained_tiny import trained_tiny

from mt_cli.config import DecodeConfig
from mt_cli.data.vocab import BOS, EOS, PAD
from mt_cli.decode import Sampler, greedy_search, sample_search, translate_ids

A, B = 1.0, 6  # length limit a * source length + b


@pytest.fixture(scope="module")
def model():
    m = small_model(src_vocab=40, tgt_vocab=50, seed=3)
    with torch.no_grad():  # flatter than an untrained model's near-uniform output, but not one-hot
        m.generator.weight.mul_(4)
    return m


@pytest.fixture(scope="module")
def sources():
    src = random_ids(12, 7, 40, torch.Generator().manual_seed(5))
    src[:, -1] = EOS
    src[6:, 4:] = PAD
    src[6:, 4] = EOS
    return src


def teacher_forced_logp(model, src_row: torch.Tensor, hyp: list[int]) -> torch.Tensor:
    """log P(next | prefix) at each position of hyp + <eos>, with <pad>/<bos> excluded like in decoding."""
    src_row = src_row[src_row != PAD][None]
    tgt_in = torch.tensor([[BOS] + hyp])
    with torch.no_grad():
        logp = torch.log_softmax(model(src_row, tgt_in).float(), -1)[0]
    logp[:, [PAD, BOS]] = float("-inf")
    return logp


def check_each_token(model, sources, hyps, allowed):
    """allowed(logp row, token) for every token that was not the <eos> forced at the length limit."""
    checked = 0
    for row, hyp in zip(sources, hyps):
        limit = int(int((row != PAD).sum()) * A + B)
        logp = teacher_forced_logp(model, row, hyp)
        for t, tok in enumerate(hyp + [EOS]):
            if t == limit - 1:
                assert tok == EOS
                continue
            assert allowed(logp[t], tok), (t, tok)
            checked += 1
    return checked


def test_top_1_is_greedy_exactly(model, sources):
    assert sample_search(model, sources, Sampler("topk", 1, seed=9), A, B) == greedy_search(model, sources, A, B)


def test_top_1_through_translate_ids_and_the_trained_model(real_lines):
    tiny = trained_tiny(real_lines)
    src = [torch.tensor(ids + [EOS]) for ids in tiny.codecs["src"].encode(tiny.src[:20])]
    cfg = DecodeConfig(beam_size=1, batch_size=6)
    assert translate_ids(tiny.model, src, cfg, torch.device("cpu"), sampler=Sampler("topk", 1)) == translate_ids(
        tiny.model, src, cfg, torch.device("cpu")
    )


@pytest.mark.parametrize("spec", ["topk:10", "topp:0.9"])
def test_a_seed_repeats_its_samples_and_another_seed_differs(model, sources, spec):
    runs = [sample_search(model, sources, Sampler.parse(spec, seed), A, B) for seed in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert runs[0] != greedy_search(model, sources, A, B)  # it really samples


@pytest.mark.parametrize("k", [2, 5])
def test_top_k_samples_are_among_the_k_most_likely(model, sources, k):
    ranks = []

    def in_top_k(lp, tok):  # how many tokens the model found more likely
        ranks.append(int((lp > lp[tok] + 1e-5).sum()))
        return ranks[-1] < k

    for seed in range(4):
        hyps = sample_search(model, sources, Sampler("topk", k, seed), A, B)
        assert check_each_token(model, sources, hyps, in_top_k) > 50
    assert max(ranks) > 0  # and not always the most likely one: it samples below the top


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_top_p_samples_are_in_the_nucleus(model, sources, p):
    def in_nucleus(lp, tok):  # the tokens more likely than tok hold less than p
        probs = lp.exp()
        return float(probs[probs > probs[tok] * (1 + 1e-5)].sum()) < p

    for seed in range(3):
        hyps = sample_search(model, sources, Sampler("topp", p, seed), A, B)
        assert check_each_token(model, sources, hyps, in_nucleus) > 50


@pytest.mark.parametrize("text", ["topk:0", "topk:1.5", "topp:0", "topp:1.2", "top:3", "topk", "nucleus:0.9"])
def test_bad_sample_specs_are_refused(text):
    with pytest.raises(ValueError, match=r"^--sample .*: use topk:K"):
        Sampler.parse(text)


def test_the_command_samples_reproducibly(real_lines, tmp_path, monkeypatch, capsys):
    tiny = trained_tiny(real_lines)
    (tmp_path / "in.de").write_text("\n".join(tiny.src[:8]) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    base = ["translate", "--checkpoint", str(tiny.path), "-i", "in.de", "--device", "cpu"]
    outs = {}
    for name, extra in (
        ("greedy", ["--beam", "1"]),
        ("top1", ["--sample", "topk:1"]),
        ("a", ["--sample", "topk:20", "--seed", "4"]),
        ("b", ["--sample", "topk:20", "--seed", "4"]),
    ):
        code, out, err = run_main(monkeypatch, capsys, *base, *extra)
        assert code == 0, err
        outs[name] = out
    assert outs["top1"] == outs["greedy"] and outs["a"] == outs["b"]
    assert len(outs["a"].splitlines()) == 8


def uniform_logp(rows: int, vocab: int) -> torch.Tensor:
    """Equal log-probabilities except a slight, known order: token i is the i-th most likely."""
    return torch.log_softmax(-1e-3 * torch.arange(vocab, dtype=torch.float).expand(rows, vocab), -1)


def test_top_k_draws_exactly_the_k_most_likely_even_for_one_sentence():
    """A batch of one row and k = 4 of 8 nearly equal tokens: 400 draws hit all of tokens 0-3 and nothing else."""
    sampler = Sampler.parse("topk:4", seed=3)
    seen = {int(sampler.choose(uniform_logp(1, 8))[0]) for _ in range(400)}
    assert seen == {0, 1, 2, 3}


def test_one_generator_serves_the_whole_run():
    """Consecutive draws continue one seeded stream: they differ from each other, and repeat with the seed."""
    draws = [Sampler.parse("topk:8", seed=5) for _ in range(2)]
    first = [[s.choose(uniform_logp(64, 8)).tolist() for _ in range(2)] for s in draws]
    assert first[0][0] != first[0][1]  # a generator made again at every call would repeat its first draw
    assert first[0] == first[1]


def test_top_p_excludes_a_token_once_the_tokens_before_it_hold_p():
    """Probabilities 1/2, 1/4, 1/4 and p = 1/2: the first token alone holds p, so it is the only draw."""
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    sampler = Sampler.parse("topp:0.5", seed=1)
    assert {int(sampler.choose(logp)[0]) for _ in range(200)} == {0}
    assert Sampler.parse("topp:1").value == 1.0  # p = 1 (the whole distribution) is allowed, as the README says
