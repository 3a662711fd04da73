"""torchrun with 2 processes on the CPU (gloo): DistributedDataParallel training on disjoint shards of each
epoch's batches, identical weights on every rank, one set of files written by rank 0, no hang at the end,
and a run stopped by SIGTERM (sent to torchrun's whole process group, as a scheduler or Ctrl-C does)
resumes to exactly the result of the uninterrupted run."""

from __future__ import annotations

import math
import re
import shlex
import signal
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_support as S  # noqa: E402

from mt_cli.checkpoint import load_checkpoint  # noqa: E402
from mt_cli.config import load_config  # noqa: E402

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

SETS = ["--set", "train.save_every=3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return S.make_corpus(tmp_path_factory.mktemp("corpus"))


def _args(corpus: Path) -> list:
    return ["train", "--config", corpus, "--device", "cpu", *SETS]


@pytest.fixture(scope="module")
def ddp_run(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp")
    p = S.popen(S.torchrun_cmd(2, *_args(corpus)), cwd=run, group=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-4000:]
    return run, out, err


def test_two_processes_train_on_disjoint_shards_and_stay_identical(ddp_run, corpus):
    from mt_cli.data.batching import Split, batch_plan
    from mt_cli.data.prepare import corpus_dir
    from mt_cli.distributed import weights_sha256

    run, out, err = ddp_run
    # one set of files, written by rank 0 only; one copy of the logs
    assert sorted(p.name for p in run.iterdir()) == ["result", "saved"]
    assert [p.name for p in (run / "saved").iterdir()] == [S.RUN] == [p.name for p in (run / "result").iterdir()]
    assert err.count("run rel: 0.") == 1 and "x 2 processes" in err
    assert err.count("epoch   1  train") == 1 and out.count("checkpoints in saved/rel") == 1
    recs = S.metrics(run / "result" / S.RUN)
    assert [r["epoch"] for r in recs] == [1, 2] and all(r["processes"] == 2 for r in recs)
    # disjoint shards: each rank ran half of the epoch's batches (the sum over ranks is reported)
    cfg = load_config(corpus)
    n = len(
        batch_plan(
            Split(corpus_dir(cfg.data) / "train.pt", cfg.train.bucket_width),
            None,
            cfg.train.max_tokens,
            shuffle=True,
            seed=cfg.train.seed,
            epoch=1,
        )
    )
    assert recs[0]["step"] == math.ceil(n / 2) and recs[0]["steps"] == 2 * math.ceil(n / 2)
    # the ranks compared their weights' hashes after each epoch (training stops if they differ);
    # the hash they agreed on is that of the weights rank 0 saved
    last = load_checkpoint(run / "saved" / S.RUN / "last.pt")
    assert recs[-1]["weights_sha256"] == weights_sha256(last["model"])
    assert len(last["train_state"]["ranks"]) == 2  # each rank's RNG states and loss sums, for resuming
    # gradients were averaged into a model that learns
    assert recs[1]["train_loss"] < recs[0]["train_loss"] and recs[1]["val_loss"] < recs[0]["val_loss"]
    assert (run / "result" / S.RUN / "summary.json").is_file()  # rank 0's final test ran; nobody hung


@pytest.mark.parametrize("batches", ["resident", "streamed"])
def test_sigterm_to_torchrun_then_resume_equals_the_uninterrupted_run(ddp_run, corpus, tmp_path, batches):
    """Also with batches streamed from the memory-mapped arrays (data.resident_max_mb=0): the same result as
    the uninterrupted run on device-resident matrices."""
    run = tmp_path
    last = run / "saved" / S.RUN / "last.pt"
    extra = ["--set", "data.resident_max_mb=0"] if batches == "streamed" else []
    p = S.popen(S.torchrun_cmd(2, *_args(corpus), *extra), cwd=run, group=True)
    ck = S.pause_at_checkpoint(p, last, S.mid_epoch())
    S.signal_run(p, signal.SIGTERM)
    S.signal_run(p, signal.SIGCONT)
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0
    m = re.search(
        r"stopped: SIGTERM received: saved (\S+) at epoch (\d+), step (\d+); continue with "
        r"`torchrun <the same torchrun options> -m mt_cli ([^`]+)`",
        err,
    )
    assert m, err[-4000:]
    assert err.count("stopped: SIGTERM received") == 1  # every rank stopped; rank 0 alone says so
    stopped = load_checkpoint(run / m[1])
    assert stopped["step"] == int(m[3]) >= ck["step"] and stopped["train_state"]["progress"]["world"] == 2
    assert not (run / "result" / S.RUN / "summary.json").exists()

    p = S.popen(S.torchrun_cmd(2, *shlex.split(m[4])), cwd=run, group=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-4000:]
    assert f"resuming saved/rel/last.pt: epoch {m[2]}, step {m[3]}," in err
    S.assert_same_run(ddp_run[0], run)
