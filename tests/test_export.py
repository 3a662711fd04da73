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
