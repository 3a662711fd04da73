"""Greedy and beam search on real sentences: beam 1 is greedy, scores are real, limits hold, order is kept."""

from __future__ import annotations

import pytest
import torch
from conftest import small_model

from mt_cli.config import DecodeConfig
from mt_cli.data.batching import Split
from mt_cli.data.vocab import BOS, EOS, PAD
from mt_cli.decode import _max_lengths, beam_search, greedy_search, length_penalty, translate_ids
from mt_cli.model.attention import MultiHeadAttention


@pytest.fixture(scope="module")
def sources(prepared):
    """The first 24 sentences of test_2016_flickr as padded id rows (each ends in <eos>)."""
    split = Split(prepared.folder / "test_2016_flickr.pt")
    return split.source_rows(torch.arange(24))


@pytest.fixture(scope="module")
def model(prepared, sources):
    """A random model over the corpus vocabularies with peaked output distributions and an <eos> bias chosen
    so that hypotheses end at many different lengths (some early, some at the length limit)."""
    m = small_model(
        len(prepared.codecs["src"].vocab),
        len(prepared.codecs["tgt"].vocab),
        seed=0,
        d_model=32,
        n_heads=2,
        enc_layers=1,
        dec_layers=1,
    )
    with torch.no_grad():
        m.generator.weight.mul_(8)
    limits = _max_lengths(m, sources, 1.5, 10)
    best, best_bias = -1, None
    for bias in torch.arange(0.0, 5.0, 0.25).tolist():
        with torch.no_grad():
            m.generator.bias[EOS] = bias
        lens = [len(h) for h in greedy_search(m, sources)]
        at_limit = sum(n + 1 == int(lim) for n, lim in zip(lens, limits))
        score = len(set(lens)) if 0 < at_limit < len(lens) else 0
        if score > best:
            best, best_bias = score, bias
    with torch.no_grad():
        m.generator.bias[EOS] = best_bias
    assert best >= 8, "could not make the random model stop at varied lengths"
    return m


def sequence_logprob(model, src_row: torch.Tensor, hyp: list[int], limit: int) -> float:
    """Sum of log-probabilities of hyp + <eos> under teacher forcing (the forced final <eos> costs 0)."""
    tgt_in = torch.tensor([[BOS] + hyp])
    with torch.no_grad():
        logp = torch.log_softmax(model(src_row[None], tgt_in), -1)[0]
    targets = hyp + [EOS]
    total = sum(float(logp[t, tok]) for t, tok in enumerate(targets[:-1]))
    return total + (0.0 if len(targets) >= limit else float(logp[len(hyp), EOS]))


def gnmt_penalty(length: int, alpha: float) -> float:
    """Wu et al. 2016, eq. 14: lp(Y) = (5 + |Y|)^α / (5 + 1)^α, written here so the tests have their own oracle."""
    return (5 + length) ** alpha / 6**alpha


@pytest.mark.parametrize(
    "length, alpha, want",
    [(1, 1.0, 1.0), (1, 0.6, 1.0), (7, 1.0, 2.0), (13, 0.5, 3**0.5), (25, 2.0, 25.0), (9, 0.0, 1.0)],
)
def test_length_penalty_closed_form(length, alpha, want):
    assert length_penalty(length, alpha) == pytest.approx(want, rel=1e-12)
    assert gnmt_penalty(length, alpha) == pytest.approx(want, rel=1e-12)
    as_tensor = length_penalty(torch.tensor([length, 1], dtype=torch.float64), alpha)
    assert as_tensor.tolist() == pytest.approx([want, 1.0], rel=1e-12)


def brute_force_ranking(model, src_row: torch.Tensor, limit: int, alpha: float) -> list[tuple[tuple[int, ...], float]]:
    """Every non-empty output of up to `limit` tokens (incl. <eos>) over the model's real tokens (<unk> and ids
    >= 4; <pad> and <bos> never follow, <eos> never first), scored log P(y + <eos>) / lp(|y| + 1) with the forced
    <eos> at the limit free; best first."""
    vocab = model.generator.out_features
    tokens = [t for t in range(vocab) if t not in (PAD, BOS, EOS)]
    seqs = [()]
    for n in range(1, limit):
        seqs += [s + (t,) for s in seqs if len(s) == n - 1 for t in tokens]
    tgt_in = torch.full((len(seqs), limit), PAD)
    tgt_in[:, 0] = BOS
    for r, s in enumerate(seqs):
        tgt_in[r, 1 : len(s) + 1] = torch.tensor(s, dtype=torch.long)
    with torch.no_grad():  # causal decoder: the padding after a sequence never changes its own positions
        logp = torch.log_softmax(model(src_row[None].expand(len(seqs), -1), tgt_in).double(), -1)
    ranked = []
    for r, s in enumerate(seqs):
        if not s:  # no empty translation: search never ends a hypothesis at its first token
            continue
        total = sum(float(logp[r, t, tok]) for t, tok in enumerate(s))
        if len(s) + 1 < limit:
            total += float(logp[r, len(s), EOS])
        ranked.append((s, total / gnmt_penalty(len(s) + 1, alpha)))
    return sorted(ranked, key=lambda x: -x[1])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
def test_wide_beam_finds_the_brute_force_best(alpha):
    """A 7-word target vocabulary (4 real tokens) and outputs of at most 5 tokens: 340 possible translations (the
    empty one is never an answer). A beam of 341 keeps them all, so its n best must be the exhaustive ranking,
    scores included."""
    model = small_model(src_vocab=9, tgt_vocab=7, seed=1, d_model=16, n_heads=2, enc_layers=1, dec_layers=1)
    with torch.no_grad():  # peaked, and <eos> unlikely enough that short and long outputs compete
        model.generator.weight.mul_(3)
        model.generator.bias[EOS] = -2.0
    src = torch.tensor([[5, 8, 4, EOS], [7, 6, EOS, PAD]])
    got = beam_search(model, src, beam_size=341, alpha=alpha, max_len_a=0.0, max_len_b=5, nbest=10)
    for row, nbest in zip(src, got):
        want = brute_force_ranking(model, row, 5, alpha)[:10]
        assert [tuple(h) for h, _ in nbest[:3]] == [s for s, _ in want[:3]]
        assert [s for _, s in nbest] == pytest.approx([s for _, s in want], abs=1e-4)
    # the best output's length depends on α (one token at α=0, the full 4 at α=2): the penalty decides the ranking
    assert [len(brute_force_ranking(model, src[0], 5, a)[0][0]) for a in (0.0, 2.0)] == [1, 4]


def test_beam_of_one_is_greedy(model, sources):
    greedy = greedy_search(model, sources)
    beam = beam_search(model, sources, beam_size=1)
    assert [b[0][0] for b in beam] == greedy
    assert len({len(h) for h in greedy}) >= 8  # the comparison covers many lengths


def count_decoder_steps(model):
    """A forward hook on the output layer: one call per decoding step (each step predicts one position)."""
    calls = []
    return calls, model.generator.register_forward_hook(lambda *_: calls.append(1))


def test_greedy_stops_once_every_sentence_has_ended(model, sources):
    """A sentence is done at its <eos>: once all are, decoding stops (at the next of its every-4-steps checks)
    instead of running every row to the longest length limit."""
    limits = _max_lengths(model, sources, 1.5, 10)
    lens = [len(h) + 1 for h in greedy_search(model, sources)]  # + <eos>
    early = torch.tensor([i for i, (n, lim) in enumerate(zip(lens, limits.tolist())) if n + 4 <= lim])
    assert len(early) >= 4 and len({lens[i] for i in early.tolist()}) >= 3
    calls, hook = count_decoder_steps(model)
    try:
        hyps = greedy_search(model, sources[early], check_every=4)
    finally:
        hook.remove()
    longest = max(lens[i] for i in early.tolist())
    assert len(calls) == -(-longest // 4) * 4 < int(limits[early].max())
    assert [len(h) + 1 for h in hyps] == [lens[i] for i in early.tolist()]


def test_a_sentence_that_ends_early_leaves_the_others_as_alone(model, sources):
    """Rows of a batch never see each other: the shortest output's <eos> (then padding) changes no other row."""
    hyps = greedy_search(model, sources)
    short = min(range(len(hyps)), key=lambda i: len(hyps[i]))
    assert len(hyps[short]) + 1 < max(len(h) + 1 for h in hyps)
    for i in range(len(hyps)):
        pair = greedy_search(model, sources[[short, i]])
        alone = greedy_search(model, sources[i : i + 1, : int((sources[i] != PAD).sum())])
        assert pair == [hyps[short], hyps[i]] and alone == [hyps[i]]
        assert all(t not in (EOS, PAD, BOS) for t in hyps[i])


def test_beam_of_one_is_greedy_through_translate_ids(model, sources):
    cfg = DecodeConfig(beam_size=1, batch_size=7)
    via_translate = translate_ids(model, sources, cfg, torch.device("cpu"))
    forced_beam = beam_search(model, sources, beam_size=1)
    assert [r[0][0] for r in via_translate] == [b[0][0] for b in forced_beam]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_nbest_sorted_and_scores_are_real(model, sources, alpha):
    K = 4
    limits = _max_lengths(model, sources, 1.5, 10)
    results = beam_search(model, sources[:8], beam_size=K, alpha=alpha, nbest=K)
    for i, nbest in enumerate(results):
        assert len(nbest) == K
        scores = [s for _, s in nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h) for h, _ in nbest}) == K  # distinct hypotheses
        for hyp, s in nbest:
            assert EOS not in hyp and BOS not in hyp and PAD not in hyp
            lim = int(limits[i])
            want = sequence_logprob(model, sources[i], hyp, lim) / gnmt_penalty(len(hyp) + 1, alpha)
            assert s == pytest.approx(want, abs=1e-3)


def test_nbest_one_is_the_top_of_nbest(model, sources):
    top = beam_search(model, sources, beam_size=3, nbest=1)
    full = beam_search(model, sources, beam_size=3, nbest=3)
    assert all(len(t) == 1 and t[0] == f[0] for t, f in zip(top, full))


@pytest.mark.parametrize("a,b", [(0.0, 3), (0.5, 2), (1.5, 10)])
def test_max_length_is_respected(model, sources, a, b):
    limits = _max_lengths(model, sources, a, b).tolist()
    assert limits == [max(1, int((int((row != PAD).sum()) * a + b))) for row in sources]
    for hyps in (greedy_search(model, sources, a, b), [r[0][0] for r in beam_search(model, sources, 3, 1.0, a, b)]):
        lens = [len(h) for h in hyps]
        assert all(n + 1 <= lim for n, lim in zip(lens, limits))  # + the <eos>
    # with <eos> made impossible, every hypothesis runs to its limit exactly
    with torch.no_grad():
        old = model.generator.bias[EOS].item()
        model.generator.bias[EOS] = -1e4
    try:
        assert [len(h) + 1 for h in greedy_search(model, sources, a, b)] == limits
        assert [len(r[0][0]) + 1 for r in beam_search(model, sources, 2, 1.0, a, b)] == limits
    finally:
        with torch.no_grad():
            model.generator.bias[EOS] = old


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_ids_returns_input_order(model, sources, beam):
    """Sentences of mixed lengths, decoded in length-sorted batches of 5, come back in input order, each equal
    to decoding that sentence alone."""
    rows = [sources[i][sources[i] != PAD] for i in torch.randperm(24, generator=torch.Generator().manual_seed(0))]
    cfg = DecodeConfig(beam_size=beam, batch_size=5, nbest=1)
    got = translate_ids(model, rows, cfg, torch.device("cpu"))
    assert len(got) == len(rows)
    for row, res in zip(rows, got):
        alone = translate_ids(model, [row], cfg, torch.device("cpu"))[0]
        assert res[0][0] == alone[0][0]
        assert res[0][1] == pytest.approx(alone[0][1], abs=1e-4)


def test_translate_ids_restores_training_mode(model, sources):
    model.train()
    try:
        translate_ids(model, sources[:2], DecodeConfig(beam_size=1), torch.device("cpu"))
        assert model.training
    finally:
        model.eval()


def test_decoding_keeps_the_cudnn_attention_backend_out(model, sources):
    """cuDNN's SDPA builds a plan per new shape (seconds per decoding batch on a GPU): decoding runs without
    it, and the process-wide backend flags are as before afterwards."""
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
        for m in model.modules()
        if isinstance(m, MultiHeadAttention)
    ]
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        for beam in (1, 2):
            seen.clear()
            translate_ids(model, sources[:3], DecodeConfig(beam_size=beam), torch.device("cpu"))
            assert seen and not any(seen)
    finally:
        for h in hooks:
            h.remove()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_search_never_emits_pad_or_bos(sources, prepared):
    """A model that prefers <pad> and <bos> above all still decodes into real tokens (and <eos>)."""
    m = small_model(len(prepared.codecs["src"].vocab), len(prepared.codecs["tgt"].vocab), seed=1)
    with torch.no_grad():
        m.generator.bias[PAD] = m.generator.bias[BOS] = 50.0
    outs = [greedy_search(m, sources[:6], 0.0, 6)] + [
        [h for h, _ in r] for r in beam_search(m, sources[:6], 3, 1.0, 0.0, 6, nbest=3)
    ]
    assert all(PAD not in h and BOS not in h and len(h) == 5 for hyps in outs for h in hyps)


def test_learned_positions_bound_the_output_length(sources, prepared):
    """An untrained model with 16 learned positions never stops by itself: outputs end at 16 positions
    (<bos> + 15 tokens incl. <eos>) instead of indexing past the table; a longer source is a clear error."""
    m = small_model(
        len(prepared.codecs["src"].vocab), len(prepared.codecs["tgt"].vocab), positional="learned", max_positions=16
    )
    with torch.no_grad():
        m.generator.bias[EOS] = -1e4
    short = sources[:4, :8].clone()
    short[:, -1] = EOS
    for hyps in (greedy_search(m, short, 3.0, 10), [r[0][0] for r in beam_search(m, short, 2, 1.0, 3.0, 10)]):
        assert [len(h) for h in hyps] == [15] * 4
    with pytest.raises(ValueError, match="17 tokens is longer than the model's 16 learned positions"):
        greedy_search(m, torch.cat([short, short, short[:, :1]], 1))


def test_translate_names_the_input_line_too_long_for_learned_positions(prepared):
    from dataclasses import replace

    from mt_cli.translate import translate_lines

    m = small_model(
        len(prepared.codecs["src"].vocab), len(prepared.codecs["tgt"].vocab), positional="learned", max_positions=16
    )
    cfg = replace(prepared.cfg, data=replace(prepared.cfg.data, max_len=14))
    lines = ["ein Hund .", "", " ".join(["ein Hund"] * 10)]
    with pytest.raises(ValueError, match=r"input line 3 is longer than the model's 16 learned positions"):
        translate_lines(m, cfg, prepared.codecs, lines, torch.device("cpu"), beam_size=1)


def test_an_output_never_ends_at_its_first_token_unless_the_limit_says_so():
    """A model that wants to stop at once (a huge <eos> bias) still writes one token first, in greedy and in
    beam search (an empty hypothesis would take a finished slot from the real ones); only a length limit of
    one token, which is <eos> itself, gives an empty output."""
    model = small_model(src_vocab=9, tgt_vocab=7, seed=1, d_model=16, n_heads=2, enc_layers=1, dec_layers=1)
    with torch.no_grad():
        model.generator.bias[EOS] = 30.0
    src = torch.tensor([[5, 8, 4, EOS], [7, 6, EOS, PAD]])
    assert all(len(h) == 1 for h in greedy_search(model, src))  # <eos> right after the first token
    assert all(len(nbest[0][0]) == 1 for nbest in beam_search(model, src, beam_size=3, nbest=3))
    assert greedy_search(model, src, max_len_a=0.0, max_len_b=1) == [[], []]
    assert [nbest[0][0] for nbest in beam_search(model, src, beam_size=3, max_len_a=0.0, max_len_b=1)] == [[], []]


def test_a_source_of_exactly_the_learned_positions_decodes_and_one_more_is_refused():
    """Learned positions 0..15 hold a 16-token source (its <eos> included); 17 tokens have no position."""
    m = small_model(src_vocab=20, tgt_vocab=20, positional="learned", max_positions=16)
    fits = torch.cat([torch.randint(4, 20, (1, 15)), torch.tensor([[EOS]])], 1)
    assert len(greedy_search(m, fits, max_len_a=0.0, max_len_b=3)) == 1
    with pytest.raises(ValueError, match="longer than the model's 16 learned positions"):
        greedy_search(m, torch.cat([torch.randint(4, 20, (1, 16)), torch.tensor([[EOS]])], 1), 0.0, 3)


def test_autocast_only_for_a_lower_precision():
    from mt_cli.decode import autocast_for

    cpu = torch.device("cpu")
    for dtype in (None, torch.float32):
        with autocast_for(cpu, dtype):
            assert not torch.is_autocast_enabled("cpu")
    for dtype in (torch.bfloat16, torch.float16):  # each as asked (CPU autocast alone would pick bfloat16)
        with autocast_for(cpu, dtype):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
