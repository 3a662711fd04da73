"""Subword regularization (data.subword_samples): `mt prepare` writes K sampled segmentations of the training
split (BPE-dropout) that spell the same text as the usual one, differ from it and from each other, respect
data.max_len, and repeat for any number of workers; training reads sample (epoch - 1) mod K + 1 each epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_tsv

from mt_cli.config import ConfigError, config_from_dict
from mt_cli.data.arrays import array_path, load_array, row_lengths
from mt_cli.data.prepare import prepare_corpus

N_PAIRS, K, MAX_LEN = 1500, 3, 24


def _cfg(tmp, root: str, **data):
    return config_from_dict(
        {
            "name": "sampled",
            "data": {
                "corpus": "files",
                "root": str(tmp / root),
                "train": str(tmp / "train.tsv"),
                "valid": str(tmp / "valid.tsv"),
                "tokenizer": "sentencepiece",
                "sp_vocab_size": 800,
                "joint_vocab": True,
                "max_len": MAX_LEN,
                "subword_samples": K,
                "subword_alpha": 0.1,
                **data,
            },
            "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "d_ff": 64, "dropout": 0.0},
            "train": {"epochs": 3, "max_tokens": 2000, "lr": 1e-3, "scheduler": "constant", "val_bleu": False},
        }
    )


def _rows(folder, split: str, side: str) -> list[list[int]]:
    tokens = load_array(array_path(folder, split, side))
    ends = np.cumsum(row_lengths(array_path(folder, split, side, offsets=True)))
    return [tokens[a:b].tolist() for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, real_lines):
    tmp = tmp_path_factory.mktemp("sampled")
    write_tsv(tmp / "train.tsv", real_lines("train", "de")[:N_PAIRS], real_lines("train", "en")[:N_PAIRS])
    write_tsv(tmp / "valid.tsv", real_lines("val", "de")[:50], real_lines("val", "en")[:50])
    cfg = _cfg(tmp, "data")
    folder = prepare_corpus(cfg.data, log=lambda *_: None, workers=1)
    return tmp, cfg, folder


def test_samples_spell_the_same_text_in_other_pieces(sampled):
    import torch

    from mt_cli.data.tokenize import SideCodec

    _, cfg, folder = sampled
    state = torch.load(folder / "codecs.pt", weights_only=True)
    codecs = {side: SideCodec.from_state(state[side]) for side in ("src", "tgt")}
    for side in ("src", "tgt"):
        usual = _rows(folder, "train", side)
        samples = [_rows(folder, f"train.s{k}", side) for k in range(1, K + 1)]
        texts = [codecs[side].sp.decode(r) for r in usual]
        for rows in samples:
            assert len(rows) == len(usual)  # the same pairs, in the same order
            assert [codecs[side].sp.decode(r) for r in rows] == texts
            assert max(map(len, rows)) <= MAX_LEN
            changed = sum(a != b for a, b in zip(rows, usual)) / len(usual)
            assert 0.2 < changed < 0.95, changed  # BPE-dropout 0.1 re-splits some words of most sentences
            assert sum(map(len, rows)) > sum(map(len, usual))  # dropped merges: more, shorter pieces
        assert samples[0] != samples[1] and samples[1] != samples[2] and samples[0] != samples[2]  # own seeds
        dtype = load_array(array_path(folder, "train", side)).dtype
        assert [load_array(array_path(folder, f"train.s{k}", side)).dtype for k in range(1, K + 1)] == [dtype] * K
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [f"train.s{k}" in manifest["splits"] for k in range(1, K + 1)] == [True] * K


def test_samples_repeat_for_any_number_of_workers(sampled):
    tmp, _, folder = sampled
    again = prepare_corpus(_cfg(tmp, "data2").data, log=lambda *_: None, workers=2)
    for k in range(1, K + 1):
        for side in ("src", "tgt"):
            assert _rows(again, f"train.s{k}", side) == _rows(folder, f"train.s{k}", side)


def test_each_epoch_trains_on_the_next_sample(sampled):
    """Epochs 1, 2, 3 with K = 2 read samples 1, 2, 1. To tell them apart in the epochs' token counts, sample 2
    is replaced by the usual segmentation (BPE-dropout 0.4 gives sample 1 far more tokens than that)."""
    import shutil

    from mt_cli.training import train

    tmp, _, _ = sampled
    cfg = _cfg(tmp, "data3", subword_samples=2, subword_alpha=0.4, max_len=200)
    folder = prepare_corpus(cfg.data, log=lambda *_: None, workers=1)
    for side in ("src", "tgt"):
        for offsets in (False, True):
            shutil.copy(array_path(folder, "train", side, offsets), array_path(folder, "train.s2", side, offsets))
    splits = json.loads((folder / "manifest.json").read_text())["splits"]
    want = {k: splits[name]["tgt_tokens"] + splits[name]["pairs"] for k, name in ((1, "train.s1"), (2, "train"))}
    assert want[1] > 1.2 * want[2]
    summary = train(cfg, device="cpu", saved_root=str(tmp / "s"), result_root=str(tmp / "r"), log=lambda *_: None)
    metrics = [json.loads(line) for line in open(f"{summary['result']}/metrics.jsonl", encoding="utf-8")]
    seen = [m["tgt_tokens_per_s"] * m["seconds"] for m in metrics]  # from rounded figures: within 2%
    assert [n / want[k] for n, k in zip(seen, (1, 2, 1))] == pytest.approx([1.0, 1.0, 1.0], rel=0.02)


@pytest.mark.parametrize(
    "data, key",
    [({"subword_samples": -1}, "data.subword_samples"), ({"subword_samples": 65}, "data.subword_samples"),
     ({"tokenizer": "spacy"}, "data.subword_samples"), ({"subword_alpha": 0.0}, "data.subword_alpha"),
     ({"subword_alpha": 1.5}, "data.subword_alpha")],
)  # fmt: skip
def test_bad_sampling_settings_name_the_key(tmp_path, data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _cfg(tmp_path, "data", **data)


def test_pairs_the_cleaning_drops_are_dropped_from_every_sample(tmp_path, real_lines):
    de, en = real_lines("train", "de")[:300], real_lines("train", "en")[:300]
    write_tsv(tmp_path / "train.tsv", de + de[:40], en + en[:40])  # 40 repeated pairs
    write_tsv(tmp_path / "valid.tsv", real_lines("val", "de")[:20], real_lines("val", "en")[:20])
    cfg = _cfg(tmp_path, "data", subword_samples=2, dedup=True, sp_vocab_size=400, max_len=200)
    folder = prepare_corpus(cfg.data, log=lambda *_: None, workers=1)
    usual = _rows(folder, "train", "src")
    assert len(usual) == 300  # the repeats are gone
    for k in (1, 2):
        assert len(_rows(folder, f"train.s{k}", "src")) == len(_rows(folder, f"train.s{k}", "tgt")) == 300
