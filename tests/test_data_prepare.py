"""What `mt prepare` says and records for a `files` corpus (mt_cli.data.prepare, fit, write): its log lines, the
size-and-time cache of the input files' checksums, a prepared corpus whose inputs are gone, a damaged codecs
file, and word-level and sentencepiece vocabularies as configured."""

from __future__ import annotations

import os
import re

import pytest
import torch
from conftest import TINY, write_tsv

from mt_cli.config import load_config
from mt_cli.data.prepare import corpus_dir, load_corpus, load_manifest, prepare_corpus, user_file_sums
from mt_cli.data.sources import DataError
from mt_cli.data.tokenize import SideCodec


@pytest.fixture(scope="module")
def files(tmp_path_factory, real_lines):
    """60 real pairs and one repeated (training), 10 for validation, as TSV files."""
    d = tmp_path_factory.mktemp("files")
    de, en = real_lines("train", "de")[:60], real_lines("train", "en")[:60]
    write_tsv(d / "train.tsv", de + de[:1], en + en[:1])
    write_tsv(d / "valid.tsv", de[:10], en[:10])
    return d


def _cfg(d, root, *more: str):
    """configs/tiny.yaml on the TSV files in folder d, prepared under d / root."""
    files = [f"data.train={d / 'train.tsv'}", f"data.valid={d / 'valid.tsv'}"]
    return load_config(TINY, [f"data.root={d / root}", "data.corpus=files", *files, *more])


@pytest.mark.parametrize("joint, workers", [(False, 1), (True, 2)])
def test_prepare_says_what_it_reads_how_and_on_how_many_sentences(files, tmp_path, joint, workers):
    logs = []
    sp = ["data.tokenizer=sentencepiece", "data.sp_vocab_size=100", f"data.joint_vocab={joint}", "data.dedup=true"]
    prepare_corpus(_cfg(files, tmp_path, *sp).data, log=logs.append, workers=workers)
    assert logs[0] == f"reading train ({files / 'train.tsv'}), valid ({files / 'valid.tsv'})"
    assert logs[1] == ("preparing in 2 worker processes" if workers > 1 else "preparing in this process")
    # sentencepiece sees all 61 training lines of each side: both sides in one joint model
    vocab, lines = ("100, joint", 122) if joint else ("100", 61)
    assert logs[2] == f"training sentencepiece bpe models (vocab {vocab}; on {lines} sentences)"
    assert "train: skipped 1 repeating an earlier pair" in logs
    assert [line for line in logs if line.endswith(" pairs")] == ["train: 60 pairs", "valid: 10 pairs"]  # 61 - 1


def test_a_sentencepiece_corpus_without_target_text_is_refused_naming_its_file(tmp_path, real_lines):
    de = real_lines("train", "de")[:20]
    write_tsv(tmp_path / "train.tsv", de, [""] * 20)
    write_tsv(tmp_path / "valid.tsv", de[:5], ["x"] * 5)
    cfg = _cfg(tmp_path, "prepared", "data.tokenizer=sentencepiece", "data.sp_vocab_size=100")
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'train.tsv'))}: no en text in the training data"):
        prepare_corpus(cfg.data, log=lambda *_: None)


def test_an_unchanged_input_file_is_not_hashed_again(files, tmp_path):
    """Same size and time as the manifest recorded: the recorded checksum stands (the file is not read)."""
    import shutil

    shutil.copy2(files / "train.tsv", tmp_path / "train.tsv")
    shutil.copy2(files / "valid.tsv", tmp_path / "valid.tsv")
    cfg = _cfg(tmp_path, "d")
    data = cfg.data
    folder = prepare_corpus(data, log=lambda *_: None)
    man = load_manifest(folder)
    assert (
        set(man["files_stat"]) == set(man["files_sha256"]) == {str(tmp_path / "train.tsv"), str(tmp_path / "valid.tsv")}
    )
    path = tmp_path / "train.tsv"
    stat = path.stat()
    text = path.read_bytes()
    path.write_bytes(text[::-1])  # other bytes, the same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same modification time
    assert user_file_sums(data, man) == man["files_sha256"]
    assert user_file_sums(data)[str(path)] != man["files_sha256"][str(path)]  # without the manifest: read
    load_corpus(cfg, 8)  # the cache trusted: no "changed since mt prepare"


def test_a_corpus_whose_input_files_are_gone_still_loads(files, tmp_path):
    import shutil

    for name in ("train.tsv", "valid.tsv"):
        shutil.copy2(files / name, tmp_path / name)
    cfg = _cfg(tmp_path, "d")
    prepare_corpus(cfg.data, log=lambda *_: None)
    (tmp_path / "train.tsv").unlink()  # e.g. a GPU machine that got data/ only
    codecs, train, _, _ = load_corpus(cfg, 8)
    assert len(train) == 61
    (tmp_path / "train.tsv").write_text("other\ttext\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train.tsv'}: changed since `mt prepare`")):
        load_corpus(cfg, 8)


def test_a_damaged_codecs_file_says_how_to_fix_it(files, tmp_path):
    cfg = _cfg(files, tmp_path)
    folder = prepare_corpus(cfg.data, log=lambda *_: None)
    (folder / "codecs.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"codecs\.pt.*run `mt prepare --force`"):
        load_corpus(cfg, 8)
    assert corpus_dir(cfg.data) == folder


def test_a_word_vocabulary_is_cut_to_max_size(files, tmp_path):
    def sizes(*more):
        folder = prepare_corpus(_cfg(files, tmp_path / more[-1], "data.min_freq=1", *more).data, log=lambda *_: None)
        state = torch.load(folder / "codecs.pt", weights_only=True)
        return [len(SideCodec.from_state(state[side]).vocab) for side in ("src", "tgt")]

    assert min(sizes("data.max_size=100000")) > 100  # the 61 pairs have more words than that
    assert sizes("data.max_size=30") == [30, 30]  # the specials included


def test_sentencepiece_failures_are_one_line_without_the_cpp_location(real_lines):
    with pytest.raises(DataError) as e:
        SideCodec.train_sentencepiece(real_lines("train", "de")[:60], "de", False, "bpe", 10)
    msg = str(e.value)
    assert msg.startswith("sentencepiece (de, data.sp_vocab_size=10): Vocabulary size is smaller than required_chars")
    assert "\n" not in msg and "INTERNAL" not in msg and ".cc" not in msg


def test_the_manifest_counts_the_unknown_target_words(files, tmp_path):
    import numpy as np

    from mt_cli.data.arrays import array_path, load_array
    from mt_cli.data.vocab import UNK

    folder = prepare_corpus(_cfg(files, tmp_path).data, log=lambda *_: None)  # min_freq 2: rare words are <unk>
    info = load_manifest(folder)["splits"]
    for split in ("train", "valid"):
        count = int(np.count_nonzero(load_array(array_path(folder, split, "tgt")) == UNK))
        assert info[split]["tgt_unk"] == count > 0, split
