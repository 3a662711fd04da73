"""`mt bench` training figures against what was timed: the token and step counts behind each rate are recomputed
here from the same batch plan and the split's padded tensors, so a rate over the wrong batches, the wrong time
or the wrong tokens fails (only the rounding of the report is allowed for)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, write_tsv

from mt_cli.config import load_config
from mt_cli.data.batching import Split, batch_plan
from mt_cli.data.prepare import corpus_dir, prepare_corpus
from mt_cli.data.vocab import PAD

STEPS = 11


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_lines):
    """300 real de→en pairs with configs/tiny.yaml's model, prepared once."""
    d = tmp_path_factory.mktemp("bench")
    write_tsv(d / "train.tsv", real_lines("train", "de")[:300], real_lines("train", "en")[:300])
    write_tsv(d / "valid.tsv", real_lines("val", "de")[:20], real_lines("val", "en")[:20])
    cfg = load_config(
        TINY,
        [
            f"data.root={d / 'data'}",
            "data.corpus=files",
            f"data.train={d / 'train.tsv'}",
            f"data.valid={d / 'valid.tsv'}",
            "data.min_freq=1",
            "train.max_tokens=1024",
            "train.cuda_graphs=false",
        ],
    )
    prepare_corpus(cfg.data, log=lambda *_: None)
    return cfg


def timed_batches(cfg, steps: int) -> list[tuple[torch.Tensor, int]]:
    """The batches bench times: epoch 1's shuffled plan, repeated until there are `steps` of them."""
    split = Split(corpus_dir(cfg.data) / "train.pt", cfg.train.bucket_width)
    plan = batch_plan(
        split, cfg.train.batch_sentences, cfg.train.max_tokens, shuffle=True, seed=cfg.train.seed, epoch=1
    )
    assert len(plan) < steps  # the plan wraps around: its first batches are timed twice
    batches = [plan[i % len(plan)] for i in range(steps)]
    return split, plan, batches


def within_rounding(rate: float, rate_step: float, seconds: float, count: int) -> bool:
    """rate = round(count / s, to rate_step), seconds = round(s, 3): how far rate × seconds may be from count."""
    slack = rate_step / 2 * (seconds + 5e-4) + (rate + rate_step / 2) * 5e-4 + 1e-9
    return abs(rate * seconds - count) <= slack


def test_training_rates_are_the_timed_tokens_over_the_timed_seconds(corpus):
    from mt_cli.bench import bench_training

    rep = bench_training(corpus, torch.device("cpu"), STEPS, log=lambda *_: None)
    split, plan, batches = timed_batches(corpus, STEPS)
    # non-padding tokens of each timed batch, counted in the padded tensors the model is fed; filler rows (index
    # split.n, topping up a short batch) hold one <eos> so that attention has a key, but are no sentence
    n_src = sum(int((split.src[idx[idx < split.n], :L] != PAD).sum()) for idx, L in batches)
    n_tgt = sum(int((split.tgt[idx, 1 : L + 1] != PAD).sum()) for idx, L in batches)
    assert n_src > 0 and n_tgt > 0
    assert rep["steps"] == STEPS
    assert rep["warmup_steps"] == min(2, len({L for _, L in plan}))  # CPU: two warm-up steps (no shapes to capture)
    secs = rep["seconds"]
    assert secs > 0
    assert within_rounding(rep["tokens_per_s"], 1, secs, n_src + n_tgt), (rep, n_src + n_tgt)
    assert within_rounding(rep["tgt_tokens_per_s"], 1, secs, n_tgt), (rep, n_tgt)
    assert within_rounding(rep["steps_per_s"], 0.01, secs, STEPS), rep
    assert rep["parameters"] > 0 and rep["mean_loss"] > 0 and rep["peak_memory_gib"] is None
