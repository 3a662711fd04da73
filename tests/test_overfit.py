"""The whole learning pipeline works: a tiny model memorizes 32 real Multi30k pairs (BLEU >= 90 on real
greedy decoding), trained through prepare -> Split -> batch_plan -> Stepper, scored with sacreBLEU."""

from __future__ import annotations

import pytest
import torch

from mt_cli.config import config_from_dict
from mt_cli.data.batching import Split, batch_plan, iterate
from mt_cli.data.prepare import prepare_corpus
from mt_cli.data.sources import read_lines
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import PAD
from mt_cli.decode import beam_search, greedy_search
from mt_cli.evaluate import decode_split, score
from mt_cli.model import build_model
from mt_cli.steps import LOSS, STEPS, TOKENS, Stepper

N_PAIRS, MAX_STEPS, CHECK_EVERY = 32, 600, 25


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, real_lines):
    tmp = tmp_path_factory.mktemp("overfit")
    pairs = list(zip(real_lines("train", "de")[:N_PAIRS], real_lines("train", "en")[:N_PAIRS]))
    (tmp / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    cfg = config_from_dict(
        {
            "name": "overfit",
            "data": {
                "corpus": "files",
                "root": str(tmp / "data"),
                "train": str(tmp / "pairs.tsv"),
                "valid": str(tmp / "pairs.tsv"),
                "min_freq": 1,
            },
            "model": {"d_model": 64, "n_heads": 4, "enc_layers": 2, "dec_layers": 2, "d_ff": 128, "dropout": 0.0},
            "train": {"lr": 3e-3, "batch_sentences": 16, "max_tokens": None, "label_smoothing": 0.0, "clip": 1.0},
            "decode": {"beam_size": 1},
        }
    )
    folder = prepare_corpus(cfg.data, log=lambda m: None)
    state = torch.load(folder / "codecs.pt", weights_only=True)
    codecs = {side: SideCodec.from_state(state[side]) for side in ("src", "tgt")}
    train = Split(folder / "train.pt", cfg.train.bucket_width)
    refs = read_lines(folder / "valid.ref.en")
    valid = Split(folder / "valid.pt", cfg.train.bucket_width)

    dev = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.train.lr, betas=cfg.train.betas, eps=cfg.train.eps)
    stepper = Stepper(
        model,
        opt,
        params,
        device=dev,
        amp_dtype=torch.float32,
        clip=cfg.train.clip,
        label_smoothing=cfg.train.label_smoothing,
        use_graphs=False,
        log=lambda m: None,
    )
    history, step, epoch = [], 0, 0
    while step < MAX_STEPS:
        epoch += 1
        model.train()
        for batch in iterate(
            train, batch_plan(train, cfg.train.batch_sentences, None, shuffle=True, seed=0, epoch=epoch), dev
        ):
            stepper(batch)
            step += 1
            if step % CHECK_EVERY == 0:
                acc = stepper.take()
                hyps = decode_split(model, codecs, cfg, valid, dev, beam_size=1)
                bleu = score(hyps, refs, cfg.data.lowercase)["bleu"]
                history.append({"step": step, "loss": acc[LOSS] / acc[TOKENS], "steps": acc[STEPS], "bleu": bleu})
                if bleu >= 90:
                    break
        if history and history[-1]["bleu"] >= 90:
            break
    return {
        "model": model.eval(),
        "codecs": codecs,
        "cfg": cfg,
        "valid": valid,
        "refs": refs,
        "hyps": hyps,
        "history": history,
    }


def test_tiny_model_memorizes_32_real_pairs(overfit):
    h = overfit["history"]
    assert h[-1]["bleu"] >= 90, h
    assert h[-1]["loss"] < h[0]["loss"] / 4, h  # the training loss the Stepper accumulates really fell
    assert all(r["steps"] == CHECK_EVERY for r in h)
    hyps, refs = overfit["hyps"], overfit["refs"]
    assert len(hyps) == len(refs) == N_PAIRS
    assert sum(h == r for h, r in zip(hyps, refs)) >= N_PAIRS // 2  # whole sentences come back verbatim


def test_beam_of_one_is_greedy_on_the_trained_model(overfit):
    valid = overfit["valid"]
    src = valid.source_rows(torch.arange(len(valid)))
    greedy = greedy_search(overfit["model"], src)
    assert [r[0][0] for r in beam_search(overfit["model"], src, beam_size=1)] == greedy
    beam = beam_search(overfit["model"], src, beam_size=4, nbest=2)
    # a memorized sentence is the best hypothesis of a wider beam too
    texts = [overfit["codecs"]["tgt"].decode(r[0][0]) for r in beam]
    bleu = score(texts, overfit["refs"], True)["bleu"]
    assert bleu >= 90
