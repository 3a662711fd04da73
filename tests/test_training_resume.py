"""Stopping and resuming a run in this process (mt_cli.training.signals, resume, run): what a SIGTERM saves
and says, resuming it twice, the newest run of a config, and the messages of refused resumptions."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY

from mt_cli.checkpoint import load_checkpoint, save_state
from mt_cli.config import load_config
from mt_cli.training import StopReason, TrainingStopped, train
from mt_cli.training.resume import (
    check_resume,
    config_changes,
    discard_run_folders,
    find_last,
    resume_command,
    run_folders,
    truncate_metrics,
)
from mt_cli.training.rng import rng_state, set_rng_state
from mt_cli.training.signals import Signals


def test_a_first_signal_asks_to_stop_a_second_quits_and_exit_restores_the_handlers():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda *_: calls.append("previous"))
    try:
        logs = []
        with Signals(log=logs.append) as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            assert signals.hit == "SIGTERM" and calls == []
            assert logs == ["SIGTERM received: finishing this step, then saving (send it again to quit at once)"]
            os.kill(os.getpid(), signal.SIGTERM)  # the second one reaches the handler from before
            assert calls == ["previous"]
        with Signals(log=logs.append):  # a second run in the same process installs its handler again
            os.kill(os.getpid(), signal.SIGTERM)
        assert calls == ["previous"] and signal.getsignal(signal.SIGTERM) is not None
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def run(small, tmp_path):
    _, overrides = small
    base = overrides + ["train.save_every=1", "train.val_bleu=false"]
    cfg = load_config(TINY, base + ["train.epochs=2"])
    roots = {"saved_root": str(tmp_path / "saved"), "result_root": str(tmp_path / "result")}
    return cfg, roots, tmp_path, base


def _sigterm_on(start: str, logs):
    def log(line):
        logs.append(line)
        if line.startswith(start):
            os.kill(os.getpid(), signal.SIGTERM)  # the run stops after its next step

    return log


def _sigterm_after_epoch_1(logs):
    return _sigterm_on("epoch   1 ", logs)  # lands during epoch 2's first step


def test_a_stop_signal_saves_last_pt_names_the_resume_command_and_resumes_twice(run):
    cfg, roots, tmp, base = run
    logs = []
    with pytest.raises(TrainingStopped) as stop:
        train(cfg, device="cpu", log=_sigterm_after_epoch_1(logs), **roots)
    saved, result = tmp / "saved" / "tiny", tmp / "result" / "tiny"
    command = (
        f"mt train --config {result / 'config.yaml'} --resume-from {saved / 'last.pt'} --result {tmp / 'result'} "
        f"--device cpu"
    )
    assert str(stop.value).startswith(f"SIGTERM received: saved {saved / 'last.pt'} at epoch 2, step ")
    assert stop.value.reason is StopReason.SIGNAL
    # one process: a second signal quits at once (under torchrun each worker gets every signal twice)
    assert "SIGTERM received: finishing this step, then saving (send it again to quit at once)" in logs
    assert str(stop.value).endswith(f"continue with `{command}`")
    last = load_checkpoint(saved / "last.pt")
    assert last["epoch"] == 2  # saved in the middle of the epoch under way
    logs.clear()
    summary = train(cfg, device="cpu", resume=saved / "last.pt", log=logs.append, **roots)
    progress = last["train_state"]["progress"]
    assert f"resuming {saved / 'last.pt'}: epoch 2, step {progress['step']}, batch {progress['position']}" in logs
    logs.clear()
    train(cfg, device="cpu", resume=True, log=logs.append, **roots)  # ended: only tested again
    assert "the run already reached train.epochs=2; raise it to train longer (now only the final test runs)" in logs
    assert summary["run"] == "tiny" and 0 < summary["train_seconds"] <= summary["total_seconds"]
    more = load_config(TINY, [*base, "train.epochs=3"])  # a longer run: an allowed change
    logs.clear()
    train(more, device="cpu", resume=True, log=logs.append, **roots)
    assert not [line for line in logs if line.startswith("warning")], logs  # the same process count as recorded
    assert any(line.startswith("resuming with a changed train.epochs: 2 -> 3") for line in logs)
    # resumed once more and stopped before it trains: the ended run's summary.json no longer describes it
    assert (result / "summary.json").is_file()
    with pytest.raises(TrainingStopped, match="^SIGTERM received before training started"):
        train(load_config(TINY, [*base, "train.epochs=4"]), device="cpu", resume=True,
              log=_sigterm_on(f"resuming {saved / 'last.pt'}: ", []), **roots)  # fmt: skip
    assert not (result / "summary.json").exists()


def test_a_run_resumed_into_another_result_root_writes_its_files_there(run):
    _, roots, tmp, base = run
    train(load_config(TINY, [*base, "train.epochs=1"]), device="cpu", log=lambda *_: None, **roots)
    other, last = tmp / "other", tmp / "saved" / "tiny" / "last.pt"
    more = load_config(TINY, [*base, "train.epochs=2"])
    summary = train(more, device="cpu", resume=last, saved_root=roots["saved_root"], result_root=str(other), log=print)
    assert summary["result"] == str(other / "tiny")
    assert [json.loads(line)["epoch"] for line in (other / "tiny" / "metrics.jsonl").read_text().splitlines()] == [2]


def test_a_refused_change_says_which_config_to_resume_with(run):
    _, roots, tmp, base = run
    train(load_config(TINY, [*base, "train.epochs=1"]), device="cpu", log=lambda *_: None, **roots)
    other = load_config(TINY, [*base, "train.epochs=1", "model.d_ff=48"])
    recorded, last = tmp / "result" / "tiny" / "config.yaml", tmp / "saved" / "tiny" / "last.pt"
    refused = f"{last}: the run was started with another config (model.d_ff differ); resume it with --config {recorded}"
    with pytest.raises(ValueError, match=f"^{re.escape(refused)}$"):
        train(other, device="cpu", resume=True, log=lambda *_: None, **roots)
    recorded.unlink()
    with pytest.raises(ValueError, match="resume it with the config it was started with$"):
        train(other, device="cpu", resume=True, log=lambda *_: None, **roots)


def test_plain_resume_takes_the_newest_run_of_this_config_not_a_longer_name(run):
    _, roots, tmp, base = run
    root = tmp / "saved"
    with pytest.raises(ValueError, match=re.escape(f"{root / 'tiny' / 'last.pt'}: no run named 'tiny' to resume")):
        find_last(root, "tiny")
    train(load_config(TINY, [*base, "train.epochs=1"]), device="cpu", log=lambda *_: None, **roots)
    shutil.copytree(root / "tiny", root / "tiny-2")  # the same config started again
    other = load_checkpoint(root / "tiny" / "last.pt")
    other["config"]["name"] = "tiny-2020"  # an experiment whose name only begins like it
    (root / "tiny-2020").mkdir()
    save_state(root / "tiny-2020" / "last.pt", other)
    newest = os.stat(root / "tiny-2020" / "last.pt").st_mtime_ns
    os.utime(root / "tiny-2" / "last.pt", ns=(newest - 10**9, newest - 10**9))
    os.utime(root / "tiny" / "last.pt", ns=(newest - 2 * 10**9, newest - 2 * 10**9))
    assert find_last(root, "tiny") == root / "tiny-2" / "last.pt"


def test_a_signal_after_the_last_validation_skips_the_final_test(run):
    """max_steps ends the run after epoch 1; SIGTERM comes as its validation ends: saved, and no final test."""
    _, roots, tmp, base = run
    logs = []
    with pytest.raises(TrainingStopped) as stop:
        train(load_config(TINY, base + ["train.epochs=3", "train.max_steps=1"]), device="cpu",
              log=_sigterm_after_epoch_1(logs), **roots)  # fmt: skip
    last = tmp / "saved" / "tiny" / "last.pt"
    assert str(stop.value).startswith(f"SIGTERM received: training is saved in {last}; the final test was skipped")
    assert stop.value.reason is StopReason.SIGNAL and load_checkpoint(last)["step"] == 1
    assert not [line for line in logs if line.startswith("testing ")]


def test_a_refusal_names_four_changed_keys_then_an_ellipsis(small, tmp_path):
    _, overrides = small
    cfg, last = load_config(TINY, overrides), Path("x/last.pt")
    five = ["model.d_ff=48", "model.d_model=48", "model.dec_layers=2", "model.dropout=0.2", "model.enc_layers=2"]
    first_four = "model.d_ff, model.d_model, model.dec_layers, model.dropout"  # sorted
    for changes, tail in ((five, " …"), (five[:4], " differ")):
        started = load_config(TINY, overrides + changes).to_dict()
        with pytest.raises(
            ValueError, match=re.escape(f"{last}: the run was started with another config ({first_four}{tail}")
        ):
            check_resume({"train_state": {}, "config": started}, cfg, last, tmp_path, print)


def test_the_resume_command_of_several_processes_is_a_torchrun_one():
    saved, result = Path("saved/tiny"), Path("result/tiny")
    config = f"train --config {result / 'config.yaml'} --resume-from {saved / 'last.pt'}"
    assert resume_command(saved, result, "result", "auto") == f"mt {config}"
    assert resume_command(saved, result, "out", "cuda", world=2) == (
        f"torchrun <the same torchrun options> -m mt_cli {config} --result out --device cuda"
    )


def test_every_generator_state_is_saved_and_restored():
    """Python's, torch's and numpy's generators draw the same numbers again after a restore."""
    import random

    import numpy as np

    cpu = torch.device("cpu")
    saved = rng_state(cpu)
    drawn = (random.random(), torch.rand(3).tolist(), np.random.rand(3).tolist())
    set_rng_state(saved, cpu)
    assert (random.random(), torch.rand(3).tolist(), np.random.rand(3).tolist()) == drawn


def test_truncating_the_metrics_drops_exactly_the_epochs_to_repeat(tmp_path):
    """Lines of epochs >= the first one to repeat go, others stay (an unreadable line too); the count is
    the number of lines dropped, and a file with nothing to drop is not rewritten."""
    path = tmp_path / "metrics.jsonl"
    assert truncate_metrics(path, 1) == 0 and not path.exists()
    lines = [json.dumps({"epoch": e, "val_loss": 5.0 - e}) for e in (1, 2, 3, 3)] + ["{half a line"]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    before = path.stat().st_mtime_ns
    assert truncate_metrics(path, 4) == 0 and path.stat().st_mtime_ns == before
    assert truncate_metrics(path, 3) == 2
    assert path.read_text(encoding="utf-8") == "\n".join([*lines[:2], lines[4]]) + "\n"


def test_a_run_that_failed_before_saving_leaves_no_folders_even_if_one_was_never_made(tmp_path):
    saved, result = tmp_path / "saved" / "tiny", tmp_path / "result" / "tiny"
    saved.mkdir(parents=True)
    (saved / "epoch_0001.pt.tmp").write_bytes(b"partial")
    discard_run_folders(saved, result)  # result/ was never created: not an error
    assert not saved.exists() and not result.exists()
    saved.mkdir()
    result.mkdir(parents=True)
    (saved / "last.pt").write_bytes(b"a run to continue")
    discard_run_folders(saved, result)
    assert (saved / "last.pt").is_file() and result.is_dir()


def test_a_new_run_takes_the_first_name_free_in_both_roots(small, tmp_path):
    """saved/<name> or result/<name> alone is enough to skip a name: a run never writes into another's folder."""
    cfg, roots = load_config(TINY, small[1]), (str(tmp_path / "saved"), str(tmp_path / "result"))
    assert run_folders(cfg, *roots) == (tmp_path / "saved" / "tiny", tmp_path / "result" / "tiny")
    (tmp_path / "saved" / "tiny").mkdir(parents=True)
    (tmp_path / "result" / "tiny-2").mkdir(parents=True)
    assert run_folders(cfg, *roots) == (tmp_path / "saved" / "tiny-3", tmp_path / "result" / "tiny-3")


def test_an_unreadable_last_pt_of_an_older_run_does_not_stop_plain_resume(run):
    """Its name cannot be read, so it stays a candidate, but the newest run is the one taken."""
    _, roots, tmp, base = run
    train(load_config(TINY, [*base, "train.epochs=1"]), device="cpu", log=lambda *_: None, **roots)
    root = tmp / "saved"
    (root / "tiny-2").mkdir()
    (root / "tiny-2" / "last.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    newest = os.stat(root / "tiny" / "last.pt").st_mtime_ns
    os.utime(root / "tiny-2" / "last.pt", ns=(newest - 10**9, newest - 10**9))
    assert find_last(root, "tiny") == root / "tiny" / "last.pt"


def test_decoding_settings_may_change_on_resume_and_model_settings_may_not(small):
    """`decode.` in RESUMABLE_CHANGES stands for every decode key."""
    old = load_config(TINY, small[1]).to_dict()
    new = load_config(TINY, [*small[1], "decode.beam_size=7", "decode.max_len_b=20", "model.d_ff=48"]).to_dict()
    assert config_changes(old, new) == (["decode.beam_size", "decode.max_len_b"], ["model.d_ff"])


def test_a_two_process_checkpoint_resumed_by_one_process_continues_at_the_same_share_and_warns(run):
    """last.pt of a run of 2 processes (each rank's RNG and loss sums, the position in a rank's half of the
    epoch): one process continues at twice that position, with both ranks' loss sums, and says so."""
    cfg, roots, tmp, _ = run
    with pytest.raises(TrainingStopped):
        train(cfg, device="cpu", log=_sigterm_after_epoch_1([]), **roots)
    last = tmp / "saved" / "tiny" / "last.pt"
    checkpoint = load_checkpoint(last)
    state = checkpoint["train_state"]
    acc = state["ranks"][0]["acc"]
    state["progress"].update(world=2, position=3)
    state["ranks"] = [state["ranks"][0], {**state["ranks"][0], "acc": acc * 2}]
    save_state(last, checkpoint)
    logs = []
    train(cfg, device="cpu", resume=last, log=logs.append, **roots)
    assert f"resuming {last}: epoch 2, step {checkpoint['step']}, batch 6" in logs
    assert (
        "warning: resuming with 1 process(es), the run used 2: the epoch continues from about the same point, but "
        "the result will not be bit-identical to an uninterrupted run"
    ) in logs
