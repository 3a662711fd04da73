"""Multilingual training on Multi30k (data.pairs): one corpus holds every direction's training pairs in order,
each source led by its single-piece target tag where several target languages occur; every direction keeps its
own evaluation splits with its own references; training tests all of them; `mt translate --src-lang/--tgt-lang`
picks a direction, and an unknown one is one line."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from conftest import TINY, run_main

from mt_cli.config import ConfigError, load_config
from mt_cli.data.arrays import array_path, load_array, row_lengths
from mt_cli.data.multilingual import TaggedSource, choose_direction, for_direction
from mt_cli.data.prepare import prepare_corpus
from mt_cli.data.sources import DataError
from mt_cli.data.tokenize import SideCodec, normalize

PAIRS = ["en-de", "en-fr"]
SP = ["data.tokenizer=sentencepiece", "data.joint_vocab=true", "data.sp_vocab_size=3000"]


def _raw(multi30k_dir, split: str, lang: str) -> list[str]:
    return gzip.open(multi30k_dir / f"{split}.{lang}.gz", "rt", encoding="utf-8").read().splitlines()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, multi30k_dir):
    root = tmp_path_factory.mktemp("ml")
    cfg = load_config(TINY, [f"data.root={root}", f"data.pairs=[{','.join(PAIRS)}]", *SP])
    folder = prepare_corpus(cfg.data, source=str(multi30k_dir), log=lambda *_: None)
    state = torch.load(folder / "codecs.pt", weights_only=True)
    codecs = {side: SideCodec.from_state(state[side]) for side in ("src", "tgt")}
    return cfg, folder, codecs


def _rows(folder, split: str, side: str) -> list[list[int]]:
    tokens = load_array(array_path(folder, split, side))
    ends = np.cumsum(row_lengths(array_path(folder, split, side, offsets=True)))
    return [tokens[a:b].tolist() for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]


def test_training_pairs_are_every_direction_in_order_each_tagged(corpus, multi30k_dir):
    cfg, folder, codecs = corpus
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == ("en", "de")  # the first pair is the main direction
    src, tgt = _rows(folder, "train", "src"), _rows(folder, "train", "tgt")
    n = len(_raw(multi30k_dir, "train", "en"))
    assert len(src) == 2 * n
    de, fr = _raw(multi30k_dir, "train", "de"), _raw(multi30k_dir, "train", "fr")
    vocab = codecs["src"].vocab.itos
    for i in (0, 1, n - 1):
        assert vocab[src[i][0]] == "▁<2de>" and vocab[src[n + i][0]] == "▁<2fr>"  # one piece each
        assert codecs["tgt"].sp.decode(tgt[i]) == normalize(de[i], False)
        assert codecs["tgt"].sp.decode(tgt[n + i]) == normalize(fr[i], False)
        assert src[i][1:] == src[n + i][1:]  # the same English sentence after its tag
    tag_ids = {vocab.index("▁<2de>"), vocab.index("▁<2fr>")}
    assert sum(t in tag_ids for row in src for t in row[1:]) == 0  # a tag only ever leads
    assert sum(t in tag_ids for row in tgt for t in row) == 0  # and never is output


def test_each_direction_keeps_its_own_evaluation_splits(corpus, multi30k_dir):
    cfg, folder, codecs = corpus
    manifest = json.loads((folder / "manifest.json").read_text())
    names = set(manifest["splits"])
    for test in ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"):
        assert {test, f"{test}.en-fr", "valid", "valid.en-fr"} <= names
    refs = (folder / "test_2016_flickr.en-fr.ref.fr").read_text(encoding="utf-8").splitlines()
    assert refs == [normalize(x, False) for x in _raw(multi30k_dir, "test_2016_flickr", "fr")]
    refs = (folder / "test_2016_flickr.ref.de").read_text(encoding="utf-8").splitlines()
    assert refs == [normalize(x, False) for x in _raw(multi30k_dir, "test_2016_flickr", "de")]
    vocab = codecs["src"].vocab.itos
    assert {vocab[r[0]] for r in _rows(folder, "test_2017_flickr.en-fr", "src")} == {"▁<2fr>"}


def test_a_run_tests_every_direction_and_translate_picks_one(corpus, tmp_path, monkeypatch, capsys):
    from mt_cli.training import train

    cfg, _, _ = corpus
    cfg.train.max_steps, cfg.train.val_bleu, cfg.train.best_metric = 2, False, "val_loss"
    cfg.decode.beam_size, cfg.decode.max_len_b = 1, 2
    summary = train(
        cfg, device="cpu", saved_root=str(tmp_path / "s"), result_root=str(tmp_path / "r"), log=lambda *_: None
    )
    assert {"test_2016_flickr", "test_2016_flickr.en-fr", "test_2017_mscoco.en-fr"} <= set(summary["test"])
    best = f"{summary['saved']}/best.pt"
    (tmp_path / "in.en").write_text("A dog runs.\n\nTwo men talk.\n", encoding="utf-8")
    for lang in ("de", "fr"):
        code, out, err = run_main(
            monkeypatch, capsys, "translate", "--checkpoint", best, "-i", str(tmp_path / "in.en"), "--tgt-lang", lang
        )
        assert code == 0, err
        assert len(out.split("\n")) == 4 and out.split("\n")[1] == ""
    code, out, err = run_main(
        monkeypatch, capsys, "translate", "--checkpoint", best, "-i", str(tmp_path / "in.en"), "--tgt-lang", "cs"
    )
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "en→de, en→fr" in err and "--tgt-lang cs" in err


def test_choose_direction_fills_in_what_is_left_out(corpus):
    cfg = load_config(TINY, ["data.pairs=[de-en,fr-en,en-de]", *SP])
    data = cfg.data
    assert choose_direction(data, None, None) == ("de", "en")  # the main one
    assert choose_direction(data, "fr", None) == ("fr", "en")
    assert choose_direction(data, None, "de") == ("en", "de")
    assert choose_direction(data, "en", None) == ("en", "de")  # the only one from English
    assert choose_direction(data, None, "en") == ("de", "en")  # several fit: the main one
    for src, tgt in (("cs", None), ("fr", "de"), (None, "fr")):
        with pytest.raises(DataError, match="this model translates de→en, fr→en, en→de; choose one of those$"):
            choose_direction(data, src, tgt)
    two = load_config(TINY, ["data.pairs=[de-en,en-fr,de-fr]", *SP]).data  # two fit, neither the main one
    with pytest.raises(DataError, match="^--tgt-lang fr: this model .*; several fit; name both languages$"):
        choose_direction(two, None, "fr")


def test_a_tag_leads_the_source_only_where_several_targets_occur(corpus):
    _, _, codecs = corpus
    tagged = TaggedSource(codecs["src"], "<2fr>")
    plain = codecs["src"].encode(["A dog runs."])[0]
    assert tagged.encode(["A dog runs."])[0] == [codecs["src"].vocab.itos.index("▁<2fr>")] + plain
    assert tagged.vocab is codecs["src"].vocab and tagged.decode(plain) == codecs["src"].decode(
        plain
    )  # the rest: the codec's
    one_target = load_config(TINY, ["data.pairs=[de-en,fr-en,cs-en]", *SP]).data
    assert one_target.target_tag("en") is None  # one target language: no tag needed
    assert load_config(TINY, ["data.pairs=[de-en,en-de]", *SP]).data.target_tag("de") == "<2de>"


def test_translation_tags_the_source_only_where_the_model_needs_it(corpus):
    _, _, codecs = corpus
    two_targets = load_config(TINY, ["data.pairs=[de-en,en-de]", *SP]).data
    got = for_direction(codecs, two_targets, ("en", "de"))
    assert isinstance(got["src"], TaggedSource) and got["src"].tag == "<2de>" and got["tgt"] is codecs["tgt"]
    assert for_direction(codecs, two_targets, ("de", "en"))["src"].tag == "<2en>"
    one_target = load_config(TINY, ["data.pairs=[de-en,fr-en,cs-en]", *SP]).data
    assert for_direction(codecs, one_target, ("fr", "en")) is codecs


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.pairs=[de-en,de-en]", *SP], "data.pairs"),
        (["data.pairs=[de-de]", *SP], "data.pairs"),
        (["data.pairs=[xx-en]", *SP], "data.pairs"),
        (["data.pairs=[de_en]", *SP], "data.pairs"),
        (["data.pairs=[de-en,fr-en]"], "data.joint_vocab"),
        (["data.pairs=[de-en,fr-en]", "data.tokenizer=sentencepiece"], "data.joint_vocab"),
        (["data.pairs=[de-en]", "data.corpus=files", "data.train=x.tsv", "data.valid=y.tsv", *SP], "data.pairs"),
    ],
)
def test_bad_pairs_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TINY, overrides)
