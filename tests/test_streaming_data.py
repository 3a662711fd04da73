"""Streaming prepare and training from disk, on real Multi30k slices: the on-disk arrays, workers and chunking,
cleaning options, refusal of empty or damaged input, and streamed batches equal to device-resident ones."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, run_main

from mt_cli.atomic import OutputError
from mt_cli.config import DataConfig, load_config
from mt_cli.data import stream
from mt_cli.data.batching import Split, batch_plan, iterate, shard
from mt_cli.data.clean import DigestSet
from mt_cli.data.prepare import corpus_dir, is_prepared, load_corpus, load_manifest, prepare_corpus
from mt_cli.data.sources import DataError, read_lines
from mt_cli.data.tokenize import SideCodec, normalize
from mt_cli.data.vocab import SPECIALS

DEFAULT_CASE = DataConfig().lowercase  # the casing of the configs these tests build (references follow it)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_support as S  # noqa: E402

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def pairs(real_lines):
    return list(zip(real_lines("train", "de")[:3000], real_lines("train", "en")[:3000]))


def write_tsv(path: Path, rows) -> Path:
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return path


def files_config(root: Path, train, valid, **kw) -> DataConfig:
    d = DataConfig(corpus="files", root=str(root), train=str(train), valid=str(valid), **{"min_freq": 1, **kw})
    d.validate()
    return d


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a prepared corpus but the manifest (it records timings and the worker count) and codecs.pt
    (a sentencepiece model records the temporary paths it was trained from; vocab.*.json hold its pieces)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in ("manifest.json", "codecs.pt")}


# --- the on-disk format ---------------------------------------------------------------------------------------


def test_prepared_arrays_are_plain_npy_files(prepared, real_lines):
    folder = prepared.folder
    for split, info in prepared.manifest["splits"].items():
        for side, key in (("src", "src_tokens"), ("tgt", "tgt_tokens")):
            tokens = np.load(folder / f"{split}.{side}.npy", mmap_mode="r")  # memory-mappable, no pickle
            offsets = np.load(folder / f"{split}.{side}_off.npy", allow_pickle=False)
            assert tokens.dtype == np.int16 and offsets.dtype == np.int64  # word vocabularies < 32768
            assert offsets[0] == 0 and (np.diff(offsets) >= 0).all() and offsets[-1] == len(tokens) == info[key]
            assert len(offsets) == info["pairs"] + 1
    assert not list(folder.glob("*.pt"))[1:] and (folder / "codecs.pt").is_file()  # only the codecs are torch


# --- workers, chunks, gzip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["spacy", "sentencepiece"])
def test_workers_and_chunk_size_do_not_change_the_output(tmp_path, pairs, monkeypatch, tokenizer):
    train = write_tsv(tmp_path / "train.tsv", pairs)
    valid = write_tsv(tmp_path / "valid.tsv", pairs[:300])
    kw = dict(tokenizer=tokenizer, sp_vocab_size=500) if tokenizer == "sentencepiece" else {}
    one = prepare_corpus(files_config(tmp_path / "a", train, valid, **kw), workers=1, **QUIET)
    monkeypatch.setattr(stream, "CHUNK_LINES", 170)  # many chunks, the last one short, in 2 processes
    two = prepare_corpus(files_config(tmp_path / "b", train, valid, **kw), workers=2, **QUIET)
    assert folder_bytes(one) == folder_bytes(two)
    assert read_lines(two / "train.ref.en") == [normalize(t, DEFAULT_CASE) for _, t in pairs]
    assert read_lines(two / "train.de") == [s for s, _ in pairs]
    if tokenizer == "sentencepiece":  # a model file records its thread count: one, so --workers cannot show in it
        from sentencepiece import sentencepiece_model_pb2

        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(bytes(torch.load(two / "codecs.pt", weights_only=True)["src"]["sp_model"].numpy()))
        assert model.trainer_spec.num_threads == 1


def test_a_gzipped_prefix_corpus_is_found_and_equals_the_plain_one(tmp_path, pairs):
    (tmp_path / "gz").mkdir()
    for name, rows in (("train", pairs[:500]), ("valid", pairs[500:600])):
        for lang, col in (("de", 0), ("en", 1)):
            text = "".join(r[col] + "\n" for r in rows).encode()
            (tmp_path / f"{name}.{lang}").write_bytes(text)
            (tmp_path / "gz" / f"{name}.{lang}.gz").write_bytes(gzip.compress(text))
    plain = prepare_corpus(files_config(tmp_path / "p", tmp_path / "train", tmp_path / "valid"), **QUIET)
    zipped = prepare_corpus(files_config(tmp_path / "z", tmp_path / "gz" / "train", tmp_path / "gz" / "valid"), **QUIET)
    assert folder_bytes(plain) == folder_bytes(zipped)
    assert sorted(Path(f).name for f in load_manifest(zipped)["files_sha256"]) == [
        "train.de.gz",
        "train.en.gz",
        "valid.de.gz",
        "valid.en.gz",
    ]


def test_crlf_byte_order_mark_and_a_missing_last_newline(tmp_path, pairs):
    rows = pairs[:50]
    text = "\ufeff" + "\r\n".join(f"{a}\t{b}" for a, b in rows)  # no newline at the end
    (tmp_path / "t.tsv").write_bytes(text.encode())
    folder = prepare_corpus(files_config(tmp_path / "d", tmp_path / "t.tsv", tmp_path / "t.tsv"), **QUIET)
    assert read_lines(folder / "train.de") == [a for a, _ in rows]
    assert read_lines(folder / "valid.ref.en") == [normalize(b, DEFAULT_CASE) for _, b in rows]


# --- cleaning -------------------------------------------------------------------------------------------------


def test_cleaning_options_drop_and_count_training_pairs_only(tmp_path, pairs):
    base = pairs[:200]
    extra = [
        base[3],
        (base[5][0].upper(), base[5][1]),  # a repeat; and one again after lowercasing
        ("Hallo Welt.", "Hallo  Welt."),  # identical sides once normalized
        ("Ein Hund.", " ".join(["A", "big", "dog"] * 10) + "."),
    ]  # a 32:4 token ratio
    train = write_tsv(tmp_path / "train.tsv", base + extra)
    valid = write_tsv(tmp_path / "valid.tsv", extra)
    # lowercased, so that the uppercased repeat is a duplicate too
    cfg = files_config(tmp_path / "d", train, valid, dedup=True, drop_identical=True, max_ratio=3.0, lowercase=True)
    folder = prepare_corpus(cfg, **QUIET)
    info = load_manifest(folder)["splits"]
    state = torch.load(folder / "codecs.pt", weights_only=True)
    src_codec, tgt_codec = (SideCodec.from_state(state[side]) for side in ("src", "tgt"))
    # the reference: the rules written out, over the normalized text and the codecs' token counts
    seen, kept, skipped = set(), [], {"duplicate": 0, "identical": 0, "ratio": 0}
    for s, t in base + extra:
        key = (normalize(s, True), normalize(t, True))
        n_src, n_tgt = len(src_codec.encode([s])[0]), len(tgt_codec.encode([t])[0])
        reason = (
            "ratio"
            if max(n_src, n_tgt) > 3.0 * min(n_src, n_tgt)
            else "identical"
            if key[0] == key[1]
            else "duplicate"
            if key in seen
            else None
        )
        if reason:
            skipped[reason] += 1
            continue
        seen.add(key)
        kept.append(key[1])
    assert read_lines(folder / "train.ref.en") == kept
    assert {k: info["train"][f"skipped_{k}"] for k in skipped} == skipped
    assert skipped["duplicate"] == 2 and skipped["identical"] == 1 and skipped["ratio"] >= 1
    assert info["valid"]["pairs"] == info["valid"]["raw_lines"] == 4  # evaluation splits keep every line


def test_cleaning_defaults_keep_the_fingerprint_of_earlier_versions():
    # the value mt_cli 0.x gave configs/tiny.yaml's data section (then lowercased) before the cleaning keys existed
    assert load_config(TINY, ["data.lowercase=true"]).data.fingerprint().startswith("dc14a8")
    assert (
        DataConfig(dedup=True).fingerprint()
        != DataConfig().fingerprint()
        == DataConfig(resident_max_mb=0).fingerprint()
    )


def test_digest_set_reports_exactly_the_first_occurrences():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5000, 20_000).astype(np.uint64)  # many repeats, within and across chunks
    ds, seen = DigestSet(), set()
    for chunk in np.array_split(values, 37):
        new = ds.add_new(chunk)
        want = []
        for v in chunk.tolist():
            want.append(v not in seen)
            seen.add(v)
        assert new.tolist() == want
    assert len(ds) == len(seen)


def test_digest_set_levels_halve_so_lookups_stay_logarithmic():
    """Each sorted level is more than twice the next: at most log2(n) + 1 levels for n digests."""
    ds = DigestSet()
    values = np.random.default_rng(1).permutation(10_000).astype(np.uint64)
    for chunk in np.array_split(values, 1000):
        ds.add_new(chunk)
        sizes = [len(level) for level in ds.levels]
        assert all(a > 2 * b for a, b in zip(sizes, sizes[1:])), sizes
        assert len(sizes) <= np.log2(len(ds)) + 1
    assert all(bool(np.all(np.diff(level.astype(np.int64)) > 0)) for level in ds.levels)


def test_pair_digests_are_8_bytes_and_tell_pairs_apart():
    from mt_cli.data.clean import pair_digests

    src, tgt = ["a", "a", "a b", "a", ""], ["b", "b", "", "b c", "a b"]
    digests = pair_digests(src, tgt)
    assert digests.dtype == np.uint64 and digests.shape == (5,)
    assert digests[0] == digests[1] and len(set(digests.tolist())) == 4  # a tab keeps "a b"|"" from "a"|"b c"


def nominal_chunks(sizes):
    first = np.cumsum([1, *sizes[:-1]])
    return [stream.Chunk("train", int(f), n, b"", None, ("x",)) for f, n in zip(first, sizes)]


@pytest.mark.parametrize("sizes,k", [([37] * 27 + [1], 100), ([300, 300, 400], 100), ([5, 5, 5], 100), ([8], 8)])
def test_sentencepiece_sample_takes_k_distinct_lines_in_order(sizes, k):
    total = sum(sizes)
    chunks = list(stream.sample_chunks(iter(nominal_chunks(sizes)), total, k, seed=3))
    assert [c.n for c in chunks] == sizes
    for c in chunks:
        assert c.pick == sorted(set(c.pick)) and all(0 <= i < c.n for i in c.pick)
    assert sum(len(c.pick) for c in chunks) == min(k, total)


def test_sentencepiece_sample_is_uniform_over_the_chunks():
    """Chunk shares follow the hypergeometric law of a uniform sample: means k·m/N (sd of a 400-seed mean ~0.2)."""
    sizes, k, seeds = [300, 300, 400], 100, 400
    counts = np.array(
        [[len(c.pick) for c in stream.sample_chunks(iter(nominal_chunks(sizes)), 1000, k, s)] for s in range(seeds)]
    )
    assert np.allclose(counts.mean(0), [30, 30, 40], atol=1.5)
    lines = np.zeros(300)
    for s in range(seeds):  # inside a chunk every line is as likely: 0.1 each
        lines[next(stream.sample_chunks(iter(nominal_chunks(sizes)), 1000, k, s)).pick] += 1
    assert abs(lines[:150].mean() - lines[150:].mean()) < 5 * np.sqrt(0.1 * 0.9 * seeds / 150)


def test_a_line_too_long_to_be_a_sentence_is_named_by_file_and_line(tmp_path):
    from mt_cli.limits import MAX_LINE_BYTES

    path = tmp_path / "x.tsv"
    for huge in (b"a" * (MAX_LINE_BYTES + 1), b"a" * (3 * MAX_LINE_BYTES)):  # within one read block, and across
        path.write_bytes(b"ein\tone\nzwei\ttwo\n" + huge + b"\ndrei\tthree\n")
        with pytest.raises(DataError) as err:
            list(stream.read_chunks("train", [path], chunk_lines=10))
        assert str(err.value) == (
            f"{path}:3: a line longer than {MAX_LINE_BYTES:,} bytes; is it a text file with one sentence per line?"
        )
    exact = b"a" * (MAX_LINE_BYTES - 4) + b"\tone"  # at the limit, and filling the first read block exactly
    path.write_bytes(exact + b"\nzwei\ttwo\n")
    (chunk,) = stream.read_chunks("train", [path], chunk_lines=10)
    assert (chunk.n, chunk.src.split(b"\n")[0]) == (2, exact)


@pytest.mark.parametrize(
    "text,lines",
    [
        (b"", 0),
        (b"\n", 1),
        (b"a", 1),
        (b"a\nb\n", 2),
        (b"a\nb", 2),
        (b"x\n" * 700_000, 700_000),
        (b"x\n" * 700_000 + b"y", 700_001),
    ],
)
def test_count_lines_counts_a_last_line_without_newline(tmp_path, text, lines):
    path = tmp_path / "f.txt"
    path.write_bytes(text)  # 1.4 MB: more than one read block
    assert stream.count_lines(path) == lines
    gz = tmp_path / "f.txt.gz"
    gz.write_bytes(gzip.compress(text))
    assert stream.count_lines(gz) == lines


def test_default_workers_are_the_cores_this_process_may_use():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert stream.default_workers() == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert stream.default_workers() == len(cores)


def test_unequal_parallel_files_are_counted_to_the_end(tmp_path):
    a, b = tmp_path / "x.de", tmp_path / "x.en"
    a.write_text("ein\n" * 1000, encoding="utf-8")
    b.write_text("one\n" * 200_000, encoding="utf-8")  # several of count_rest's blocks past the first chunk
    with pytest.raises(DataError) as err:
        list(stream.read_chunks("train", [a, b], chunk_lines=1000))
    assert str(err.value) == f"{a} has 1000 lines but {b} has 200000; parallel files must match"


# --- sentencepiece ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sp_type", ["bpe", "unigram"])
def test_word_by_word_sentencepiece_ids_equal_whole_text_encoding(real_lines, sp_type):
    lines = [normalize(t, True) for t in real_lines("train", "de")[:3000]]
    codec = SideCodec.train_sentencepiece(lines[:2000], "de", True, sp_type, 800)
    odd = ["ﬁsch und ¨ umlaut …", "tab\x07bell", "", "ein mann", ""]  # NFKC-changing, control, empty, seen words
    for texts in (lines[:1500], lines[1500:] + odd, odd[:1], [""]):  # chunks with and without odd texts
        flat, lens = codec.encode_flat(texts)
        whole = codec.sp.encode(texts)  # sentencepiece on each whole text: the reference
        assert lens.tolist() == [len(x) for x in whole] and flat.tolist() == [i for x in whole for i in x]


def test_sentencepiece_trains_on_a_bounded_sample_reproducibly(tmp_path, pairs):
    train = write_tsv(tmp_path / "train.tsv", pairs)
    valid = write_tsv(tmp_path / "valid.tsv", pairs[:100])
    kw = dict(tokenizer="sentencepiece", sp_vocab_size=400, sp_sample=1000)
    a = prepare_corpus(files_config(tmp_path / "a", train, valid, **kw), **QUIET)
    b = prepare_corpus(files_config(tmp_path / "b", train, valid, **kw), **QUIET)
    assert folder_bytes(a) == folder_bytes(b)  # the sample is seeded
    full = prepare_corpus(files_config(tmp_path / "c", train, valid, **{**kw, "sp_sample": 100_000}), **QUIET)
    assert (a / "vocab.de.json").read_bytes() != (full / "vocab.de.json").read_bytes()  # 1000 of 3000 lines


# --- bad input: one line, nothing left behind -------------------------------------------------------------------


def test_empty_or_useless_training_and_validation_data_is_refused(tmp_path, pairs):
    good = write_tsv(tmp_path / "good.tsv", pairs[:30])
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    long_only = write_tsv(tmp_path / "long.tsv", [(" ".join(["Hund"] * 300), "A dog.")] * 3)
    cases = [
        (tmp_path / "empty.tsv", good, "empty.tsv: empty"),
        (good, tmp_path / "empty.tsv", "empty.tsv: empty"),
        (long_only, good, "long.tsv: no usable training pairs: all 3 were skipped"),
    ]
    for train, valid, msg in cases:
        cfg = files_config(tmp_path / "new" / "data", train, valid)
        with pytest.raises(DataError, match=msg):
            prepare_corpus(cfg, **QUIET)
        assert not (tmp_path / "new").exists()  # the folders this prepare created are gone again
    words = files_config(tmp_path / "d", good, good, min_freq=1000)
    with pytest.raises(DataError, match="vocabulary would hold only the special tokens"):
        prepare_corpus(words, **QUIET)


def test_train_refuses_a_prepared_corpus_without_pairs_or_vocabulary(tmp_path):
    cfg = load_config(S.make_corpus(tmp_path, 60, 10))
    folder = corpus_dir(cfg.data)
    _, train, valid, _ = load_corpus(cfg, 8)
    assert len(train) == 60 and len(valid) == 10
    for split in ("valid", "train"):
        for side in ("src", "tgt"):
            np.save(folder / f"{split}.{side}.npy", np.zeros(0, np.int16))
            np.save(folder / f"{split}.{side}_off.npy", np.zeros(1, np.int64))
        with pytest.raises(DataError, match=f"no {split} pairs"):
            load_corpus(cfg, 8)
    state = torch.load(folder / "codecs.pt", weights_only=True)
    state["src"]["itos"] = list(SPECIALS)
    torch.save(state, folder / "codecs.pt")
    with pytest.raises(DataError, match="src vocabulary holds only the special tokens"):
        load_corpus(cfg, 8)


def test_a_damaged_gzip_file_names_the_file(tmp_path, multi30k_dir, pairs, monkeypatch, capsys):
    data = bytearray((multi30k_dir / "train.de.gz").read_bytes())
    at = int(len(data) * 0.7)
    data[at : at + 4] = b"\xff" * 4  # deflate-corrupt: zlib's "Error -3 ... invalid block type"
    (tmp_path / "train.de.gz").write_bytes(bytes(data))
    (tmp_path / "train.en.gz").write_bytes((multi30k_dir / "train.en.gz").read_bytes())
    write_tsv(tmp_path / "valid.tsv", pairs[:10])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{corpus: files, root: {tmp_path / 'data'}, train: {tmp_path / 'train'}, "
        f"valid: {tmp_path / 'valid.tsv'}}}\n",
        encoding="utf-8",
    )
    code, _, err = run_main(monkeypatch, capsys, "prepare", "--config", str(cfg), "--workers", "1")
    last = err.strip().splitlines()[-1]  # (the lines before are the progress log)
    assert code == 2 and last.startswith("error: ") and "Traceback" not in err, err
    assert f"{tmp_path / 'train.de.gz'}: cannot read after line " in last and "Error -3" in last and "damaged" in last
    assert not (tmp_path / "data").exists()


def test_a_corrupt_manifest_names_the_file(tmp_path, pairs):
    good = write_tsv(tmp_path / "good.tsv", pairs[:30])
    cfg = files_config(tmp_path / "d", good, good)
    folder = prepare_corpus(cfg, **QUIET)
    (folder / "manifest.json").write_text('{"fingerprint": [[[', encoding="utf-8")
    with pytest.raises(DataError, match=f"{folder / 'manifest.json'}: not a valid manifest.*mt prepare --force"):
        load_manifest(folder)
    assert not is_prepared(cfg)
    assert prepare_corpus(cfg, **QUIET) == folder and json.loads((folder / "manifest.json").read_text())


def test_a_data_root_with_a_file_in_the_way_is_one_line(tmp_path, pairs):
    good = write_tsv(tmp_path / "good.tsv", pairs[:30])
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputError, match="a file is in the way"):
        prepare_corpus(files_config(tmp_path / "blocker" / "data", good, good), **QUIET)


# --- training from disk: the streamed path ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def both_paths(prepared):
    """Multi30k's training and validation splits, each on the resident and on the streamed path."""
    folder = prepared.folder
    return {name: (Split(folder / name, 8), Split(folder / name, 8, resident=False)) for name in ("train", "valid")}


def test_the_path_is_chosen_by_the_memory_budget(prepared):
    small = Split(prepared.folder / "valid", 8)
    assert small.resident and "device-resident" in small.description
    assert not Split(prepared.folder / "valid", 8, resident_max_mb=0).resident
    cfg = load_config(TINY, [f"data.root={prepared.root}", "data.resident_max_mb=0"])
    _, train, valid, _ = load_corpus(cfg, 8)
    assert not train.resident and not valid.resident and "streamed" in train.description
    assert not hasattr(train, "src")  # no padded matrix of the split exists on the streamed path


@pytest.mark.parametrize("name", ["train", "valid"])
@pytest.mark.parametrize(
    "shuffle,fill,sizes,start",
    [(True, True, (None, 2000), 0), (True, False, (48, None), 7), (False, False, (None, 700), 3)],
)
def test_streamed_batches_are_the_resident_batches(both_paths, name, shuffle, fill, sizes, start):
    resident, streamed = both_paths[name]
    plan = batch_plan(resident, *sizes, shuffle=shuffle, seed=5, epoch=2, fill=fill)
    key = lambda p: [(i.tolist(), L) for i, L in p]  # noqa: E731
    assert key(plan) == key(batch_plan(streamed, *sizes, shuffle=shuffle, seed=5, epoch=2, fill=fill))
    plan = shard(plan, 1, 3)  # a DDP rank's share, from a mid-epoch position
    got = list(iterate(streamed, plan, torch.device("cpu"), start))
    want = list(iterate(resident, plan, torch.device("cpu"), start))
    assert len(got) == len(want) == len(plan) - start > 0
    for a, b in zip(got, want):
        for t in ("src", "tgt_in", "tgt_out"):
            x, y = getattr(a, t), getattr(b, t)
            assert x.dtype == y.dtype and x.is_contiguous() and torch.equal(x, y), t
        assert (a.n_src, a.n_tgt) == (b.n_src, b.n_tgt)
    rows = torch.arange(len(resident))
    assert torch.equal(streamed.source_rows(rows), resident.source_rows(rows))


def test_a_plan_slices_adds_and_repeats_like_a_list_of_batches(both_paths):
    resident, _ = both_paths["train"]
    plan = batch_plan(resident, 48, None, shuffle=True, seed=3, epoch=1)
    other = batch_plan(resident, 48, None, shuffle=True, seed=4, epoch=1)

    def as_list(p):
        return [(idx.tolist(), length) for idx, length in p]

    batches = as_list(plan)
    assert as_list(plan[2:9:3]) == batches[2:9:3] and as_list(plan.select([4, 0, 4])) == [batches[i] for i in (4, 0, 4)]
    joined = plan[:3] + plan[5:]  # two parts of one plan: a plan over the same rows
    assert as_list(joined) == batches[:3] + batches[5:] and isinstance(joined, type(plan))
    assert as_list(plan + other) == batches + as_list(other)  # plans over other rows: a list
    assert as_list(plan * 3) == batches * 3 and len(plan * 0) == 0
    assert as_list(plan + list(plan[:2])) == batches + batches[:2]  # with a plain list: a list
    assert plan.indices().tolist() == [i for idx, _ in batches for i in idx]


@pytest.mark.parametrize("name", ["train", "valid"])
def test_trimmed_batches_are_the_full_ones_without_filler_rows_and_padding_columns(both_paths, name):
    from mt_cli.data.vocab import PAD

    resident, streamed = both_paths[name]
    plan = batch_plan(resident, 48, None, shuffle=True, seed=3, epoch=1, fill=True)
    cpu = torch.device("cpu")
    full = list(iterate(resident, plan, cpu))
    assert any((b.tgt_out == PAD).all(1).any() for b in full)  # the plan has filler rows (no target) to drop
    for path in (resident, streamed):
        for whole, cut in zip(full, iterate(path, plan, cpu, trim=True), strict=True):
            rows = ~(whole.tgt_out == PAD).all(1)
            # the last column holding a real token; tgt_in's width is tgt_out's (a longer tgt_in only feeds <eos>
            # to positions that the loss does not read and that, causal, no earlier position sees)
            width = {k: int((getattr(whole, k)[rows] != PAD).any(0).nonzero().max()) + 1 for k in ("src", "tgt_out")}
            for t in ("src", "tgt_in", "tgt_out"):
                want = getattr(whole, t)[rows][:, : width["src" if t == "src" else "tgt_out"]]
                assert torch.equal(getattr(cut, t), want), t
            assert (cut.n_src, cut.n_tgt) == (whole.n_src, whole.n_tgt)


def test_an_abandoned_streamed_epoch_stops_its_thread(both_paths):
    import threading

    _, streamed = both_paths["train"]
    batches = iterate(streamed, batch_plan(streamed, None, 500, shuffle=True), torch.device("cpu"))
    next(batches)
    batches.close()  # what a max_steps stop or a signal does to the epoch's generator
    assert not [t for t in threading.enumerate() if t.name == "batches-train"]


def test_training_on_the_streamed_path_equals_the_resident_path_and_resumes_exactly(tmp_path):
    """Bit-identical weights whichever path the batches come from, and across a max_steps stop and resume."""
    from mt_cli.checkpoint import load_checkpoint
    from mt_cli.training import train

    corpus = S.make_corpus(tmp_path / "corpus", 120, 20)
    sets = ["train.epochs=2", "train.val_bleu=false", "decode.beam_size=1"]

    def run(folder: str, *more: str, resume: bool = False):
        cfg = load_config(corpus, sets + list(more))
        train(
            cfg,
            device="cpu",
            resume=resume,
            saved_root=str(tmp_path / folder / "saved"),
            result_root=str(tmp_path / folder / "result"),
            log=lambda *_: None,
        )
        return load_checkpoint(tmp_path / folder / "saved" / S.RUN / "last.pt")

    resident = run("resident")
    streamed = run("streamed", "data.resident_max_mb=0")
    S.assert_same_state(resident["model"], streamed["model"], "model")
    run("stopped", "data.resident_max_mb=0", "train.max_steps=15")  # mid-epoch 2 (11 batches an epoch)
    resumed = run("stopped", "data.resident_max_mb=0", "train.max_steps=1000", resume=True)
    S.assert_same_state(resumed["model"], streamed["model"], "model after resume")
