"""The background writer: jobs run in order off the calling thread, at most max_pending wait, and a write
error (a full disk) reaches the training thread as the usual one-line OutputError; snapshots are copies."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_support as S  # noqa: E402

from mt_cli.atomic import OutputError  # noqa: E402
from mt_cli.writer import Writer, snapshot  # noqa: E402


def test_jobs_run_in_order_off_the_calling_thread_and_flush_waits():
    done, threads, gate = [], set(), threading.Event()

    def job(i):
        gate.wait(5)
        threads.add(threading.current_thread().name)
        done.append(i)

    with Writer() as w:
        w.submit(lambda: job(1), lambda: job(2))
        w.submit(lambda: job(3))
        assert done == []  # submit did not wait for the writes
        gate.set()
        w.flush()
        assert done == [1, 2, 3] and threads == {"mt-writer"}


def test_submit_blocks_while_max_pending_submissions_wait():
    gate, w = threading.Event(), Writer(max_pending=1)
    w.submit(lambda: gate.wait(5))  # running
    w.submit(lambda: None)  # waiting
    third = threading.Thread(target=w.submit, args=(lambda: None,))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # blocked: the queue is full
    gate.set()
    third.join(5)
    assert not third.is_alive()
    w.close()


def test_an_error_skips_later_jobs_and_is_raised_at_the_next_submit_and_flush():
    ran = []

    def full():
        raise OutputError(28, "cannot write x/last.pt: the disk is full")

    w = Writer()
    w.submit(full, lambda: ran.append("same batch"))
    w.submit(lambda: ran.append("later batch"))
    with pytest.raises(OutputError, match="disk is full"):
        w.flush()
    with pytest.raises(OutputError, match="disk is full"):
        w.submit(lambda: ran.append("after the error"))
    with pytest.raises(OutputError, match="disk is full"):
        w.close()
    assert ran == []


def test_snapshot_copies_cpu_tensors_and_keeps_tied_ones_shared():
    w = torch.zeros(3)
    state = {"emb": w, "out": w.detach(), "opt": {"state": {0: {"exp_avg": torch.ones(2)}}, "groups": [(0.9, 0.98)]}}
    snap = snapshot(state)
    w.add_(1)  # the next optimizer step, in place
    state["opt"]["state"][0]["exp_avg"].add_(1)
    assert torch.equal(snap["emb"], torch.zeros(3)) and torch.equal(snap["opt"]["state"][0]["exp_avg"], torch.ones(2))
    assert snap["emb"] is snap["out"]  # tied weights: stored once by torch.save
    assert snap["opt"]["groups"] == [(0.9, 0.98)]


def test_a_full_disk_during_training_stops_it_with_the_one_line_error(tmp_path, full_disk):
    """A real ENOSPC in the writer thread (checkpoints on a small full file system) reaches train() as the
    usual OutputError; the failed run keeps nothing to continue from, so its folders go too."""
    from mt_cli.config import load_config
    from mt_cli.training import train

    cfg = load_config(S.make_corpus(tmp_path / "corpus"), ["train.save_every=4", "train.val_bleu=false"])
    full_disk.fill()
    saved = full_disk.folder / "saved"
    with pytest.raises(OutputError, match=r"cannot write \S+last.pt: the disk is full"):
        train(cfg, device="cpu", saved_root=str(saved), result_root=str(tmp_path / "result"), log=lambda *_: None)
    assert not (saved / S.RUN / "last.pt").exists() and not S.stray_temps(full_disk.folder)
