"""`mt evaluate --length-penalty`: the config's own value changes nothing, its report is kept apart from the
default one, and a value out of the key's range is one line naming the option, with nothing written."""

from __future__ import annotations

import json

from conftest import run_main
from trained_tiny import trained_tiny


def test_length_penalty_option(real_lines, tmp_path, monkeypatch, capsys):
    tiny = trained_tiny(real_lines)
    alpha = tiny.cfg.decode.length_penalty
    base = ["evaluate", "--checkpoint", str(tiny.path), "--split", "valid", "--beam", "4", "--device", "cpu"]
    for extra in ([], ["--length-penalty", str(alpha)]):
        code, _, err = run_main(monkeypatch, capsys, *base, *extra, "--out", str(tmp_path / "eval"))
        assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert files == sorted(
        [
            "eval.tiny.beam4.json",
            f"eval.tiny.lp{alpha:g}.beam4.json",
            "valid.tiny.beam4.hyp",
            f"valid.tiny.lp{alpha:g}.beam4.hyp",
        ]
    )
    hyps = [(tmp_path / "eval" / n).read_text() for n in files if n.endswith(".hyp")]
    assert hyps[0] == hyps[1]  # the config's own alpha: the same translations
    report = json.loads((tmp_path / "eval" / f"eval.tiny.lp{alpha:g}.beam4.json").read_text())
    assert report["valid"]["bleu"] > 90
    code, out, err = run_main(monkeypatch, capsys, *base, "--length-penalty", "99", "--out", str(tmp_path / "bad"))
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: --length-penalty 99")
    assert not (tmp_path / "bad").exists()
