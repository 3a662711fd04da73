"""CTranslate2 export: a float32 export of the memorizing tiny model decodes token-identically to the PyTorch
greedy search, post-LN and pre-LN; options CTranslate2 cannot represent are refused naming the option."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from trained_tiny import trained_tiny

from mt_cli.data.vocab import EOS
from mt_cli.decode import greedy_search
from mt_cli.export import ExportError, export_ctranslate2

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_float32_export_is_token_identical_to_greedy(real_lines, tmp_path, norm):
    tiny = trained_tiny(real_lines, norm=norm)
    out = export_ctranslate2(tiny.model, tiny.cfg, tiny.codecs, tmp_path / "ct2")
    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    lines = tiny.src + real_lines("val", "de")[:20]  # memorized lines and unseen ones
    a, b = tiny.cfg.decode.max_len_a, tiny.cfg.decode.max_len_b
    for ids in tiny.codecs["src"].encode(lines):
        ours = greedy_search(tiny.model, torch.tensor([ids + [EOS]]), a, b)[0]
        limit = int((len(ids) + 1) * a + b)  # tokens including <eos>, which ours forces at the limit
        theirs = translator.translate_batch(
            [tiny.codecs["src"].pieces(ids) + ["<eos>"]], beam_size=1, max_decoding_length=limit - 1
        )[0].hypotheses[0]
        assert tiny.codecs["tgt"].pieces(ours) == theirs
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_ctranslate2(tiny.model, tiny.cfg, tiny.codecs, out)


def test_additive_attention_is_refused(real_lines, tmp_path):
    tiny = trained_tiny(real_lines)
    cfg = replace(tiny.cfg, model=replace(tiny.cfg.model, attention="additive"))
    with pytest.raises(ExportError, match="^model.attention: additive"):
        export_ctranslate2(tiny.model, cfg, tiny.codecs, tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_the_ctranslate2_engine_translates_as_the_pytorch_path(real_lines, tmp_path):
    # translate_lines over an exported float32 folder: greedy text identical to the PyTorch path's; beam 4
    # (CTranslate2's own beam: its finished hypotheses leave the beam, ours stay among 2k candidates) reproduces
    # the memorized pairs as well as ours, with n-best lists and empty lines kept
    import sacrebleu

    from mt_cli.ct2_engine import load_translator
    from mt_cli.translate import translate_lines

    tiny = trained_tiny(real_lines)
    folder = export_ctranslate2(tiny.model, tiny.cfg, tiny.codecs, tmp_path / "ct2")
    cpu = torch.device("cpu")
    engine, cfg, codecs = load_translator(folder, cpu)
    lines = tiny.src + ["", "  "] + real_lines("val", "de")[:20]  # memorized, empty and unseen lines
    greedy = translate_lines(engine, cfg, codecs, lines, cpu, 1)
    assert greedy == translate_lines(tiny.model, tiny.cfg, tiny.codecs, lines, cpu, 1)
    assert [t[0] for t in greedy[: len(tiny.src)]] == tiny.greedy
    beam = translate_lines(engine, cfg, codecs, lines, cpu, 4, nbest=2)
    ours = translate_lines(tiny.model, tiny.cfg, tiny.codecs, lines, cpu, 4, nbest=2)
    assert all(len(n) == 2 for n in beam) and beam[len(tiny.src)] == ["", ""] == beam[len(tiny.src) + 1]
    n = len(tiny.src)
    bleu = {
        k: sacrebleu.corpus_bleu([t[0] for t in v[:n]], [tiny.tgt]).score for k, v in (("ct2", beam), ("ours", ours))
    }
    assert bleu["ct2"] >= bleu["ours"] - 2 and bleu["ours"] > 80, bleu


def test_int8_export_stays_close_in_bleu(real_lines, tmp_path):
    import sacrebleu

    from mt_cli.ct2_engine import load_translator
    from mt_cli.translate import translate_lines

    tiny = trained_tiny(real_lines)
    cpu = torch.device("cpu")
    scores = {}
    for q in ("float32", "int8"):
        folder = export_ctranslate2(tiny.model, tiny.cfg, tiny.codecs, tmp_path / q, quantization=q)
        engine, cfg, codecs = load_translator(folder, cpu)
        hyps = [t[0] for t in translate_lines(engine, cfg, codecs, tiny.src, cpu, 4)]
        scores[q] = sacrebleu.corpus_bleu(hyps, [tiny.tgt]).score
    assert scores["float32"] > 90  # the memorized pairs: the float32 export reproduces them
    assert abs(scores["float32"] - scores["int8"]) < 5, scores


@pytest.mark.parametrize("quantization", ["int8", "float16"])
def test_export_leaves_the_exported_model_unchanged(real_lines, tmp_path, quantization):
    tiny = trained_tiny(real_lines)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    export_ctranslate2(tiny.model, tiny.cfg, tiny.codecs, tmp_path / quantization, quantization=quantization)
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [
        k for k in before if not torch.equal(before[k], after[k])
    ]


def test_mt_evaluate_and_bench_run_an_exported_folder(real_lines, tmp_path, monkeypatch, capsys):
    """`mt evaluate` of a float32 export scores exactly what the checkpoint scores greedily (their greedy outputs
    are token-identical); `mt bench --checkpoint DIR` times CTranslate2 on the whole split."""
    import json

    from conftest import run_main

    tiny = trained_tiny(real_lines)
    folder = export_ctranslate2(tiny.model, tiny.cfg, tiny.codecs, tmp_path / "ct2")
    reports = {}
    for name, path in (("pt", tiny.path), ("ct2", folder)):
        code, _, err = run_main(
            monkeypatch, capsys, "evaluate", "--checkpoint", str(path), "--split", "valid", "--device", "cpu",
            "--out", str(tmp_path / name),
        )  # fmt: skip
        assert code == 0, err
        (report,) = (tmp_path / name).glob("eval.*.json")
        reports[name] = json.loads(report.read_text())["valid"]
    assert reports["ct2"]["bleu"] == reports["pt"]["bleu"] > 90 and reports["ct2"]["checkpoint"] == str(folder)
    assert (reports["ct2"]["engine"], reports["pt"]["engine"]) == ("ctranslate2", "pytorch")
    out = tmp_path / "bench.json"
    code, _, err = run_main(
        monkeypatch, capsys, "bench", "--no-training", "--checkpoint", str(folder), "--split", "valid",
        "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    bench = json.loads(out.read_text())
    assert bench["translation_engine"] == "ctranslate2"
    for k in (1, 5):
        timing = bench["translation"][f"beam{k}"]
        assert timing["sentences"] == len(tiny.src)
        n, secs = timing["sentences"], timing["seconds"]  # seconds rounded to 1 ms
        assert n / (secs + 5e-4) - 0.05 <= timing["sentences_per_s"] <= n / max(secs - 5e-4, 1e-9) + 0.05
    code, _, err = run_main(
        monkeypatch, capsys, "evaluate", "--checkpoint", str(folder), "--split", "valid", "--device", "cpu",
        "--attention", str(tmp_path / "maps"), "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert code == 2 and "single .pt --checkpoint" in err
