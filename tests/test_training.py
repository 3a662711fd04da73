"""The pieces of mt_cli/training/ driven directly: the saved state round-trips, the Checkpointer writes
last.pt/best.pt/epoch_*.pt in order, the best-metric and stop decisions, the LR schedule steps on the
validation loss, and a run that fails before its first checkpoint leaves no folders behind."""

from __future__ import annotations

import dataclasses
import math
import re
import signal
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability_support as S  # noqa: E402

from mt_cli.checkpoint import load_checkpoint  # noqa: E402
from mt_cli.config import load_config  # noqa: E402
from mt_cli.data.prepare import load_corpus  # noqa: E402
from mt_cli.evaluate import validation_loss  # noqa: E402
from mt_cli.steps import StepTotals  # noqa: E402
from mt_cli.training import StopReason, TrainingStopped, train  # noqa: E402
from mt_cli.training.components import build_components  # noqa: E402
from mt_cli.training.records import EpochRecord  # noqa: E402
from mt_cli.training.signals import Signals  # noqa: E402
from mt_cli.training.state import BestSoFar, RunState, TrainState  # noqa: E402
from mt_cli.training.trainer import EpochProgress, RunContext, Trainer  # noqa: E402
from mt_cli.writer import Writer  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return S.make_corpus(tmp_path_factory.mktemp("corpus"))


def test_run_state_round_trips_and_reads_older_progress():
    state = RunState(
        epoch=3,
        step=57,
        position=4,
        best=2.5,
        best_epoch=2,
        bad_epochs=1,
        elapsed=12.5,
        skipped=2,
        world=2,
        validated=BestSoFar(2.25, 3, 0),
    )
    assert RunState.from_dict(state.to_dict()) == state
    plain = RunState(epoch=2, step=9)
    assert "validated" not in plain.to_dict() and RunState.from_dict(plain.to_dict()) == plain
    # a progress dict of an older version: fewer keys, and one this version does not know
    old = RunState.from_dict(
        {
            "epoch": 4,
            "step": 80,
            "position": 0,
            "best": 1.5,
            "best_epoch": 3,
            "bad_epochs": 0,
            "elapsed": 3.0,
            "some_old_key": 1,
        }
    )
    assert (old.epoch, old.step, old.skipped, old.world, old.validated) == (4, 80, 0, 1, None)


def test_train_state_reads_a_last_pt_that_predates_per_rank_states():
    saved = {"optimizer": {}, "schedule": {}, "rng": {"torch": torch.zeros(1)}, "progress": {"epoch": 2}}
    restored = TrainState.from_dict(saved)
    assert restored.ranks == [{"rng": saved["rng"], "acc": None}] and restored.scaler is None


def test_best_so_far_never_takes_nan_or_a_tie():
    best = BestSoFar(best=3.0, best_epoch=1)
    assert best.improved_by("val_loss", 2.9) and not best.improved_by("val_loss", 3.0)
    assert not best.improved_by("val_loss", math.nan) and not best.improved_by("val_bleu", None)
    assert BestSoFar(best=30.0).improved_by("val_bleu", 30.5) and not BestSoFar(best=30.0).improved_by("val_bleu", 29)


def _trainer(corpus: Path, tmp_path: Path, writer: Writer, *sets: str) -> Trainer:
    """A real Trainer on the 240-pair corpus, built as mt train builds it (no training has run)."""
    cfg = load_config(corpus, list(sets))
    codecs, train_split, valid_split, _ = load_corpus(cfg, cfg.train.bucket_width)
    dev = torch.device("cpu")
    parts = build_components(cfg, len(codecs["src"].vocab), len(codecs["tgt"].vocab), dev, log=lambda *_: None)
    saved, result = tmp_path / "saved", tmp_path / "result"
    saved.mkdir(parents=True)
    result.mkdir(parents=True)
    ctx = RunContext(cfg, dev, 0, 1, saved, result, "mt train --resume", lambda *_: None)
    return Trainer(ctx, parts, codecs, train_split, valid_split, [], RunState(), Signals(), writer, lambda *_: None)


def _record(epoch: int, val_loss: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        step=10 * epoch,
        train_loss=4.0,
        val_loss=val_loss,
        val_ppl=math.exp(val_loss),
        val_bleu=None,
        val_bleu_lc=None,
        lr=1e-3,
        seconds=1.0,
        val_seconds=0.1,
        tokens_per_s=1,
        tgt_tokens_per_s=1,
        elapsed=float(epoch),
        steps=10,
        skipped=0,
    )


def test_best_metric_and_early_stopping_decisions(corpus, tmp_path):
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.early_stopping=2", "train.epochs=10")
        whole = EpochProgress(batches=22)
        decisions = []
        for epoch, loss in enumerate([3.0, 2.0, 2.5, 2.0, 2.6], 1):
            improved = trainer.update_best(_record(epoch, loss))
            decisions.append((improved, trainer.should_stop(epoch, whole)))
    # a tie (2.0 again) is no improvement; the second epoch in a row without one stops the run
    assert decisions == [
        (True, None),
        (True, None),
        (False, None),
        (False, StopReason.EARLY_STOPPING),
        (False, StopReason.EARLY_STOPPING),
    ]
    assert trainer.state.best_so_far == BestSoFar(2.0, 2, 3)


def test_a_run_state_moved_to_another_point_takes_the_changes_given_and_keeps_the_rest():
    state = RunState(epoch=2, step=30, position=4, elapsed=12.0, bad_epochs=1)
    moved = state.at(3, 0, elapsed=20.5)
    assert dataclasses.asdict(moved) == {**dataclasses.asdict(state), "epoch": 3, "position": 0, "elapsed": 20.5}
    assert state.at(5, 2) == dataclasses.replace(state, epoch=5, position=2)


def test_with_best_metric_val_bleu_the_higher_bleu_wins_whatever_the_loss_does(corpus, tmp_path):
    """Loss and BLEU disagree at every epoch: best epoch and early stopping follow BLEU, higher being better."""
    with Writer() as writer:
        trainer = _trainer(
            corpus, tmp_path, writer, "train.best_metric=val_bleu", "train.early_stopping=2", "train.epochs=10"
        )
        whole, decisions = EpochProgress(batches=22), []
        for epoch, (loss, bleu) in enumerate([(3.0, 10.0), (2.0, 8.0), (3.5, 12.0), (1.0, 11.0), (0.5, 12.0)], 1):
            improved = trainer.update_best(dataclasses.replace(_record(epoch, loss), val_bleu=bleu))
            decisions.append((improved, trainer.should_stop(epoch, whole)))
    assert decisions == [(True, None), (False, None), (True, None), (False, None), (False, StopReason.EARLY_STOPPING)]
    assert trainer.state.best_so_far == BestSoFar(12.0, 3, 2)


def test_an_epochs_seconds_are_the_clock_time_its_training_took(corpus, tmp_path, monkeypatch):
    """A fake clock that reads 1000 s when the epoch starts and 1000.5 s after: the epoch took 0.5 s (the figure
    throughput is divided by), whatever the machine's speed."""
    import mt_cli.training.trainer as trainer_module

    readings = iter([1000.0])
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.epochs=2", "train.val_bleu=false")
        monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(time=lambda: next(readings, 1000.5)))
        progress = trainer.train_epoch(1)
    assert progress.seconds == 0.5 and next(readings, None) is None  # the start was read


def test_max_steps_and_last_epoch_stop_the_run(corpus, tmp_path):
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.epochs=3")
        assert trainer.should_stop(2, EpochProgress(batches=22)) is None
        assert trainer.should_stop(3, EpochProgress(batches=22)) is StopReason.LAST_EPOCH
        assert trainer.should_stop(1, EpochProgress(batches=22, stopped_at=5)) is StopReason.MAX_STEPS
        assert trainer.rules.ended_already(trainer.state) is None
        trainer.state.epoch = 4
        assert trainer.rules.ended_already(trainer.state) is StopReason.LAST_EPOCH


def test_checkpointer_writes_best_epoch_and_last_in_order_and_rewrites_last_with_validation(corpus, tmp_path):
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.keep_last=2")
        checkpointer, saved = trainer.checkpointer, tmp_path / "saved"
        trainer.state.step = 10
        weights = {k: v.clone() for k, v in trainer.parts.model.state_dict().items()}
        jobs = checkpointer.epoch_jobs(trainer.state.at(2, 0), _record(1, 2.0), True, weights, write_last=True)
        writer.submit(*jobs)
        writer.flush()
        files = [saved / "best.pt", saved / "epoch_0001.pt", saved / "last.pt"]
        assert [p.stat().st_mtime_ns for p in files] == sorted(p.stat().st_mtime_ns for p in files)
        last = load_checkpoint(saved / "last.pt")
        assert RunState.from_dict(last["train_state"]["progress"]) == trainer.state.at(2, 0)
        assert "train_state" not in load_checkpoint(saved / "best.pt")
        assert last["metrics"]["val_loss"] == 2.0
        for name in ("best.pt", "epoch_0001.pt"):  # each file names the epoch and update it holds
            held = load_checkpoint(saved / name)
            assert (held["epoch"], held["step"], held["metrics"]["step"]) == (1, 10, 10), name

        # a mid-epoch stop: last.pt at the stop, then the same point again with the epoch's validation
        stop = trainer.state.at(2, 7)
        copy = checkpointer.save_last(stop)
        writer.flush()
        before = load_checkpoint(saved / "last.pt")["train_state"]
        checkpointer.save_last(stop, validated=BestSoFar(1.5, 2, 0), last=copy)
        writer.flush()
        after = load_checkpoint(saved / "last.pt")["train_state"]
    assert after["progress"] == {**before["progress"], "validated": dataclasses.asdict(BestSoFar(1.5, 2, 0))}
    assert RunState.from_dict(after["progress"]).validated == BestSoFar(1.5, 2, 0)


def test_the_plateau_schedule_steps_on_the_validation_loss(corpus, tmp_path):
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.scheduler=plateau", "train.val_bleu=false")
        parts = trainer.parts
        totals = parts.stepper.take()
        record = trainer.validate(1, EpochProgress(batches=22, seconds=1.0), totals)
    expected = validation_loss(parts.model, trainer.valid_split, trainer.cfg, torch.device("cpu"), torch.float32)
    assert parts.schedule.plateau.best == pytest.approx(expected, abs=1e-6)
    assert record.val_loss == round(expected, 4) and record.val_ppl == round(math.exp(expected), 3)


@pytest.mark.parametrize("interrupt", ["ctrl_c", "sigterm"])
def test_a_run_interrupted_during_start_up_leaves_no_folders(corpus, tmp_path, interrupt):
    """Stopped after the run claimed its folders but before any step: nothing to continue, so nothing stays
    (left behind, the empty folders would shift the next run's name to -2)."""
    cfg = load_config(corpus, ["train.epochs=1", "train.val_bleu=false", "decode.beam_size=1"])

    def log(msg):
        if msg.startswith(f"run {S.RUN}:"):  # the start-up line, logged once the folders are claimed
            assert (tmp_path / "saved" / S.RUN).is_dir()
            if interrupt == "ctrl_c":
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGTERM)

    expected = KeyboardInterrupt if interrupt == "ctrl_c" else TrainingStopped
    with pytest.raises(expected):
        train(cfg, device="cpu", saved_root=str(tmp_path / "saved"), result_root=str(tmp_path / "result"), log=log)
    assert list((tmp_path / "saved").iterdir()) == [] and list((tmp_path / "result").iterdir()) == []


def test_two_accumulated_batches_make_the_same_update_as_one_batch_of_both(corpus):
    """train.accumulate: K=2 at batch B gives the update of K=1 at batch 2B (same sentences, float tolerance).
    Plain SGD with lr 1 and no clipping makes the update the gradient itself, so any misweighting shows."""
    from mt_cli.data.batching import iterate
    from mt_cli.steps import Stepper

    cfg = load_config(corpus, ["model.dropout=0.0"])
    codecs, split, _, _ = load_corpus(cfg, cfg.train.bucket_width)
    rows = torch.arange(16)
    length = int(split.bucket[rows].max())
    whole = next(iterate(split, [(rows, length)], torch.device("cpu")))
    halves = list(iterate(split, [(rows[:3], length), (rows[3:], length)], torch.device("cpu")))  # unequal halves
    assert halves[0].n_tgt != halves[1].n_tgt
    models, steppers = [], []
    for batch in (whole, halves):
        model = build_components(cfg, len(codecs["src"].vocab), len(codecs["tgt"].vocab), torch.device("cpu")).model
        params = list(model.parameters())
        stepper = Stepper(
            model,
            torch.optim.SGD(params, lr=1.0),
            params,
            device=torch.device("cpu"),
            amp_dtype=torch.float32,
            clip=0.0,
            label_smoothing=0.1,
            use_graphs=False,
        )
        stepper(batch)
        models.append(model)
        steppers.append(stepper)
    start = build_components(cfg, len(codecs["src"].vocab), len(codecs["tgt"].vocab), torch.device("cpu")).model
    for before, a, b in zip(start.parameters(), models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a - before, b - before, rtol=1e-4, atol=1e-7)
    assert sum(int((a != before).sum()) for before, a in zip(start.parameters(), models[0].parameters())) > 1000
    one, two = steppers[0].take(), steppers[1].take()
    assert one.tokens == two.tokens == whole.n_tgt and one.loss == pytest.approx(two.loss, rel=1e-5)


def test_a_run_with_accumulation_counts_updates_as_steps_and_every_token(corpus, tmp_path):
    runs = {}
    for k in (1, 3):
        cfg = load_config(
            corpus,
            ["train.epochs=1", "train.val_bleu=false", "decode.beam_size=1", f"train.accumulate={k}", "name=acc"],
        )
        train(
            cfg,
            device="cpu",
            saved_root=str(tmp_path / f"s{k}"),
            result_root=str(tmp_path / f"r{k}"),
            log=lambda *_: None,
        )
        runs[k] = S.metrics(tmp_path / f"r{k}" / "acc")[0]
    assert runs[1]["steps"] == 22 and runs[3]["steps"] == 8  # ceil(22 / 3): the last update has one batch
    assert runs[3]["step"] == 8
    # throughput counts the tokens of every batch of an update: each training sentence's target once an epoch
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path / "direct", writer, "train.accumulate=3")
        progress = trainer.train_epoch(1)
    assert progress.n_tgt == int(trainer.train_split.tgt_len.sum()) and trainer.state.step == 8


def test_init_from_starts_a_new_run_from_the_weights_and_refuses_another_model(corpus, tmp_path, monkeypatch, capsys):
    from conftest import run_main

    sets = ["train.epochs=1", "train.val_bleu=false", "decode.beam_size=1"]
    first = train(
        load_config(corpus, sets),
        device="cpu",
        saved_root=str(tmp_path / "saved"),
        result_root=str(tmp_path / "result"),
        log=lambda *_: None,
    )
    best = Path(first["saved"]) / "best.pt"
    # a learning rate too small to move the weights: the new run ends where the checkpoint started it
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--config",
        str(corpus),
        "--device",
        "cpu",
        "--init-from",
        str(best),
        "--saved",
        str(tmp_path / "saved"),
        "--result",
        str(tmp_path / "result"),
        *[x for s in sets + ["train.lr=1e-12"] for x in ("--set", s)],
    )
    assert code == 0, err
    best_epoch = load_checkpoint(best)["epoch"]
    assert f"starting from the weights of {best} (epoch {best_epoch}), with a fresh optimizer and schedule" in err
    tuned = load_checkpoint(tmp_path / "saved" / f"{S.RUN}-2" / "last.pt")
    start = load_checkpoint(best)["model"]
    assert all(torch.allclose(tuned["model"][k].float(), v.float(), atol=1e-6) for k, v in start.items())
    assert tuned["config"]["train"]["init_from"] == str(best)
    assert tuned["train_state"]["progress"]["epoch"] == 2  # a run of its own, from epoch 1
    # another model shape: one line naming the key, exit 2, and no new run folder
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--config",
        str(corpus),
        "--device",
        "cpu",
        "--init-from",
        str(best),
        "--set",
        "model.d_ff=48",
        "--saved",
        str(tmp_path / "saved"),
        "--result",
        str(tmp_path / "result"),
    )
    assert code == 2 and "model.d_ff differs" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [S.RUN, f"{S.RUN}-2"]


def test_a_long_cpu_run_says_early_how_long_it_will_take_and_goes_on(corpus, tmp_path):
    """A fake clock makes each step take 0.5 s: 30 steps in, one line estimates the rest; training continues."""
    from mt_cli.training.estimate import DurationEstimate, human_duration

    logs: list[str] = []
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.epochs=1000", "train.val_bleu=false")
        trainer.log = logs.append
        ticks = iter([0.0, 25 * 0.5])  # the clock is read when measuring starts (step 5) and ends (step 30)
        trainer.estimate = DurationEstimate(
            trainer.rules.steps_to_go(trainer.state, 1, 22, 0), "rel", clock=lambda: next(ticks)
        )
        for epoch in (1, 2):  # 44 steps: the line comes once, at step 30
            progress = trainer.train_epoch(epoch)
            assert progress.stopped_at is None and trainer.state.step == 22 * epoch
    lines = [x for x in logs if x.startswith("estimate:")]
    steps_left = 22 * 1000 - 30
    assert (
        len(lines) == 1 and f"about {steps_left * 0.5 / 3600:.1f} h" in lines[0] and f"{steps_left:,} steps" in lines[0]
    )
    assert lines[0].endswith("The run continues.")
    # a run that ends soon says nothing; durations read as people say them
    assert DurationEstimate(40, clock=iter([0.0, 25.0]).__next__, skip=5, measure=25).after_step() is None
    assert (human_duration(9 * 3600 + 300), human_duration(1200), human_duration(5)) == ("9.1 h", "20 min", "1 min")
    assert (human_duration(3599), human_duration(3600)) == ("60 min", "1.0 h")  # hours from the full hour
    assert human_duration(36184) == "10.1 h"  # 10.0511 h (10.048 if an hour were 3601 s)


def test_a_cpu_run_estimates_from_its_first_epoch_all_the_steps_to_go(corpus, tmp_path):
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.epochs=3", "train.val_bleu=false")
        assert trainer.estimate is None
        trainer.train_epoch(1)
    assert (trainer.estimate.steps_to_go, trainer.estimate.config_name) == (3 * 22, trainer.cfg.name)


def test_validation_decodes_at_the_validation_beam_not_the_test_beam(corpus, tmp_path):
    """References set to the (untrained) model's own greedy output: a greedy validation scores BLEU 100, beam 4 not."""
    from mt_cli.evaluate import decode_split

    cpu = torch.device("cpu")
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "decode.beam_size=4", "train.val_beam_size=1", "train.lr=1e-9")
        progress = trainer.train_epoch(1)
        model, codecs, cfg, split = trainer.parts.model, trainer.codecs, trainer.cfg, trainer.valid_split
        greedy, beam = (decode_split(model, codecs, cfg, split, cpu, k) for k in (1, 4))
        trainer.valid_refs = greedy
        record = trainer.validate(1, progress, trainer.epoch_totals(1))
    assert greedy != beam and record.val_bleu == 100.0


def test_the_estimate_points_to_the_cpu_recipe_except_in_the_cpu_recipe():
    from mt_cli.training.estimate import DurationEstimate

    def line(config_name: str) -> str:  # 30 steps of 1 s, 100,000 to go: a line worth saying
        estimate = DurationEstimate(100_000, config_name, clock=iter([0.0, 25.0]).__next__)
        return [estimate.after_step() for _ in range(30)][-1]

    hint = "; `-c configs/multi30k_cpu.yaml` trains in about 17 minutes on 2 cores"
    assert hint in line("multi30k") and hint not in line("multi30k_cpu")
    assert line("multi30k_cpu").endswith("validation not included). The run continues.")


def test_steps_to_go_counts_updates_to_the_end_of_the_run(corpus, tmp_path):
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.epochs=3", "train.accumulate=4")
        assert trainer.rules.steps_to_go(trainer.state, 1, 22, 0) == 6 * 3  # ceil(22 / 4) updates an epoch
        assert trainer.rules.steps_to_go(trainer.state, 2, 22, 20) == 1 + 6
        trainer.cfg.train.max_steps, trainer.state.step = 10, 7
        assert trainer.rules.steps_to_go(trainer.state, 1, 22, 0) == 3


def test_an_epoch_record_rounds_as_documented_and_counts_every_process():
    """Two processes, each 300 source + 200 target tokens in 2.5 s: 400 target tokens per second in all."""
    totals = StepTotals(loss=12.34567, tokens=3.0, skipped=1.0, bad_run=0.0, steps=5.0)
    record = EpochRecord.measure(epoch=3, step=40, elapsed=61.26, totals=totals, seconds=2.5, n_src=300, n_tgt=200,
                                 val_loss=1.234567, val_bleu=20.5, val_bleu_lc=21.0, val_seconds=0.4567, lr=1e-3,
                                 world=2)  # fmt: skip
    assert (record.tokens_per_s, record.tgt_tokens_per_s) == ((300 + 200) * 2 / 2.5, 200 * 2 / 2.5)
    assert (record.seconds, record.val_seconds, record.elapsed) == (2.5, 0.46, 61.3)
    assert (record.train_loss, record.val_loss, record.steps, record.skipped) == (4.1152, 1.2346, 5, 1)
    assert record.val_ppl == round(math.exp(1.234567), 3)
    assert record.console_line(improved=True) == (
        f"epoch   3  train 4.115  val 1.235 (ppl {record.val_ppl:.2f})  val BLEU 20.50 (lc 21.00)  lr 1.00e-03  "
        "2.5s+0.5s  0.2k tgt tok/s  *"  # 160 target tokens per second
    )
    plain = dataclasses.replace(record, val_bleu=None, val_bleu_lc=None, epoch=12)
    assert plain.console_line(improved=False).startswith("epoch  12  train 4.115  val 1.235 (ppl 3.44)  lr 1.00e-03")
    assert plain.console_line(improved=False).endswith("tgt tok/s")
    # the metrics line keeps no-BLEU epochs' null BLEU (cased and lowercased), leaves out other unset fields
    line = plain.to_dict()
    assert (line["val_bleu"], line["val_bleu_lc"]) == (None, None) and "processes" not in line


def test_a_run_logs_its_start_records_its_config_and_returns_its_summary(corpus, tmp_path):
    import json

    from mt_cli.checkpoint import restore

    cfg, logs = load_config(corpus, ["train.epochs=1", "train.val_bleu=false"]), []
    summary = train(cfg, device="cpu", saved_root=str(tmp_path / "saved"), result_root=str(tmp_path / "result"),
                    log=logs.append)  # fmt: skip
    saved, result = tmp_path / "saved" / cfg.name, tmp_path / "result" / cfg.name
    model = restore(load_checkpoint(saved / "best.pt"))[0]
    parameters = sum(p.numel() for p in model.parameters())
    pairs = len((corpus.parent / "train.tsv").read_text(encoding="utf-8").splitlines())
    start = f"run {cfg.name}: {parameters / 1e6:.2f}M parameters, device cpu, precision float32, eager steps"
    assert f"{start}, {pairs} training pairs" in logs
    _, train_split, valid_split, _ = load_corpus(cfg, cfg.train.bucket_width)
    assert f"batches: {train_split.description}; {valid_split.description}" in logs
    assert load_config(result / "config.yaml").to_dict() == cfg.to_dict()  # it reproduces the run
    metrics = [json.loads(line) for line in (result / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {k: summary[k] for k in ("run", "saved", "result", "parameters", "processes", "rank")} == {
        "run": cfg.name, "saved": str(saved), "result": str(result), "parameters": parameters, "processes": 1,
        "rank": 0}  # fmt: skip
    assert (summary["best_epoch"], summary["best_val_loss"], summary["skipped_updates"]) == (
        1, metrics[0]["val_loss"], 0)  # fmt: skip
    assert 0 < summary["train_seconds"] <= summary["total_seconds"] == round(summary["total_seconds"], 1)
    assert summary["train_seconds"] == round(summary["train_seconds"], 1)
    assert json.loads((result / "summary.json").read_text(encoding="utf-8")) == summary


def test_save_every_writes_last_pt_at_each_multiple_of_its_steps(corpus, tmp_path):
    """22 updates in the epoch, save_every 5: last.pt holds the state after update 20, batch 20 of epoch 1."""
    with Writer() as writer:
        trainer = _trainer(corpus, tmp_path, writer, "train.save_every=5")
        trainer.train_epoch(1)
        writer.flush()
    progress = RunState.from_dict(load_checkpoint(tmp_path / "saved" / "last.pt")["train_state"]["progress"])
    assert (trainer.state.step, progress.epoch, progress.position, progress.step) == (22, 1, 20, 20)


def test_a_signal_during_start_up_stops_before_the_first_step():
    signals = Signals(log=lambda *_: None)
    signals.refuse_before_training()  # no signal: nothing happens
    signals.hit = "SIGINT"
    with pytest.raises(TrainingStopped, match="^SIGINT received before training started; nothing was saved$") as stop:
        signals.refuse_before_training()
    assert stop.value.reason is StopReason.SIGNAL


def test_init_from_names_the_first_model_key_that_differs_and_a_vocabulary_that_does(corpus, tmp_path):
    from mt_cli.checkpoint import CheckpointError, checkpoint_state, save_state
    from mt_cli.training.resume import initial_weights

    cfg = load_config(corpus, [f"train.init_from={tmp_path / 'start.pt'}"])
    codecs = load_corpus(cfg, cfg.train.bucket_width)[0]
    weights = {"w": torch.zeros(1)}  # initial_weights checks the model settings and vocabularies, not the tensors

    def start_from(model_sets: list[str], tgt_extra: list[str]) -> str:
        saved = checkpoint_state(weights=weights, cfg=load_config(corpus, model_sets), codecs=codecs, epoch=3, step=9)
        saved["codecs"]["tgt"]["itos"] += tgt_extra
        save_state(tmp_path / "start.pt", saved)
        return str(tmp_path / "start.pt")

    path = start_from(["model.d_ff=48", "model.n_heads=4"], [])
    refused = f"{path}: train.init_from needs the same model; model.d_ff differs (2 key(s)); use the checkpoint's model"
    with pytest.raises(CheckpointError, match=f"^{re.escape(refused)} settings$"):
        initial_weights(cfg, codecs, print)
    path, n = start_from([], ["extra"]), len(codecs["tgt"].vocab.itos)
    refused = f"{path}: train.init_from needs the same tgt vocabulary as the prepared corpus ({n + 1} vs {n} tokens)"
    with pytest.raises(CheckpointError, match=f"^{re.escape(refused)}; prepare the new data with the checkpoint's"):
        initial_weights(cfg, codecs, print)
    logs, path = [], start_from([], [])
    assert initial_weights(cfg, codecs, logs.append).keys() == {"w"}
    assert logs == [f"starting from the weights of {path} (epoch 3), with a fresh optimizer and schedule"]


def test_each_metrics_line_is_what_that_epochs_checkpoint_scores(corpus, tmp_path):
    """Two epochs with BLEU: each line's loss and BLEU recomputed from its epoch_*.pt (sacreBLEU on the model's
    greedy output against the raw references), its console line, and best.pt the lower loss's weights."""
    from sacrebleu.metrics import BLEU

    from mt_cli.checkpoint import restore
    from mt_cli.evaluate import decode_split

    cpu, logs = torch.device("cpu"), []
    cfg = load_config(corpus, ["train.epochs=2", "train.keep_last=2", "train.lr=3e-3", "train.val_beam_size=1"])
    train(cfg, device="cpu", saved_root=str(tmp_path / "saved"), result_root=str(tmp_path / "result"),
          log=logs.append)  # fmt: skip
    saved, lines = tmp_path / "saved" / cfg.name, S.metrics(tmp_path / "result" / cfg.name)
    codecs, _, valid, _ = load_corpus(cfg, cfg.train.bucket_width)
    refs = [line.split("\t")[1] for line in (corpus.parent / "valid.tsv").read_text(encoding="utf-8").splitlines()]
    best = None
    for line in lines:
        model = restore(load_checkpoint(saved / f"epoch_{line['epoch']:04d}.pt"))[0].eval()
        assert line["val_loss"] == round(validation_loss(model, valid, cfg, cpu, torch.float32), 4)
        hyps = decode_split(model, codecs, cfg, valid, cpu, 1)
        assert line["val_bleu"] == pytest.approx(BLEU().corpus_score(hyps, [refs]).score, abs=0.01)
        assert line["step"] == 22 * line["epoch"] and line["steps"] == 22
        improved = best is None or line["val_loss"] < best["val_loss"]  # best_metric: val_loss by default
        best = line if improved else best
        assert EpochRecord(**line).console_line(improved) in logs
    assert lines[1]["elapsed"] > lines[0]["elapsed"] > 0
    progress = load_checkpoint(saved / "last.pt")["train_state"]["progress"]  # resumes at the next epoch's start
    assert (progress["epoch"], progress["position"], progress["step"]) == (3, 0, 44)
    best_of = saved / f"epoch_{best['epoch']:04d}.pt"
    best_weights, epoch_weights = (load_checkpoint(path)["model"] for path in (saved / "best.pt", best_of))
    assert all(torch.equal(best_weights[k], v) for k, v in epoch_weights.items())
