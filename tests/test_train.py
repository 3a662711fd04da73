"""Never lose a run: resume after SIGKILL / Ctrl-C / SIGTERM is bit-identical to an uninterrupted run;
non-finite losses and CUDA OOM are skipped, counted, and stop training with a checkpoint when they repeat.

The runs use a 240-pair slice of the real Multi30k (22 batches per epoch) and a 0.13M-parameter model,
in subprocesses with one thread each: on the CPU every step is deterministic, so "resumed == uninterrupted"
is checked bit for bit (weights, optimizer state, RNG states, metrics, hypotheses), no tolerance."""

from __future__ import annotations

import json
import math
import re
import shlex
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_support as S  # noqa: E402

from mt_cli.checkpoint import load_checkpoint  # noqa: E402
from mt_cli.config import load_config  # noqa: E402
from mt_cli.training import StopReason, TrainingStopped, train  # noqa: E402

SETS = ["--set", "train.epochs=3", "--set", "train.save_every=4", "--set", "train.keep_last=2"]


def train_args(cfg: Path) -> list:
    return ["train", "--config", cfg, "--device", "cpu", *SETS]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return S.make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce exactly."""
    run = tmp_path_factory.mktemp("reference")
    r = S.mt(*train_args(corpus), cwd=run)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def _stop_paused(p, sig) -> tuple[str, str]:
    """Deliver `sig` to a SIGSTOPped process, let it run, and collect its output."""
    p.send_signal(sig)
    if sig != signal.SIGKILL:
        p.send_signal(signal.SIGCONT)
    try:
        return p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()


def test_uninterrupted_run_keeps_best_last_and_last_n(reference):
    saved = reference / "saved" / S.RUN
    # train.keep_last=2: the epoch snapshots of the last 2 epochs, besides best.pt and last.pt
    assert sorted(p.name for p in saved.iterdir()) == ["best.pt", "epoch_0002.pt", "epoch_0003.pt", "last.pt"]
    assert not S.stray_temps(reference)
    recs = S.metrics(reference / "result" / S.RUN)
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert recs[-1]["train_loss"] < recs[0]["train_loss"] and recs[-1]["val_loss"] < recs[0]["val_loss"]
    prog = load_checkpoint(saved / "last.pt")["train_state"]["progress"]
    assert (prog["epoch"], prog["position"], prog["step"]) == (4, 0, recs[-1]["step"])
    # written through a temp file, yet with the usual permissions (mkstemp alone would make them 0600)
    assert (saved / "last.pt").stat().st_mode & 0o044 == 0o044


def _paste(err: str, sig: str) -> list[str]:
    """The one-line stop message must name the signal and a resume command; return that command's args."""
    assert "Traceback" not in err, err[-3000:]
    m = re.search(rf"stopped: {sig} received: saved (\S+) at epoch (\d+), step (\d+); continue with `mt ([^`]+)`", err)
    assert m, err[-2000:]
    ck = load_checkpoint(m[1])  # relative to the run folder: the test runs from there, see chdir below
    assert (ck["train_state"]["progress"]["epoch"], ck["step"]) == (int(m[2]), int(m[3]))
    return shlex.split(m[4]), ck


def test_sigterm_then_ctrl_c_then_sigkill_then_resume_is_bit_identical(corpus, reference, tmp_path, monkeypatch):
    """One run stopped three ways, each at a mid-epoch point, and resumed each time: its final weights,
    optimizer state, RNG states, metrics and test hypotheses equal the uninterrupted run's, bit for bit."""
    monkeypatch.chdir(tmp_path)
    last = tmp_path / "saved" / S.RUN / "last.pt"
    result = tmp_path / "result" / S.RUN

    # 1. SIGTERM (a scheduler's preemption): saves at the next step, exits 1 with the resume command
    p = S.popen(S.mt_cmd(*train_args(corpus)), cwd=tmp_path)
    ck1 = S.pause_at_checkpoint(p, last, S.mid_epoch())
    out, err = _stop_paused(p, signal.SIGTERM)
    assert p.returncode == 1
    cmd, stop1 = _paste(err, "SIGTERM")
    assert cmd[cmd.index("--resume-from") + 1] == "saved/rel/last.pt"
    assert not (result / "summary.json").exists()

    # 2. Ctrl-C in the run continued with the printed command, as a user would paste it
    p = S.popen(S.mt_cmd(*cmd), cwd=tmp_path)
    ck2 = S.pause_at_checkpoint(p, last, lambda ck: ck["step"] > ck1["step"] and S.mid_epoch()(ck))
    out, err = _stop_paused(p, signal.SIGINT)
    assert p.returncode == 1
    assert f"resuming saved/rel/last.pt: epoch {stop1['epoch']}, step {stop1['step']}," in err
    cmd, _ = _paste(err, "SIGINT")

    # 3. SIGKILL (power loss, OOM killer): nothing runs at exit; only the last save survives
    p = S.popen(S.mt_cmd(*cmd), cwd=tmp_path)
    ck3 = S.pause_at_checkpoint(p, last, lambda ck: ck["step"] > ck2["step"] and S.mid_epoch(min_epoch=2)(ck))
    _stop_paused(p, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    prog = ck3["train_state"]["progress"]
    assert 0 < prog["position"] < 22 and prog["epoch"] >= 2, prog
    # The worst moments for a kill: after an epoch's metrics line was written but before its last.pt,
    # and in the middle of writing a checkpoint (a stray temp file). Neither may change the outcome.
    recs = S.metrics(result)
    with open(result / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(recs[-1], epoch=prog["epoch"], train_loss=123.0)) + "\n")
    (last.parent / ".last.pt.crashed.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")

    # 4. plain --resume finds saved/<name>/last.pt from the config's name, and finishes the run
    r = S.mt("train", "--config", result / "config.yaml", "--resume", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"resuming (\S+): epoch (\d+), step (\d+), batch (\d+)", r.stderr)
    assert m and Path(m[1]) == Path("saved") / S.RUN / "last.pt"
    assert (int(m[2]), int(m[3]), int(m[4])) == (prog["epoch"], ck3["step"], prog["position"])
    assert "dropped 1 line" in r.stderr
    S.assert_same_run(reference, tmp_path)
    assert not S.stray_temps(tmp_path)


# --- bad steps (in-process: they stop within a few steps) ----------------------------------------------


def _train(corpus: Path, tmp_path: Path, *sets: str):
    cfg = load_config(corpus, list(sets))
    logs: list[str] = []
    return (
        cfg,
        logs,
        lambda: train(
            cfg, device="cpu", saved_root=str(tmp_path / "saved"), result_root=str(tmp_path / "result"), log=logs.append
        ),
    )


def test_divergence_skips_nonfinite_updates_then_stops_with_a_checkpoint(corpus, tmp_path):
    # a real cause: Adam with lr 1e9 and no clipping blows the weights up after one step
    cfg, logs, run = _train(
        corpus, tmp_path, "train.lr=1e9", "train.clip=0", "train.max_nonfinite=3", "train.val_bleu=false"
    )
    with pytest.raises(TrainingStopped) as e:
        run()
    stop_step = int(re.search(r"at step (\d+)", str(e.value))[1])
    last = tmp_path / "saved" / S.RUN / "last.pt"
    assert str(e.value) == (
        f"3 non-finite losses in a row at step {stop_step}: training diverged; lower train.lr, keep train.clip > 0, "
        f"or check the data (the last finite weights are in {last})"
    )
    assert e.value.reason is StopReason.DIVERGED  # what a caller of train() reads instead of the message
    warnings = [x for x in logs if "update(s) skipped for a non-finite" in x]
    assert len(warnings) == 3 and "3 in a row" in warnings[-1]
    ck = load_checkpoint(tmp_path / "saved" / S.RUN / "last.pt")
    assert ck["step"] == stop_step
    progress = ck["train_state"]["progress"]  # where it stopped: epoch 1, after stop_step batches
    assert (progress["epoch"], progress["position"]) == (1, stop_step)
    # the skipped updates never reached the weights: the checkpoint holds the last finite ones
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "result" / S.RUN / "summary.json").exists()


def test_an_isolated_nonfinite_loss_is_skipped_counted_and_training_goes_on(corpus, tmp_path, monkeypatch):
    import mt_cli.steps as steps

    real, calls = steps.loss_sum, {"n": 0}

    def loss_sum(*a, **kw):  # the 3rd training batch produces an infinite loss
        loss, n = real(*a, **kw)
        calls["n"] += 1
        return (loss * math.inf if calls["n"] == 3 else loss), n

    monkeypatch.setattr(steps, "loss_sum", loss_sum)
    cfg, logs, run = _train(
        corpus, tmp_path, "train.epochs=1", "train.max_steps=8", "train.val_bleu=false", "decode.beam_size=1"
    )
    summary = run()
    assert summary["skipped_updates"] == 1
    rec = S.metrics(tmp_path / "result" / S.RUN)[0]
    assert (rec["skipped"], rec["steps"]) == (1, 8) and math.isfinite(rec["train_loss"])
    skipped = "warning: step 3: 1 update(s) skipped for a non-finite loss or gradient (1 in a row, 1 in this run)"
    assert skipped in logs and "warning: skipped 1 updates with a non-finite loss in epoch 1" in logs
    ck = load_checkpoint(tmp_path / "saved" / S.RUN / "last.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def _tiny_stepper(logs):
    from mt_cli.config import ModelConfig
    from mt_cli.data.vocab import PAD
    from mt_cli.model import build_model
    from mt_cli.steps import Stepper

    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, d_ff=32), 20, 20, PAD)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Stepper(
        model,
        opt,
        list(model.parameters()),
        device=torch.device("cpu"),
        amp_dtype=torch.float32,
        clip=1.0,
        label_smoothing=0.0,
        use_graphs=False,
        log=logs.append,
    )


def _batch():
    from mt_cli.data.batching import Batch

    ids = torch.randint(4, 20, (3, 5))
    return Batch(ids, ids, ids, 15, 15)


def _resume(cfg, tmp_path, logs):
    return train(
        cfg,
        device="cpu",
        resume=True,
        saved_root=str(tmp_path / "saved"),
        result_root=str(tmp_path / "result"),
        log=logs.append,
    )


def test_resuming_an_early_stopped_run_only_tests_it(corpus, tmp_path):
    """(After a crash in the final test, say.) No further epoch is trained, no metrics line is dropped."""
    cfg, logs, run = _train(
        corpus,
        tmp_path,
        "train.epochs=6",
        "train.early_stopping=1",
        "train.lr=1e-12",
        "train.val_bleu=false",
        "decode.beam_size=1",
    )
    first = run()
    recs = S.metrics(tmp_path / "result" / S.RUN)
    assert [r["epoch"] for r in recs] == [1, 2] and first["best_epoch"] == 1
    logs.clear()
    again = _resume(cfg, tmp_path, logs)
    assert S.metrics(tmp_path / "result" / S.RUN) == recs
    only_test = "; raise it to train longer (now only the final test runs)"
    assert f"the run already reached early stopping{only_test}" in logs and not any(x.startswith("epoch") for x in logs)
    assert again["best_epoch"] == 1 and again["test"]["test"]["bleu"] == first["test"]["test"]["bleu"]


def test_resuming_a_run_stopped_by_max_steps_mid_epoch_keeps_its_last_epoch(corpus, tmp_path):
    """max_steps=30 stops in epoch 2 (22 batches an epoch), after validating it; resuming with the same
    config keeps that validation (line and best epoch); a larger max_steps continues and re-logs epoch 2."""
    cfg, logs, run = _train(
        corpus, tmp_path, "train.epochs=3", "train.max_steps=30", "train.val_bleu=false", "decode.beam_size=1"
    )
    first = run()
    recs = S.metrics(tmp_path / "result" / S.RUN)
    assert [r["epoch"] for r in recs] == [1, 2] and first["best_epoch"] == 2
    config_json = tmp_path / "result" / S.RUN / "config.json"
    started = config_json.stat().st_mtime_ns
    again = _resume(cfg, tmp_path, logs)
    assert S.metrics(tmp_path / "result" / S.RUN) == recs and again["best_epoch"] == 2
    assert "the run already reached train.max_steps=30; raise it to train longer (now only the final test runs)" in logs
    assert config_json.stat().st_mtime_ns == started  # same config: not rewritten (`mt runs` orders by it)
    longer = load_config(corpus, ["train.epochs=3", "train.max_steps=50", "train.val_bleu=false", "decode.beam_size=1"])
    _resume(longer, tmp_path, logs)
    recs = S.metrics(tmp_path / "result" / S.RUN)
    assert [r["epoch"] for r in recs] == [1, 2, 3] and recs[1]["steps"] == 22  # epoch 2 again, now whole


def test_a_max_steps_stop_continued_with_more_steps_equals_an_uninterrupted_run(corpus, tmp_path):
    """The stopped epoch's validation must not count twice: early stopping after epoch 3 either way."""
    sets = ["train.epochs=4", "train.early_stopping=2", "train.lr=1e-12", "train.val_bleu=false", "decode.beam_size=1"]
    whole = _train(corpus, tmp_path / "a", *sets)[2]()
    cfg, logs, run = _train(corpus, tmp_path / "b", *sets, "train.max_steps=30")
    run()
    more = load_config(corpus, sets + ["train.max_steps=1000"])
    resumed = _resume(more, tmp_path / "b", logs)
    for key in ("best_epoch", "best_val_loss"):
        assert resumed[key] == whole[key], key
    assert [r["epoch"] for r in S.metrics(tmp_path / "b" / "result" / S.RUN)] == [1, 2, 3]
    ck_a = load_checkpoint(tmp_path / "a" / "saved" / S.RUN / "last.pt")["train_state"]["progress"]
    ck_b = load_checkpoint(tmp_path / "b" / "saved" / S.RUN / "last.pt")["train_state"]["progress"]
    assert (ck_a["step"], ck_a["bad_epochs"]) == (ck_b["step"], ck_b["bad_epochs"]) == (66, 2)


def test_a_nan_metric_never_becomes_the_best():
    from mt_cli.training.state import is_better as _better

    assert not _better("val_loss", math.nan, None) and not _better("val_bleu", math.nan, 3.0)
    assert _better("val_loss", 2.0, None) and _better("val_loss", 1.0, 2.0) and _better("val_bleu", 3.0, 2.0)
    assert not _better("val_bleu", 2.0, 2.0)  # a tie is no improvement


def test_fp16_loss_scale_back_off_is_not_divergence():
    """A GradScaler that starts far too high skips many steps in a row while it halves its scale: routine,
    so none counts towards train.max_nonfinite; a non-finite loss still does."""
    from mt_cli.steps import BAD_RUN, SKIPPED

    stepper = _tiny_stepper([])
    stepper.amp_dtype = torch.float16
    stepper.scaler = scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    b = _batch()
    for _ in range(30):
        stepper(b)
        assert int(stepper.acc[BAD_RUN]) == 0 and int(stepper.acc[SKIPPED]) == 0
    assert scaler.get_scale() < 2.0**50  # it did back off, step after step
    stepper.model.generator.bias.data.fill_(math.nan)
    stepper(b)
    assert int(stepper.acc[BAD_RUN]) == 1


def test_an_overflow_at_loss_scale_one_or_below_is_divergence_not_back_off():
    """A finite loss with infinite gradients: routine back-off while the scale is above 1, a bad step at 1."""
    from mt_cli.steps import BAD_RUN

    for init_scale, bad in ((2.0, 0), (1.0, 1)):
        stepper = _tiny_stepper([])
        stepper.amp_dtype = torch.float16
        stepper.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        stepper.model.generator.weight.register_hook(lambda g: torch.full_like(g, math.inf))
        stepper(_batch())
        assert int(stepper.acc[BAD_RUN]) == bad, init_scale


def test_oom_on_a_batch_is_skipped_and_repeated_oom_stops_with_advice():
    logs: list[str] = []
    stepper = _tiny_stepper(logs)
    b = _batch()
    stepper.oom(b, limit=3)
    stepper.oom(b, limit=3)
    assert "shape (3, 5)" in logs[0] and "2 in a row" in logs[1]
    stepper(b)  # a batch that fits resets the count
    stepper.oom(b, limit=3)
    stepper.oom(b, limit=3)
    with pytest.raises(RuntimeError, match="3 times in a row; lower train.max_tokens"):
        stepper.oom(b, limit=3)


def test_training_loop_survives_an_oom_batch_and_stops_on_repeated_oom(corpus, tmp_path, monkeypatch):
    from mt_cli.steps import Stepper

    real, calls = Stepper.__call__, {"n": 0}

    def flaky(self, b):  # batch 2 does not fit; from batch 5 on nothing fits
        calls["n"] += 1
        if calls["n"] == 2 or calls["n"] >= 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(self, b)

    monkeypatch.setattr(Stepper, "__call__", flaky)
    cfg, logs, run = _train(corpus, tmp_path, "train.max_oom=3", "train.val_bleu=false")
    with pytest.raises(TrainingStopped, match=r"out of memory 3 times in a row; lower train.max_tokens") as e:
        run()
    assert e.value.reason is StopReason.OOM
    oom_logs = [x for x in logs if "out of memory on a batch of shape" in x]
    assert len(oom_logs) == 4 and "(1 in a row)" in oom_logs[0] and "(3 in a row)" in oom_logs[-1]
    ck = load_checkpoint(tmp_path / "saved" / S.RUN / "last.pt")
    assert ck["step"] == 7 and ck["train_state"]["progress"]["position"] == 7


def test_sigterm_then_resume_on_the_streamed_path_equals_the_resident_run(corpus, reference, tmp_path, monkeypatch):
    """data.resident_max_mb=0 forces batches to be built from the memory-mapped arrays as they are needed (the
    path of corpora too big for the device): a run on it, stopped by SIGTERM mid-epoch and resumed, ends
    bit-identical to the uninterrupted run on device-resident matrices."""
    monkeypatch.chdir(tmp_path)
    last = tmp_path / "saved" / S.RUN / "last.pt"
    streamed = [*train_args(corpus), "--set", "data.resident_max_mb=0"]
    p = S.popen(S.mt_cmd(*streamed), cwd=tmp_path)
    S.pause_at_checkpoint(p, last, S.mid_epoch(min_epoch=2))
    out, err = _stop_paused(p, signal.SIGTERM)
    assert p.returncode == 1 and "streamed from memory-mapped arrays" in err, err[-2000:]
    cmd, _ = _paste(err, "SIGTERM")
    r = S.mt(*cmd, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    S.assert_same_run(reference, tmp_path)
