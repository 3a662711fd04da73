"""Cross-attention maps: the plotted matrices (rows sum to 1), PNG sizes, token labels, `mt translate
--attention` and `mt evaluate --attention --limit`, and decoding that computes no weights unless asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_main, write_tsv
from matplotlib.image import imread

import mt_cli.model.attention as attention_mod
from mt_cli.attention_maps import (
    DPI,
    attention_panels,
    cross_attention,
    figure_size,
    parse_heads,
    parse_layer,
    token_labels,
    write_attention_maps,
)
from mt_cli.config import ModelConfig, config_from_dict
from mt_cli.data.vocab import PAD
from mt_cli.model import build_model
from mt_cli.model.attention import SCORINGS, MultiHeadAttention


def tiny_model(
    scoring: str = "scaled_dot",
    layers: int = 2,
    heads: int = 4,
    src_vocab: int = 40,
    tgt_vocab: int = 50,
    positional: str = "sinusoidal",
):
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=32,
        n_heads=heads,
        enc_layers=layers,
        dec_layers=layers,
        d_ff=64,
        dropout=0.0,
        attention=scoring,
        positional=positional,
    )
    return build_model(cfg, src_vocab, tgt_vocab, PAD).eval()


PAIRS = [([5, 6, 7, 8, 9], [10, 11, 12]), ([20, 21], [30, 31, 32, 33, 34, 35]), ([7], [])]


def _rows_sum_to_one(m) -> None:
    assert m.ndim == 2
    assert torch.allclose(torch.from_numpy(m).sum(1), torch.ones(m.shape[0]), atol=1e-5)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_plotted_matrices_rows_sum_to_one(scoring):
    model = tiny_model(scoring)
    weights = cross_attention(model, PAIRS, torch.device("cpu"), batch_size=2)  # padding across pairs
    for (s, h), w in zip(PAIRS, weights):
        assert w.shape == (2, 4, len(h) + 1, len(s) + 1)
        for layer in ("last", "all", 1, 2):
            for heads in ("mean", "all", 1, 4):
                grid = attention_panels(w, layer, heads)
                assert len(grid) == (2 if layer == "all" else 1)
                assert all(len(row) == (4 if heads == "all" else 1) for row in grid)
                for row in grid:
                    for _, m in row:
                        assert m.shape == (len(h) + 1, len(s) + 1)
                        _rows_sum_to_one(m)


def test_batched_pass_equals_one_sentence_at_a_time():
    model = tiny_model()
    together = cross_attention(model, PAIRS, torch.device("cpu"), batch_size=8)
    alone = [cross_attention(model, [p], torch.device("cpu"))[0] for p in PAIRS]
    for a, b in zip(together, alone):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_weights_path_matches_fast_path(scoring):
    """The maps come from the need_weights path; it must compute what fast decoding computes."""
    torch.manual_seed(1)
    mha = MultiHeadAttention(32, 4, 0.0, scoring).eval()
    q, kv_in = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    with torch.no_grad():
        kv = mha.project_kv(kv_in)
        fast, _ = mha(q, kv, mask)
        slow, w = mha(q, kv, mask, need_weights=True)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert w.shape == (2, 4, 5, 7) and float(w[1, ..., 5:].abs().max()) == 0.0


def test_options_and_errors():
    assert parse_layer(None) == "last" and parse_layer("all") == "all" and parse_layer("2") == 2
    assert parse_heads("mean") == "mean" and parse_heads("all") == "all" and parse_heads("3") == 3
    for bad in ("x", "0", "-1"):
        with pytest.raises(ValueError, match="--attention-layer"):
            parse_layer(bad)
        with pytest.raises(ValueError, match="--attention-heads"):
            parse_heads(bad)
    w = cross_attention(tiny_model(), PAIRS[:1], torch.device("cpu"))[0]
    with pytest.raises(ValueError, match="2 decoder layer"):
        attention_panels(w, 3, "mean")
    with pytest.raises(ValueError, match="4 head"):
        attention_panels(w, "last", 5)


# --- on a real (tiny, untrained) model with a real prepared vocabulary ------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, real_lines):
    """An untrained tiny model saved as a checkpoint, over a prepared slice of Multi30k de-en."""
    from mt_cli.checkpoint import save_checkpoint
    from mt_cli.data.prepare import load_corpus, prepare_corpus

    base = tmp_path_factory.mktemp("attn")
    de, en = real_lines("train", "de")[:150], real_lines("train", "en")[:150]
    write_tsv(base / "train.tsv", de, en)
    vde, ven = real_lines("val", "de")[:12], real_lines("val", "en")[:12]
    write_tsv(base / "test_small.tsv", vde, ven)
    cfg = config_from_dict(
        {
            "name": "attn",
            "data": {
                "corpus": "files",
                "train": str(base / "train.tsv"),
                "valid": str(base / "test_small.tsv"),
                "test": [str(base / "test_small.tsv")],
                "root": str(base / "data"),
                "min_freq": 1,
            },
            "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 2, "d_ff": 64},
            "decode": {"beam_size": 2, "max_len_a": 1.0, "max_len_b": 3},
        }
    )
    prepare_corpus(cfg.data, log=lambda *_: None)
    codecs = load_corpus(cfg, 8)[0]
    torch.manual_seed(0)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD).eval()
    path = base / "model.pt"
    save_checkpoint(path, model=model, cfg=cfg, codecs=codecs, epoch=0, step=0)
    return path, model, cfg, codecs, vde


def test_dollar_signs_in_the_title_are_text_not_math(tmp_path):
    from mt_cli.attention_maps import draw_attention
    from mt_cli.plots import save_figure

    grid = attention_panels(torch.full((1, 1, 3, 4), 0.25))
    fig = draw_attention(grid, ["a", "$", "%", "<eos>"], ["x", "$", "<eos>"], title="1: a $ % $ b")
    assert imread(save_figure(fig, tmp_path / "m.png")).shape[0] > 0  # mathtext would raise on "$ % $"


def test_png_size_and_token_labels(checkpoint, tmp_path):
    _, model, _, codecs, vde = checkpoint
    src = codecs["src"].encode(vde[:2])
    items = [("a", src[0], [5, 6, 7]), ("b", src[1], [8, 0, 9, 10, 11])]  # 0 = <unk>
    src_tok, tgt_tok = token_labels(codecs, items[1][1], items[1][2])
    assert src_tok == [codecs["src"].vocab.itos[i] for i in items[1][1]] + ["<eos>"]
    assert tgt_tok[1] == "<unk>" and tgt_tok[-1] == "<eos>" and len(tgt_tok) == 6
    for layer, heads, rows, cols in (("last", "mean", 1, 1), ("all", "all", 2, 2)):
        paths = write_attention_maps(
            model, codecs, items, tmp_path / f"{layer}-{heads}", torch.device("cpu"), layer, heads
        )
        for path, (_, s, h) in zip(paths, items):
            w_in, h_in = figure_size(len(s) + 1, len(h) + 1, rows, cols)
            assert imread(path).shape[:2] == (round(h_in * DPI), round(w_in * DPI)), path


def test_translate_attention(checkpoint, tmp_path, monkeypatch, capsys):
    path, _, _, _, vde = checkpoint
    monkeypatch.chdir(tmp_path)
    Path("in.txt").write_text(f"{vde[0]}\n{vde[1]}\n\n{vde[2]}\n", encoding="utf-8")
    code, plain, err = run_main(
        monkeypatch, capsys, "translate", "--checkpoint", str(path), "-i", "in.txt", "--device", "cpu"
    )
    assert code == 0, err
    code, with_maps, err = run_main(
        monkeypatch,
        capsys,
        "translate",
        "--checkpoint",
        str(path),
        "-i",
        "in.txt",
        "--device",
        "cpu",
        "--attention",
        "maps",
        "--attention-heads",
        "all",
    )
    assert code == 0, err
    assert with_maps == plain  # the translations do not change
    assert sorted(p.name for p in Path("maps").iterdir()) == ["0001.png", "0002.png", "0004.png"]
    assert "wrote 3 attention maps to maps" in err
    for args, msg in (
        (["--attention-layer", "3"], "2 decoder layer"),
        (["--attention-heads", "x"], "--attention-heads"),
    ):
        code, out, err = run_main(
            monkeypatch,
            capsys,
            "translate",
            "--checkpoint",
            str(path),
            "-i",
            "in.txt",
            "--device",
            "cpu",
            "--attention",
            "bad",
            *args,
        )
        assert code == 2 and err.startswith("error: ") and msg in err and err.count("\n") == 1, err
        assert out == ""  # checked before translating


def test_evaluate_attention_limit(checkpoint, tmp_path, monkeypatch, capsys):
    path, *_ = checkpoint
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        "--checkpoint",
        str(path),
        "--split",
        "test_small",
        "--device",
        "cpu",
        "--out",
        "eval",
        "--attention",
        "maps",
        "--limit",
        "2",
        "--attention-layer",
        "1",
    )
    assert code == 0, err
    assert "BLEU" in out
    assert sorted(p.name for p in (tmp_path / "maps" / "test_small").iterdir()) == ["0001.png", "0002.png"]


def test_decoding_computes_no_weights_unless_asked(checkpoint, monkeypatch):
    from mt_cli.translate import translate_lines

    _, model, cfg, codecs, vde = checkpoint
    calls = []
    real = attention_mod._softmax_apply
    monkeypatch.setattr(attention_mod, "_softmax_apply", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids: list = []
    hyps = translate_lines(model, cfg, codecs, vde[:3], torch.device("cpu"), beam_size=2, ids_out=ids)
    assert calls == []  # scaled_dot decoding runs on the fused kernel only
    assert [i for i, _, _ in ids] == [0, 1, 2]
    assert [codecs["tgt"].decode(h) for _, _, h in ids] == [h[0] for h in hyps]
    cross_attention(model, [(s, h) for _, s, h in ids], torch.device("cpu"))
    assert calls  # the teacher-forced pass is where weights are computed
