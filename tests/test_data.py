"""Data pipeline on real Multi30k text: tokenization, vocabularies, sentencepiece, prepare, batching."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from conftest import TINY

from mt_cli.config import DataConfig, load_config
from mt_cli.data.batching import Split, batch_plan, iterate, shard
from mt_cli.data.prepare import corpus_dir, is_prepared, prepare_corpus
from mt_cli.data.sources import MULTI30K_SHA256, DataError, read_lines, read_parallel
from mt_cli.data.tokenize import SideCodec, detokenize, normalize
from mt_cli.data.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab


def split_arrays(folder, split: str) -> dict:
    """A prepared split's four arrays as numpy reads them (the documented .npy format, not mt_cli's reader)."""
    return {k: torch.from_numpy(np.load(folder / f"{split}.{k}.npy")) for k in ("src", "src_off", "tgt", "tgt_off")}


# --- tokenization -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spacy_codecs():
    return {lang: SideCodec("spacy", lang, lowercase=False, vocab=Vocab([])) for lang in ("de", "en", "fr")}


@pytest.mark.parametrize(
    "lang,text,tokens",
    [
        (
            "en",
            "A man in a blue shirt is standing on a ladder cleaning a window.",
            [
                "A",
                "man",
                "in",
                "a",
                "blue",
                "shirt",
                "is",
                "standing",
                "on",
                "a",
                "ladder",
                "cleaning",
                "a",
                "window",
                ".",
            ],
        ),
        (
            "de",
            "Zwei Männer stehen am Herd und bereiten Essen zu.",
            ["Zwei", "Männer", "stehen", "am", "Herd", "und", "bereiten", "Essen", "zu", "."],
        ),
        ("en", "The dog doesn't want the toy.", ["The", "dog", "does", "n't", "want", "the", "toy", "."]),
    ],
)
def test_spacy_tokenizes_words_and_punctuation(spacy_codecs, lang, text, tokens):
    assert spacy_codecs[lang].tokenize([text]) == [tokens]


@pytest.mark.parametrize(
    "text",
    [
        "Two young, White males are outside near many bushes.",
        "The dog doesn't want the toy.",
        'A man (in red) jumps over a "wall".',
        "A black-and-white dog runs; a child smiles: 3 people watch!",
        "A sign says “Stop” in red letters.",
        "Ein Mann hält ein Schild, auf dem steht: „Teaching children for peace“.",
        "Ein Mann ist beim Lesen von „The Da Vinci Code“ eingeschlafen.",
        "Zwei Restaurantmitarbeiter unter einer „Mongolian BBQ“-Leuchtreklame.",
    ],
)
def test_detokenize_inverts_tokenize(spacy_codecs, text):
    lang = "de" if text.startswith(("Ein", "Zwei")) else "en"
    assert detokenize(spacy_codecs[lang].tokenize([text])[0]) == text


@pytest.mark.parametrize("lang", ["de", "en", "fr"])  # fr: elisions of any length (l', qu', jusqu')
def test_detokenize_round_trip_on_real_lines(real_lines, spacy_codecs, lang):
    lines = real_lines("val", lang)
    toks = spacy_codecs[lang].tokenize(lines)
    bad = [(line, detokenize(t)) for line, t in zip(lines, toks) if detokenize(t) != normalize(line, False)]
    # the rest are quirks of the raw text ("a man , who", "they 're", "&amp;") that no detokenizer can undo
    assert len(bad) <= 0.01 * len(lines), bad[:10]


def test_normalize_collapses_space_and_lowercases():
    assert normalize("  A  Man\tin\u00a0Red ", True) == "a man in red"
    assert normalize("A Man", False) == "A Man"


# --- vocabulary -------------------------------------------------------------------------------


def test_vocab_specials_have_fixed_ids():
    assert (UNK, PAD, BOS, EOS) == (0, 1, 2, 3)
    v = Vocab.build([["b", "a", "b"]])
    assert v.itos[:4] == list(SPECIALS) == ["<unk>", "<pad>", "<bos>", "<eos>"]
    assert v.itos[4:] == ["b", "a"]  # by default a token seen once is kept
    assert [v.stoi[s] for s in SPECIALS] == [0, 1, 2, 3]


def test_vocab_build_orders_by_frequency_then_alphabet_and_applies_min_freq():
    sents = [["the", "dog", "runs"], ["the", "cat", "runs"], ["the", "bird"], ["<unk>", "zebra", "ant"]]
    v = Vocab.build(sents, min_freq=1)
    assert v.itos[4:] == ["the", "runs", "ant", "bird", "cat", "dog", "zebra"]
    assert v.itos.count("<unk>") == 1  # a special in the data does not get a second id
    v2 = Vocab.build(sents, min_freq=2)
    assert v2.itos[4:] == ["the", "runs"]
    v3 = Vocab.build(sents, min_freq=1, max_size=6)  # max_size counts the specials
    assert len(v3) == 6 and v3.itos[4:] == ["the", "runs"]
    assert Vocab.build(sents, max_size=4).itos == list(SPECIALS)  # room for the specials only


def test_vocab_encode_decode_round_trip_and_unknowns(real_lines):
    codec = SideCodec("spacy", "en", lowercase=True, vocab=Vocab([]))
    train = codec.tokenize(real_lines("train", "en")[:2000])
    v = Vocab.build(train, min_freq=2)
    counts = {}
    for s in train:
        for t in s:
            counts[t] = counts.get(t, 0) + 1
    assert set(v.itos[4:]) == {t for t, c in counts.items() if c >= 2}
    for sent in train[:200]:
        ids = v.encode(sent)
        assert v.decode(ids) == [t if counts[t] >= 2 else "<unk>" for t in sent]
    assert v.encode(["a", "qwertyuiop", "dog"]) == [v.stoi["a"], UNK, v.stoi["dog"]]


# --- sentencepiece ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_codec(real_lines):
    return SideCodec.train_sentencepiece(real_lines("train", "en")[:2000], "en", True, "bpe", 300)


def test_sentencepiece_vocab(sp_codec):
    assert sp_codec.vocab.itos[:4] == list(SPECIALS)
    assert 250 <= len(sp_codec.vocab) <= 300


def test_sentencepiece_round_trip(real_lines, sp_codec):
    seen = set("".join(normalize(t, True) for t in real_lines("train", "en")[:2000]))
    held_out = [t for t in real_lines("val", "en")[:300] if set(normalize(t, True)) <= seen]
    assert len(held_out) > 250
    lines = real_lines("train", "en")[:100] + held_out
    ids = sp_codec.encode(lines)
    assert all(i >= 4 for s in ids for i in s)  # covered characters never become <unk>
    assert [sp_codec.decode(s) for s in ids] == [normalize(t, True) for t in lines]
    # a codec restored from its checkpoint state encodes identically
    again = SideCodec.from_state(sp_codec.state())
    assert again.encode(lines[:50]) == ids[:50] and again.vocab.itos == sp_codec.vocab.itos


def test_codec_drops_specials_but_keeps_unk_on_decode():
    codec = SideCodec("spacy", "en", True, Vocab(["a", "dog", "."]))
    a, dog, dot = codec.vocab.encode(["a", "dog", "."])
    assert codec.decode([BOS, a, UNK, dog, dot, EOS, PAD]) == "a <unk> dog."


# --- prepare ----------------------------------------------------------------------------------


def test_prepared_manifest_counts_and_checksums(prepared, multi30k_dir):
    man = prepared.manifest
    assert man["fingerprint"] == prepared.cfg.data.fingerprint()
    expected = {
        "train": 29000,
        "valid": 1014,
        "test_2016_flickr": 1000,
        "test_2017_flickr": 1000,
        "test_2017_mscoco": 461,
    }
    assert {s: v["raw_lines"] for s, v in man["splits"].items()} == expected
    assert {s: v["pairs"] for s, v in man["splits"].items()} == expected  # no Multi30k line is empty or too long
    for name, digest in man["files_sha256"].items():
        assert digest == MULTI30K_SHA256[name] == hashlib.sha256((multi30k_dir / name).read_bytes()).hexdigest()
    assert len(man["files_sha256"]) == 10  # 5 splits x (de, en)
    folder = prepared.folder
    for split, info in man["splits"].items():
        d = split_arrays(folder, split)
        assert len(d["src_off"]) == len(d["tgt_off"]) == info["pairs"] + 1
        assert int(d["src_off"][-1]) == info["src_tokens"] == len(d["src"])
        assert int(d["tgt_off"][-1]) == info["tgt_tokens"] == len(d["tgt"])
        assert len(read_lines(folder / f"{split}.de")) == info["pairs"]
        assert len(read_lines(folder / f"{split}.ref.en")) == info["pairs"]
    assert man["vocab_sizes"] == {"src": len(prepared.codecs["src"].vocab), "tgt": len(prepared.codecs["tgt"].vocab)}
    assert json.loads((folder / "vocab.en.json").read_text()) == prepared.codecs["tgt"].vocab.itos


def test_prepared_ids_match_the_text(prepared, real_lines):
    """Row i of every split is the encoding of raw line i, and references are normalized raw lines."""
    folder, codecs = prepared.folder, prepared.codecs
    d = split_arrays(folder, "valid")
    raw_de, raw_en = real_lines("val", "de"), real_lines("val", "en")
    for i in (0, 1, 500, 1013):
        a, b = int(d["src_off"][i]), int(d["src_off"][i + 1])
        assert d["src"][a:b].tolist() == codecs["src"].encode([raw_de[i]])[0]
        a, b = int(d["tgt_off"][i]), int(d["tgt_off"][i + 1])
        assert d["tgt"][a:b].tolist() == codecs["tgt"].encode([raw_en[i]])[0]
    assert read_lines(folder / "valid.ref.en") == [normalize(t, prepared.cfg.data.lowercase) for t in raw_en]
    assert read_lines(folder / "valid.de") == raw_de


def test_prepare_reuses_an_up_to_date_corpus(prepared, multi30k_dir):
    before = {p.name: p.stat().st_mtime_ns for p in prepared.folder.iterdir()}
    log = []
    out = prepare_corpus(prepared.cfg.data, source=str(multi30k_dir), log=log.append)
    assert out == prepared.folder and is_prepared(prepared.cfg.data)
    assert any("up to date" in m for m in log)
    assert {p.name: p.stat().st_mtime_ns for p in prepared.folder.iterdir()} == before


def _files_config(root, train, valid, **kw) -> DataConfig:
    d = DataConfig(corpus="files", root=str(root), train=str(train), valid=str(valid), **{"min_freq": 1, **kw})
    d.validate()
    return d


def _write_tsv(path, pairs):
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def test_prepare_rebuilds_on_a_changed_data_config(tmp_path, real_lines):
    pairs = list(zip(real_lines("train", "de")[:200], real_lines("train", "en")[:200]))
    train = _write_tsv(tmp_path / "train.tsv", pairs)
    valid = _write_tsv(tmp_path / "valid.tsv", pairs[:20])
    a = _files_config(tmp_path / "data", train, valid)
    folder = prepare_corpus(a, log=lambda m: None)
    man_a = json.loads((folder / "manifest.json").read_text())
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    log = []
    prepare_corpus(_files_config(tmp_path / "data", train, valid), log=log.append)  # an equal config: reused
    assert any("up to date" in m for m in log) and (folder / "manifest.json").stat().st_mtime_ns == mtime

    b = _files_config(tmp_path / "data", train, valid, min_freq=2)
    assert not is_prepared(b)
    folder_b = prepare_corpus(b, log=lambda m: None)
    man_b = json.loads((folder_b / "manifest.json").read_text())
    assert man_b["fingerprint"] == b.fingerprint() != man_a["fingerprint"]
    assert man_b["vocab_sizes"]["tgt"] < man_a["vocab_sizes"]["tgt"]
    assert man_b["splits"]["train"]["pairs"] == 200 and man_b["splits"]["valid"]["pairs"] == 20
    assert is_prepared(b)
    if folder_b == folder:  # replaced in place, not mixed
        assert not is_prepared(a) and len(json.loads((folder / "vocab.en.json").read_text())) == len(
            json.loads((folder_b / "vocab.en.json").read_text())
        )
    assert not [p for p in folder_b.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_prepare_skips_empty_and_too_long_training_pairs(tmp_path, real_lines):
    pairs = list(zip(real_lines("train", "de")[:30], real_lines("train", "en")[:30]))
    pairs += [("   ", "A dog."), ("Ein Hund.", ""), (" ".join(["Hund"] * 300), "A dog.")]
    train = _write_tsv(tmp_path / "train.tsv", pairs)
    valid = _write_tsv(tmp_path / "valid.tsv", pairs[-3:] + pairs[:2])  # evaluation splits keep every line
    folder = prepare_corpus(_files_config(tmp_path / "data", train, valid), log=lambda m: None)
    man = json.loads((folder / "manifest.json").read_text())["splits"]
    assert man["train"] == {**man["train"], "raw_lines": 33, "pairs": 30, "skipped_empty": 2, "skipped_too_long": 1}
    assert man["valid"]["pairs"] == man["valid"]["raw_lines"] == 5
    assert len(Split(folder / "train")) == 30
    assert read_lines(folder / "train.ref.en") == [normalize(t, DataConfig().lowercase) for _, t in pairs[:30]]


def test_checksum_mismatch_is_a_data_error(tmp_path, multi30k_dir):
    bad = tmp_path / "bad_source"
    bad.mkdir()
    for name in MULTI30K_SHA256:
        if (multi30k_dir / name).is_file():
            (bad / name).symlink_to(multi30k_dir / name)
    (bad / "val.en.gz").unlink()
    with gzip.open(bad / "val.en.gz", "wt", encoding="utf-8") as f:  # same lines, one word changed
        f.write("\n".join(["A dog runs."] + read_lines(multi30k_dir / "val.en.gz")[1:]) + "\n")
    cfg = load_config(TINY, [f"data.root={tmp_path / 'data'}"])
    with pytest.raises(DataError) as e:
        prepare_corpus(cfg.data, source=str(bad), log=lambda m: None)
    msg = str(e.value)
    assert "val.en.gz" in msg and "SHA-256" in msg
    assert not (tmp_path / "data" / "multi30k_raw" / "val.en.gz").exists()  # the bad copy is not kept
    assert not corpus_dir(cfg.data).exists()


def test_missing_source_file_is_a_data_error(tmp_path):
    cfg = load_config(TINY, [f"data.root={tmp_path / 'data'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"train\.de\.gz.*missing"):
        prepare_corpus(cfg.data, source=str(tmp_path / "empty"), log=lambda m: None)


def test_different_line_counts_are_a_data_error(tmp_path, real_lines):
    (tmp_path / "train.de").write_text("\n".join(real_lines("train", "de")[:10]) + "\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("\n".join(real_lines("train", "en")[:9]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="has 10 lines but .* has 9"):
        read_parallel(tmp_path / "train.de", tmp_path / "train.en")
    cfg = _files_config(tmp_path / "data", tmp_path / "train", tmp_path / "train")
    with pytest.raises(DataError, match="has 10 lines but .* has 9"):
        prepare_corpus(cfg, log=lambda m: None)
    assert not corpus_dir(cfg).exists()


def test_invalid_utf8_is_a_data_error_with_file_and_line(tmp_path, real_lines):
    lines = [s.encode() for s in real_lines("train", "de")[:5]]
    lines[2] = "Ein Mann läuft.".encode("latin-1")
    (tmp_path / "train.de").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "train.en").write_text("\n".join(real_lines("train", "en")[:5]) + "\n", encoding="utf-8")
    cfg = _files_config(tmp_path / "data", tmp_path / "train", tmp_path / "train")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train.de'}:3: invalid UTF-8")):
        prepare_corpus(cfg, log=lambda m: None)


def test_tsv_with_a_missing_column_names_the_line(tmp_path):
    (tmp_path / "t.tsv").write_text("Ein Hund.\tA dog.\nnur eine Spalte\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.tsv:2: expected 2 tab-separated columns"):
        prepare_corpus(_files_config(tmp_path / "data", tmp_path / "t.tsv", tmp_path / "t.tsv"), log=lambda m: None)


# --- batching ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_split(prepared):
    return Split(prepared.folder / "valid", bucket_width=8)


def test_split_rows_hold_eos_bos_and_padding(valid_split, prepared):
    d = split_arrays(prepared.folder, "valid")
    s = valid_split
    for i in (0, 7, len(s) - 1):
        src = d["src"][int(d["src_off"][i]) : int(d["src_off"][i + 1])].tolist()
        tgt = d["tgt"][int(d["tgt_off"][i]) : int(d["tgt_off"][i + 1])].tolist()
        row = s.src[i].tolist()
        assert row[: len(src) + 1] == src + [EOS] and set(row[len(src) + 1 :]) <= {PAD}
        row = s.tgt[i].tolist()
        assert row[: len(tgt) + 2] == [BOS] + tgt + [EOS] and set(row[len(tgt) + 2 :]) <= {PAD}
        assert int(s.src_len[i]) == len(src) + 1 and int(s.tgt_len[i]) == len(tgt) + 1
    assert s.tgt[len(s)].eq(PAD).all()  # the filler row


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("sizes", [(None, 300), (16, None)])
def test_batch_plan_fixed_shapes_per_bucket(valid_split, shuffle, sizes):
    s = valid_split
    plan = batch_plan(s, *sizes, shuffle=shuffle, seed=3, epoch=1)
    per_bucket: dict[int, set] = {}
    for idx, L in plan:
        per_bucket.setdefault(L, set()).add(len(idx))
        assert L % s.bucket_width == 0
        real = idx[idx < len(s)]
        assert (s.bucket[real] == L).all()  # every sentence fits its bucket's length
        assert int(s.src_len[real].max()) <= L and int(s.tgt_len[real].max()) <= L
    assert all(len(v) == 1 for v in per_bucket.values()), per_bucket
    if sizes[0]:
        assert per_bucket.keys() and all(v == {16} for v in per_bucket.values())
    else:
        assert all(v == {max(1, 300 // L)} for L, v in per_bucket.items())
    for b in iterate(s, plan, torch.device("cpu")):  # the tensors the training step sees
        L = b.src.shape[1]
        assert b.src.shape == b.tgt_in.shape == b.tgt_out.shape and L in per_bucket
        assert len(b.src) in per_bucket[L]


def test_filler_rows_are_padding_in_the_target(valid_split):
    s = valid_split
    plan = batch_plan(s, 64, None, shuffle=True, seed=0, epoch=0)
    n_filler = 0
    for b, (idx, _) in zip(iterate(s, plan, torch.device("cpu")), plan):
        filler = idx == len(s)
        n_filler += int(filler.sum())
        assert b.tgt_out[filler].eq(PAD).all() and b.tgt_in[filler].eq(PAD).all()
        assert b.n_tgt == int(b.tgt_out.ne(PAD).sum()) == int(s.tgt_len[idx[~filler]].sum())
        assert b.n_src == int(b.src[~filler].ne(PAD).sum())
        assert (b.tgt_in[~filler, 0] == BOS).all()
    assert n_filler > 0  # 1014 sentences in buckets of 64 cannot all fill up


@pytest.mark.parametrize("epoch", [0, 1, 5])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_sentence_once_per_epoch(valid_split, epoch, shuffle):
    s = valid_split
    plan = batch_plan(s, None, 500, shuffle=shuffle, seed=7, epoch=epoch)
    idx = torch.cat([i for i, _ in plan])
    real = idx[idx < len(s)]
    assert sorted(real.tolist()) == list(range(len(s)))


def test_plan_is_reproducible_and_changes_with_epoch(valid_split):
    s = valid_split
    key = lambda plan: [(i.tolist(), L) for i, L in plan]  # noqa: E731
    a = key(batch_plan(s, None, 500, shuffle=True, seed=7, epoch=2))
    assert a == key(batch_plan(s, None, 500, shuffle=True, seed=7, epoch=2))
    assert a != key(batch_plan(s, None, 500, shuffle=True, seed=7, epoch=3))
    assert a != key(batch_plan(s, None, 500, shuffle=True, seed=8, epoch=2))


def test_unshuffled_plan_sorts_by_length_within_a_bucket(valid_split):
    s = valid_split
    for idx, _ in batch_plan(s, 32, None, shuffle=False, fill=False):
        lens = s.src_len[idx].tolist()
        assert lens == sorted(lens)


@pytest.mark.parametrize("n,world", [(12, 1), (12, 3), (13, 4), (5, 4), (3, 4)])
def test_shard_gives_disjoint_equal_shares(n, world):
    plan = list(range(n))
    shares = [shard(plan, r, world) for r in range(world)]
    size = -(-n // world)
    assert all(len(sh) == size for sh in shares)
    flat = sorted(x for sh in shares for x in sh)
    # every batch once; only the wrapped-around tail (to equalize counts) repeats
    assert flat == sorted(plan + plan[: size * world - n])
    if n % world == 0:
        assert len(set(flat)) == len(flat)


def test_iterate_resumes_mid_epoch(valid_split):
    s = valid_split
    plan = batch_plan(s, None, 400, shuffle=True, seed=1, epoch=1)
    full = list(iterate(s, plan, torch.device("cpu")))
    tail = list(iterate(s, plan, torch.device("cpu"), start=5))
    assert len(tail) == len(full) - 5
    for a, b in zip(full[5:], tail):
        assert torch.equal(a.src, b.src) and torch.equal(a.tgt_out, b.tgt_out) and a.n_tgt == b.n_tgt


def test_split_missing_or_damaged_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="missing"):
        Split(tmp_path / "valid")
    for name in ("src", "src_off", "tgt", "tgt_off"):
        (tmp_path / f"bad.{name}.npy").write_bytes(b"not an array file")
    with pytest.raises(DataError, match="unreadable prepared array"):
        Split(tmp_path / "bad")


def test_unknown_spacy_language_is_a_clear_data_error():
    from mt_cli.data.sources import DataError
    from mt_cli.data.tokenize import spacy_tokenizer

    with pytest.raises(DataError, match="no tokenizer for language 'zz'.*sentencepiece"):
        spacy_tokenizer("zz")
