"""`mt translate` with a model that really translates: a tiny model memorizes 48 real Multi30k pairs, so every
line has its own distinguishable translation. Each line must get its own target back, whatever the order of the
lines and the empty lines among them, and a lowercased corpus's model must read UPPERCASE input as lowercase."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import run_main, write_tsv

from mt_cli.config import config_from_dict
from mt_cli.data.batching import Split, batch_plan, iterate
from mt_cli.data.prepare import prepare_corpus
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import PAD
from mt_cli.model import build_model
from mt_cli.translate import translate_lines

N_PAIRS, MAX_EPOCHS = 48, 200
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def memorized(tmp_path_factory, real_lines):
    """48 real de→en training pairs (cased, as in Multi30k; the corpus is lowercased), learnt by heart:
    trained until greedy decoding returns every target verbatim (a few seconds on one core)."""
    tmp = tmp_path_factory.mktemp("memorized")
    de, en = real_lines("train", "de")[:N_PAIRS], real_lines("train", "en")[:N_PAIRS]
    write_tsv(tmp / "pairs.tsv", de, en)
    cfg = config_from_dict(
        {
            "name": "memorized",
            "data": {
                "corpus": "files",
                "root": str(tmp / "data"),
                "train": str(tmp / "pairs.tsv"),
                "valid": str(tmp / "pairs.tsv"),
                "min_freq": 1,
                "lowercase": True,
            },
            "model": {"d_model": 64, "n_heads": 4, "enc_layers": 2, "dec_layers": 2, "d_ff": 128, "dropout": 0.0},
            "train": {"lr": 3e-3, "batch_sentences": 16, "max_tokens": None, "cuda_graphs": False},
            "decode": {"beam_size": 1, "batch_size": 5},  # several decoding batches, sorted by length
        }
    )
    folder = prepare_corpus(cfg.data, log=lambda *_: None)
    state = torch.load(folder / "codecs.pt", weights_only=True)
    codecs = {side: SideCodec.from_state(state[side]) for side in ("src", "tgt")}
    # what a perfect memorizer prints for each line: its target, tokenized, lowercased and joined again
    targets = [codecs["tgt"].decode(ids) for ids in codecs["tgt"].encode(en)]
    train = Split(folder / "train.pt", cfg.train.bucket_width)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    for epoch in range(1, MAX_EPOCHS + 1):
        model.train()
        for b in iterate(train, batch_plan(train, 16, None, shuffle=True, seed=0, epoch=epoch), CPU):
            loss = F.cross_entropy(model(b.src, b.tgt_in).flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        if epoch % 10 == 0:
            model.eval()
            if [h[0] for h in translate_lines(model, cfg, codecs, de, CPU, beam_size=1)] == targets:
                break
    model.eval()
    return {"model": model, "cfg": cfg, "codecs": codecs, "src": de, "targets": targets, "epochs": epoch, "tmp": tmp}


def test_the_model_translates_distinguishably(memorized):
    """The property tests below mean something only if every line has its own translation."""
    assert memorized["epochs"] < MAX_EPOCHS, "the tiny model did not memorize its 48 pairs"
    assert len(set(memorized["targets"])) == N_PAIRS


@pytest.mark.parametrize("beam", [1, 3])
def test_each_line_gets_its_own_translation_in_any_order(memorized, beam):
    """Greedy: each line's own memorized target. Beam 3 does not return all of them (a beam search that stops
    after 3 finished hypotheses can miss the greedy one), so there each line must get what it gets alone."""
    m = memorized
    expected = m["targets"]
    if beam > 1:
        expected = [
            translate_lines(m["model"], m["cfg"], m["codecs"], [s], CPU, beam_size=beam)[0][0] for s in m["src"]
        ]
        assert len(set(expected)) >= N_PAIRS - 4 and sum(e == t for e, t in zip(expected, m["targets"])) >= 40
    order = list(range(N_PAIRS))
    random.Random(beam).shuffle(order)
    lines, want = [], []
    for k, i in enumerate(order):  # empty and blank lines among them keep their place and stay empty
        if k % 7 == 3:
            lines.append("" if k % 2 else "   ")
            want.append("")
        lines.append(m["src"][i])
        want.append(expected[i])
    got = translate_lines(m["model"], m["cfg"], m["codecs"], lines, CPU, beam_size=beam)
    assert [h[0] for h in got] == want


def shout(text: str) -> str:
    """UPPERCASE, except ß: its uppercase is "SS", which lowercases to another spelling ("ss"), not back."""
    return "".join(c if c == "ß" else c.upper() for c in text)


def test_uppercase_input_reads_as_the_lowercased_corpus(memorized):
    m = memorized
    assert m["codecs"]["src"].lowercase
    upper = [shout(s) for s in m["src"]]
    assert upper != m["src"] and all(any(c.isupper() for c in s) for s in upper)
    got = translate_lines(m["model"], m["cfg"], m["codecs"], upper + m["src"], CPU, beam_size=1)
    assert [h[0] for h in got] == m["targets"] * 2


def test_mt_translate_cli_keeps_order_and_case(memorized, monkeypatch, capsys):
    """The command, from a saved checkpoint and a file: one output line per input line, each its own target."""
    from mt_cli.checkpoint import save_checkpoint

    m = memorized
    ckpt = m["tmp"] / "memorized.pt"
    save_checkpoint(ckpt, model=m["model"], cfg=m["cfg"], codecs=m["codecs"], epoch=m["epochs"], step=0)
    order = list(range(N_PAIRS))[::-1]
    lines = [shout(m["src"][i]) if i % 2 else m["src"][i] for i in order]
    lines.insert(5, "")
    (m["tmp"] / "input.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "translate",
        "--checkpoint",
        str(ckpt),
        "--input",
        str(m["tmp"] / "input.de"),
        "--beam",
        "1",
        "--device",
        "cpu",
    )
    assert code == 0, err
    want = [m["targets"][i] for i in order]
    want.insert(5, "")
    assert out.split("\n") == want + [""]
