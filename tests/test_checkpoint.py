"""Safe loading: checkpoints are read with torch.load(weights_only=True); a file that would run code is
refused before any of it runs, and damaged or foreign files give one clear CheckpointError, also through
the CLI (exit 2, one line)."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_support as S  # noqa: E402

from mt_cli.checkpoint import CheckpointError, load_checkpoint, restore, save_checkpoint  # noqa: E402
from mt_cli.config import Config, ModelConfig  # noqa: E402
from mt_cli.data.tokenize import SideCodec  # noqa: E402
from mt_cli.data.vocab import PAD, Vocab  # noqa: E402
from mt_cli.model import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def tiny(tmp_path):
    """A real mt_cli checkpoint with a training state (weights, optimizer, RNG), written by save_checkpoint."""
    from mt_cli.training.rng import rng_state

    cfg = Config(name="ck", model=ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, d_ff=32))
    codecs = {
        side: SideCodec("spacy", lang, True, Vocab(["ein", "hund", "a", "dog"]))
        for side, lang in (("src", "de"), ("tgt", "en"))
    }
    torch.manual_seed(0)
    model = build_model(cfg.model, 8, 8, PAD)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randint(4, 8, (2, 5)), torch.randint(4, 8, (2, 5))).sum().backward()
    opt.step()
    random.seed(1)
    ts = {
        "optimizer": opt.state_dict(),
        "ranks": [{"rng": rng_state(torch.device("cpu")), "acc": torch.zeros(5)}],
        "progress": {"epoch": 2, "position": 7, "best": 3.5, "bad_epochs": 1},
    }
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(
        path, model=model, cfg=cfg, codecs=codecs, epoch=2, step=30, metrics={"val_loss": 3.5}, train_state=ts
    )
    return path, model, ts


def test_a_real_checkpoint_round_trips_through_weights_only_loading(tiny):
    path, model, ts = tiny
    ck = load_checkpoint(path)
    S.assert_same_state(ck["model"], model.state_dict(), "model")
    S.assert_same_state(ck["train_state"]["optimizer"], ts["optimizer"], "optimizer")
    S.assert_same_state(ck["train_state"]["ranks"], ts["ranks"], "rng")
    restored, cfg, codecs = restore(ck, path)
    S.assert_same_state(restored.state_dict(), model.state_dict(), "restored")
    # against the vocabulary the fixture built, written out here (not the restored object against itself)
    want = ["<unk>", "<pad>", "<bos>", "<eos>", "ein", "hund", "a", "dog"]
    assert [codecs[side].vocab.itos for side in ("src", "tgt")] == [want, want] and cfg.name == "ck"
    assert [(codecs[s].lang, codecs[s].lowercase, codecs[s].kind) for s in ("src", "tgt")] == [
        ("de", True, "spacy"),
        ("en", True, "spacy"),
    ]


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, fmt):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    payload = {"format": "mt_cli-checkpoint-1", "model": {}, "x": _RunsCode(marker)}
    if fmt == "torch-zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    # the payload is real: plain unpickling would run it
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"refused to load") as e:
        load_checkpoint(evil)
    if fmt == "torch-zip":
        assert "posix.system" in str(e.value) or "os.system" in str(e.value)
    assert not marker.exists()


def test_damaged_and_foreign_files_give_clear_errors(tiny, tmp_path):
    path = tiny[0]
    data = path.read_bytes()
    cases = {
        "missing.pt": (None, "checkpoint not found"),
        "empty.pt": (b"", "empty file"),
        "truncated.pt": (data[: len(data) // 2], "truncated"),
        "text.pt": (b"epoch 3, val loss 4.2\n", "not a file written by torch.save"),
        "noise.pt": (bytes(random.Random(0).randrange(256) for _ in range(4000)), "not a checkpoint"),
        "zip-noise.pt": (b"PK\x03\x04" + bytes(random.Random(0).randrange(256) for _ in range(4000)), "damaged"),
    }
    for name, (content, words) in cases.items():
        p = tmp_path / name
        if content is not None:
            p.write_bytes(content)
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(p)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)  # some other program's checkpoint
    with pytest.raises(CheckpointError, match="not an mt_cli checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def _one_line_error(r: subprocess.CompletedProcess, rc: int, words: str) -> None:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == rc, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr


def test_cli_refuses_unsafe_and_damaged_checkpoints_with_one_line(tiny, tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mt_cli-checkpoint-1", "x": _RunsCode(marker)}, evil)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny[0].read_bytes()[:5000])
    weights_only = tmp_path / "best" / "best.pt"
    ck = load_checkpoint(tiny[0])
    weights_only.parent.mkdir()
    torch.save({k: v for k, v in ck.items() if k != "train_state"}, weights_only)

    r = S.mt("evaluate", "--checkpoint", evil, "--device", "cpu", cwd=tmp_path)
    _one_line_error(r, 2, "refused to load")
    r = S.mt("translate", "--checkpoint", truncated, "--device", "cpu", "--input", os.devnull, cwd=tmp_path)
    _one_line_error(r, 2, "truncated")
    # resuming: checked before the corpus is even opened
    r = S.mt("train", "--config", REPO / "configs" / "tiny.yaml", "--resume-from", evil, cwd=tmp_path)
    _one_line_error(r, 2, "refused to load")
    r = S.mt("train", "--config", REPO / "configs" / "tiny.yaml", "--resume-from", weights_only, cwd=tmp_path)
    _one_line_error(r, 2, "holds weights only")
    assert not marker.exists()


def test_plain_resume_picks_the_newest_run_of_the_config_and_explains_when_there_is_none(tmp_path):
    from mt_cli.training.resume import find_last

    with pytest.raises(CheckpointError, match="no run named 'tiny' to resume"):
        find_last(tmp_path, "tiny")
    for i, name in enumerate(["tiny", "tiny-2", "tiny-10", "tinyx"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "last.pt").write_bytes(b"x")
        os.utime(tmp_path / name / "last.pt", ns=(10**18 + i, 10**18 + i * (-1 if name == "tiny-10" else 1)))
    assert find_last(tmp_path, "tiny") == tmp_path / "tiny-2" / "last.pt"


def test_resume_refuses_a_different_config_but_allows_more_epochs(tiny, tmp_path):
    from mt_cli.training.resume import config_changes

    ck = load_checkpoint(tiny[0])
    new = Config(name="other", model=ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, d_ff=32))
    new.train.epochs = 99
    new.train.save_every = 10
    allowed, refused = config_changes(ck["config"], new.to_dict())
    assert allowed == ["name", "train.epochs", "train.save_every"] and refused == []
    new.model.d_ff = 64
    new.train.lr = 1.0
    assert config_changes(ck["config"], new.to_dict())[1] == ["model.d_ff", "train.lr"]


def test_a_refused_resume_names_the_config_to_use(tiny, tmp_path):
    from mt_cli.training.resume import check_resume

    ck = load_checkpoint(tiny[0])
    cfg = Config(name="other", model=ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, d_ff=64))
    with pytest.raises(ValueError, match=r"model.d_ff.* differ\); resume it with the config it was started with$"):
        check_resume(ck, cfg, Path(tiny[0]), tmp_path / "nowhere", print)
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match=rf"resume it with --config {tmp_path / 'config.yaml'}$"):
        check_resume(ck, cfg, Path(tiny[0]), tmp_path, print)


def test_plain_resume_ignores_runs_of_another_experiment_with_a_longer_name(tiny, tmp_path):
    from mt_cli.training.resume import find_last

    ck = load_checkpoint(tiny[0])
    for i, (folder, name) in enumerate((("rel", "rel"), ("rel-2020", "rel-2020"))):
        (tmp_path / folder).mkdir()
        torch.save({**ck, "config": {**ck["config"], "name": name}}, tmp_path / folder / "last.pt")
        os.utime(tmp_path / folder / "last.pt", ns=(10**18 + i, 10**18 + i))  # rel-2020 is the newest
    assert find_last(tmp_path, "rel") == tmp_path / "rel" / "last.pt"
    assert find_last(tmp_path, "rel-2020") == tmp_path / "rel-2020" / "last.pt"
