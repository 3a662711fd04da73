"""Experiments from a config: other Multi30k directions, a user corpus of files, the attention scorings and
learned positions, and `--set` overrides recorded in the run folder."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_tsv

from mt_cli.config import ConfigError, ModelConfig, config_from_dict, load_config
from mt_cli.data.prepare import is_prepared, load_manifest, prepare_corpus
from mt_cli.data.sources import DataError, multi30k_splits
from mt_cli.data.vocab import PAD
from mt_cli.model import build_model
from mt_cli.model.attention import SCORINGS
from mt_cli.steps import loss_sum

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *_: None)
TINY_MODEL = {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "d_ff": 64}


# --- any Multi30k pair and direction -------------------------------------------------------------


def test_shipped_en_de_config():
    cfg = load_config(REPO / "configs" / "multi30k_en_de.yaml")
    assert (cfg.name, cfg.data.corpus, cfg.data.src_lang, cfg.data.tgt_lang) == (
        "multi30k_en_de",
        "multi30k",
        "en",
        "de",
    )
    assert multi30k_splits("en", "de")[-1] == "test_2017_mscoco"


def test_czech_has_no_2017_tests():
    assert multi30k_splits("cs", "en") == ["train", "val", "test_2016_flickr"]
    assert multi30k_splits("en", "cs") == ["train", "val", "test_2016_flickr"]
    with pytest.raises(ConfigError, match="data.src_lang"):
        config_from_dict({"data": {"src_lang": "es"}})


def test_fr_en_prepare_and_train(multi30k_dir, tmp_path):
    from mt_cli.training import train

    cfg = config_from_dict(
        {
            "name": "fr_en",
            "data": {"src_lang": "fr", "tgt_lang": "en", "root": str(tmp_path / "data")},
            "model": TINY_MODEL,
            "train": {"epochs": 1, "max_steps": 3, "max_tokens": 512, "val_bleu": False, "cuda_graphs": False},
            "decode": {"beam_size": 1, "max_len_a": 0.0, "max_len_b": 2, "batch_size": 1000},
        }
    )
    folder = prepare_corpus(cfg.data, source=str(multi30k_dir), **QUIET)
    man = load_manifest(folder)
    assert {s: v["pairs"] for s, v in man["splits"].items() if s != "train"} == {
        "valid": 1014,
        "test_2016_flickr": 1000,
        "test_2017_flickr": 1000,
        "test_2017_mscoco": 461,
    }
    assert man["splits"]["train"]["raw_lines"] == 29000
    assert (
        (folder / "train.fr")
        .read_text(encoding="utf-8")
        .startswith(gzip.open(multi30k_dir / "train.fr.gz", "rt", encoding="utf-8").readline().strip())
    )
    summary = train(
        cfg, device="cpu", saved_root=str(tmp_path / "saved"), result_root=str(tmp_path / "result"), **QUIET
    )
    sizes = {"valid": 1014, "test_2016_flickr": 1000, "test_2017_flickr": 1000, "test_2017_mscoco": 461}
    assert set(summary["test"]) - {"checkpoint"} == set(sizes)
    raw = {split: "val" if split == "valid" else split for split in sizes}
    refs = {
        split: gzip.open(multi30k_dir / f"{raw[split]}.en.gz", "rt", encoding="utf-8").read().splitlines()
        for split in sizes
    }
    assert_scores_are_sacrebleus(summary, refs, sizes)
    assert Path(summary["result"], "curves.png").is_file()


def assert_scores_are_sacrebleus(summary: dict, raw_refs: dict, sizes: dict) -> None:
    """Each split's reported scores are sacreBLEU's on the written translations against the raw reference lines
    (whitespace-collapsed): cased BLEU and chrF as the headline, lowercased BLEU beside them."""
    import sacrebleu

    for split, refs in raw_refs.items():
        hyps = (Path(summary["result"]) / f"{split}.beam1.hyp").read_text(encoding="utf-8").splitlines()
        assert len(hyps) == len(refs) == summary["test"][split]["sentences"] == sizes[split]
        refs = [" ".join(r.split()) for r in refs]
        want = sacrebleu.corpus_bleu(hyps, [refs])
        assert summary["test"][split]["bleu"] == pytest.approx(round(want.score, 2), abs=0.011), split
        want_lc = sacrebleu.corpus_bleu(hyps, [refs], lowercase=True)
        assert summary["test"][split]["bleu_lc"] == pytest.approx(round(want_lc.score, 2), abs=0.011), split
        # after a few steps BLEU may be 0 for any output; chrF (character n-grams) is not
        chrf = sacrebleu.corpus_chrf(hyps, [refs]).score
        assert chrf > 0 and summary["test"][split]["chrf"] == pytest.approx(round(chrf, 2), abs=0.011), split


# --- a corpus of your own files --------------------------------------------------------------------


@pytest.fixture
def user_files(real_lines, tmp_path):
    de, en = real_lines("train", "de")[:200], real_lines("train", "en")[:200]
    write_tsv(tmp_path / "train.tsv", de, en)
    vde, ven = real_lines("val", "de")[:30], real_lines("val", "en")[:30]
    (tmp_path / "dev.de").write_text("\n".join(vde) + "\n", encoding="utf-8")
    (tmp_path / "dev.en").write_text("\n".join(ven) + "\n", encoding="utf-8")
    tde, ten = real_lines("test_2016_flickr", "de")[:25], real_lines("test_2016_flickr", "en")[:25]
    with gzip.open(tmp_path / "news.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("".join(f"{a}\t{b}\n" for a, b in zip(tde, ten)))
    data = {
        "corpus": "files",
        "train": str(tmp_path / "train.tsv"),
        "valid": str(tmp_path / "dev"),
        "test": [str(tmp_path / "news.tsv.gz"), str(tmp_path / "dev")],
        "root": str(tmp_path / "data"),
        "min_freq": 1,
    }
    return tmp_path, data


def test_files_corpus_prepares_and_trains(user_files):
    from mt_cli.training import train

    base, data = user_files
    cfg = config_from_dict(
        {
            "name": "mine",
            "data": data,
            "model": TINY_MODEL,
            "train": {"epochs": 1, "max_steps": 2, "max_tokens": 512, "cuda_graphs": False},
            "decode": {"beam_size": 1, "max_len_b": 3},
        }
    )
    folder = prepare_corpus(cfg.data, **QUIET)
    man = load_manifest(folder)
    assert {s: v["pairs"] for s, v in man["splits"].items()} == {
        "train": 200,
        "valid": 30,
        "test_news": 25,
        "test_dev": 30,
    }
    assert set(man["files_sha256"]) == {str(base / n) for n in ("train.tsv", "dev.de", "dev.en", "news.tsv.gz")}
    assert is_prepared(cfg.data)
    summary = train(cfg, device="cpu", saved_root=str(base / "saved"), result_root=str(base / "result"), **QUIET)
    assert {"test_news", "test_dev"} <= set(summary["test"])  # every test file is scored at the end
    raw_refs = {
        "test_news": [
            line.split("\t")[1] for line in gzip.open(base / "news.tsv.gz", "rt", encoding="utf-8").read().splitlines()
        ],
        "test_dev": (base / "dev.en").read_text(encoding="utf-8").splitlines(),
    }
    assert_scores_are_sacrebleus(summary, raw_refs, {"test_news": 25, "test_dev": 30})
    # an edited input file makes the prepared corpus stale
    with open(base / "dev.en", "a", encoding="utf-8") as f:
        f.write("")
    assert is_prepared(cfg.data)
    (base / "dev.en").write_text((base / "dev.en").read_text(encoding="utf-8").replace("a", "A", 1), encoding="utf-8")
    assert not is_prepared(cfg.data)
    with pytest.raises(DataError, match=r"dev\.en: changed since `mt prepare`"):  # training would use stale data
        train(cfg, device="cpu", saved_root=str(base / "saved"), result_root=str(base / "result"), **QUIET)


def test_sentencepiece_vocabulary_smaller_than_the_alphabet_is_a_data_error(tmp_path):
    """300 distinct CJK characters cannot fit into 100 pieces: one line naming the option, not a C++ error."""
    chars = [chr(0x4E00 + i) for i in range(300)]
    lines = ["".join(chars[i : i + 10]) for i in range(0, 300, 10)] * 2
    write_tsv(tmp_path / "train.tsv", lines, lines)
    cfg = config_from_dict(
        {
            "data": {
                "corpus": "files",
                "train": str(tmp_path / "train.tsv"),
                "valid": str(tmp_path / "train.tsv"),
                "root": str(tmp_path / "data"),
                "tokenizer": "sentencepiece",
                "sp_vocab_size": 100,
                "src_lang": "de",
            }
        }
    )
    with pytest.raises(DataError, match=r"data.sp_vocab_size=100\): Vocabulary size is smaller than") as e:
        prepare_corpus(cfg.data, **QUIET)
    assert "\n" not in str(e.value) and ".cc" not in str(e.value)
    assert not any((tmp_path / "data").glob("*/manifest.json"))


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("three_columns", r"train\.tsv:3: expected 2 tab-separated columns, found 3"),
        ("counts", r"dev\.de has 30 lines but .*dev\.en has 29"),
        ("utf8", r"dev\.en:2: invalid UTF-8"),
        ("missing", r"dev\.de: file not found"),
        ("same_test_name", r"would both be split 'test_dev'"),
    ],
)
def test_files_corpus_errors_name_the_file_and_line(user_files, breakage, message):
    base, data = user_files
    if breakage == "three_columns":
        lines = (base / "train.tsv").read_text(encoding="utf-8").splitlines()
        lines[2] += "\textra"
        (base / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif breakage == "counts":
        lines = (base / "dev.en").read_text(encoding="utf-8").splitlines()
        (base / "dev.en").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    elif breakage == "utf8":
        raw = (base / "dev.en").read_bytes().split(b"\n")
        raw[1] = raw[1] + "é".encode("latin-1")
        (base / "dev.en").write_bytes(b"\n".join(raw))
    elif breakage == "missing":
        (base / "dev.de").unlink()
    else:
        data = {**data, "test": [str(base / "dev"), str(base / "test_dev.tsv")]}
    cfg = config_from_dict({"name": "bad", "data": data})
    with pytest.raises(DataError, match=message) as e:
        prepare_corpus(cfg.data, **QUIET)
    assert "\n" not in str(e.value)


def test_files_corpus_config_needs_train_and_valid():
    with pytest.raises(ConfigError, match="data.train"):
        config_from_dict({"data": {"corpus": "files", "train": "x.tsv"}})


def test_byte_order_mark_is_not_text(tmp_path):
    from mt_cli.data.sources import read_tsv

    (tmp_path / "bom.tsv").write_bytes("\ufeffein Hund\ta dog\n".encode("utf-8"))
    assert read_tsv(tmp_path / "bom.tsv") == (["ein Hund"], ["a dog"])


# --- attention scorings and learned positions ------------------------------------------------------


@pytest.mark.parametrize("attention, positional", [(s, "sinusoidal") for s in SCORINGS] + [("scaled_dot", "learned")])
def test_variant_trains(attention, positional):
    """A tiny copy task on a fixed batch: the training loss falls clearly within a few steps."""
    cfg = ModelConfig(
        d_model=32,
        n_heads=4,
        enc_layers=1,
        dec_layers=1,
        d_ff=64,
        dropout=0.0,
        attention=attention,
        positional=positional,
        max_positions=64,
    )
    cfg.validate()
    torch.manual_seed(0)
    model = build_model(cfg, 24, 24, PAD).train()
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 24, (16, 7), generator=g)
    tgt_in = torch.cat([torch.full((16, 1), 2), src], 1)
    tgt_out = torch.cat([src, torch.full((16, 1), 3)], 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        total, n = loss_sum(model, src, tgt_in, tgt_out, 0.0)
        loss = total / n
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


# --- --set overrides through the CLI ----------------------------------------------------------------


def test_set_overrides_are_recorded(real_lines, tmp_path, monkeypatch, capsys):
    de, en = real_lines("train", "de")[:100], real_lines("train", "en")[:100]
    write_tsv(tmp_path / "train.tsv", de, en)
    cfg = {
        "name": "cli",
        "data": {"corpus": "files", "train": "train.tsv", "valid": "train.tsv", "root": "data", "min_freq": 1},
        "model": TINY_MODEL,
        "train": {"epochs": 1, "max_tokens": 512, "val_bleu": False},
        "decode": {"beam_size": 1, "max_len_b": 2},
    }
    (tmp_path / "cli.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    prepare_corpus(load_config("cli.yaml").data, **QUIET)  # data/ relative to the run folder, as the CLI sees it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def mt(*args):
        return subprocess.run(
            [sys.executable, "-m", "mt_cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    sets = ["--set", "model.d_model=48", "--set", "train.lr=3e-4", "--set", "train.max_steps=2"]
    p = mt("train", "-c", "cli.yaml", *sets, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    recorded = yaml.safe_load((tmp_path / "result" / "cli" / "config.yaml").read_text(encoding="utf-8"))
    assert recorded["model"]["d_model"] == 48 and recorded["train"]["lr"] == 3e-4
    assert recorded["train"]["max_steps"] == 2 and recorded["model"]["n_heads"] == 2  # the file's other values
    # overrides are validated like the file: one line, exit 2, nothing trained
    p = mt("train", "-c", "cli.yaml", "--set", "model.d_model=abc", "--device", "cpu")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: --set model.d_model=abc: must be an integer"), p.stderr
    from mt_cli.cli import main

    for bad, msg in (
        ("model.n_heads=5", "--set model.n_heads=5: must divide"),
        ("train.nope=1", "--set train.nope=1: unknown key"),
        ("train", "expected key=value"),
    ):
        monkeypatch.setattr(sys, "argv", ["mt", "train", "-c", "cli.yaml", "--set", bad, "--device", "cpu"])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and err.count("\n") == 1, err
    assert sorted(x.name for x in (tmp_path / "result").iterdir()) == ["cli"]
