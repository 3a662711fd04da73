"""The training loop: epochs of steps, validation with real decoding, the best metric, checkpoints, stops.

Reliability (README, section "Reliability"): last.pt holds everything needed to continue a run exactly
(model, optimizer, LR schedule, grad scaler, progress, best metric, early-stopping counter, every
rank's RNG states and loss accumulators, the position in the epoch's batch order); it is written
atomically at epoch ends, every train.save_every steps, and when SIGINT/SIGTERM stops the run.
Files are written by a background thread (mt_cli/writer.py) from copies of the state."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from mt_cli import distributed
from mt_cli.atomic import append_line
from mt_cli.config import Config
from mt_cli.data.batching import Batch, Split, batch_plan, iterate, shard
from mt_cli.data.prepare import load_sampled_split, sampled_split_name
from mt_cli.evaluate import decode_split, validation_loss
from mt_cli.metrics import EPOCH_METRICS, score
from mt_cli.steps import SKIPPED, StepTotals
from mt_cli.training.checkpointer import Checkpointer, LastState
from mt_cli.training.components import Components
from mt_cli.training.estimate import DurationEstimate
from mt_cli.training.records import EpochRecord
from mt_cli.training.signals import Signals
from mt_cli.training.state import BestSoFar, RunState, StopReason, TrainingStopped
from mt_cli.training.stopping import StopRules
from mt_cli.writer import Writer, snapshot


@dataclass
class RunContext:
    """What a run is, and where: fixed for the whole run."""

    cfg: Config
    device: torch.device
    rank: int
    world: int
    saved_dir: Path
    result_dir: Path
    resume_hint: str  # the command that continues the run
    log: object

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class EpochProgress:
    """How far one epoch's training got."""

    batches: int  # in this rank's share of the epoch
    stopped_at: int | None = None  # the position where train.max_steps stopped it
    n_src: int = 0
    n_tgt: int = 0
    seconds: float = 0.0
    last: LastState | None = None  # last.pt of a mid-epoch stop, saved again once the epoch is validated

    @property
    def mid_epoch(self) -> bool:
        return self.stopped_at is not None and self.stopped_at < self.batches


def batch_groups(batches, start: int, size: int):
    """(position after the group, its batches): `size` consecutive batches per update; the epoch's last
    group may be smaller. Positions count batches, so a saved position is always at a group's end."""
    group, position = [], start
    for batch in batches:
        group.append(batch)
        position += 1
        if len(group) == size:
            yield position, group
            group = []
    if group:
        yield position, group


class Trainer:
    def __init__(
        self,
        ctx: RunContext,
        parts: Components,
        codecs: dict,
        train_split: Split,
        valid_split: Split,
        valid_refs: list[str],
        state: RunState,
        signals: Signals,
        writer: Writer,
        report_epoch,
    ):
        self.ctx, self.cfg, self.parts, self.codecs = ctx, ctx.cfg, parts, codecs
        self.train_split, self.valid_split, self.valid_refs = train_split, valid_split, valid_refs
        self.state, self.signals, self.writer, self.report_epoch = state, signals, writer, report_epoch
        self.log = ctx.log
        self.checkpointer = Checkpointer(ctx.saved_dir, ctx.cfg, codecs, parts, writer, ctx.is_main)
        self.clock_start = time.time() - state.elapsed  # elapsed counts across resumptions
        # host syncs are cheap on the CPU: check every step there; on a GPU every 50 steps
        self.check_every = 1 if ctx.device.type == "cpu" else 50
        self.seen_skipped = 0.0
        self.estimate: DurationEstimate | None = None  # made at the first epoch this process trains (CPU only)
        self.rules = StopRules(ctx.cfg.train)
        self.stop: StopReason | None = self.rules.ended_already(state)
        self.sampled: Split | None = None  # this epoch's sampled segmentation of the training split

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> None:
        """For each epoch: train, validate, keep the best, save, and stop at a limit."""
        self.signals.refuse_before_training()
        for epoch in range(self.state.epoch, self.cfg.train.epochs + 1):
            if self.stop is not None:
                break
            progress = self.train_epoch(epoch)
            totals = self.epoch_totals(epoch)
            record = self.validate(epoch, progress, totals)
            improved = self.update_best(record)
            self.save_epoch(record, improved, progress)
            self.stop = self.should_stop(epoch, progress)
        self.writer.close()  # everything on disk before the final test reads best.pt and the epoch checkpoints
        self.signals.refuse_after_training(self.checkpointer.last_path, self.ctx.resume_hint)

    def split_of(self, epoch: int) -> Split:
        """The epoch's training split: one of the sampled segmentations (data.subword_samples), else the usual."""
        name = sampled_split_name(self.cfg, epoch)
        if name is None:
            return self.train_split
        if self.sampled is None or self.sampled.name != name:
            self.sampled = None  # the previous one let go before the next is read
            self.sampled = load_sampled_split(self.cfg, name).to(self.ctx.device)
        return self.sampled

    def train_epoch(self, epoch: int) -> EpochProgress:
        """This rank's share of the epoch's batches, from the saved position when the run resumes in it."""
        cfg, state = self.cfg.train, self.state
        split = self.split_of(epoch)
        plan = shard(
            batch_plan(split, cfg.batch_sentences, cfg.max_tokens, shuffle=True, seed=cfg.seed, epoch=epoch),
            self.ctx.rank,
            self.ctx.world,
        )
        start = min(state.position, len(plan)) if epoch == state.epoch else 0
        self.seen_skipped = float(self.parts.stepper.acc[SKIPPED].item()) if start else 0.0
        steps_to_go = self.rules.steps_to_go(state, epoch, len(plan), start)
        self.parts.schedule.set_total(state.step + steps_to_go)
        if self.estimate is None and self.ctx.device.type == "cpu":
            self.estimate = DurationEstimate(steps_to_go, self.cfg.name)
        progress, request, started = EpochProgress(len(plan)), None, time.time()
        bar = tqdm(
            iterate(split, plan, self.ctx.device, start, trim=self.ctx.device.type == "cpu"),
            total=len(plan),
            initial=start,
            desc=f"epoch {epoch}",
            disable=not self.ctx.is_main,
            leave=False,
            mininterval=1.0,
        )
        for position, group in batch_groups(bar, start, cfg.accumulate):  # position: batches done after it
            self.run_step(group, epoch, position)
            if self.estimate is not None and (line := self.estimate.after_step()):
                self.log(line)
            progress.n_src += sum(batch.n_src for batch in group)
            progress.n_tgt += sum(batch.n_tgt for batch in group)
            request = self.signals.hit if self.ctx.world == 1 else None  # a host flag: free to read every step
            if state.step % self.check_every == 0:
                request = self.check_health(epoch, position)
            if cfg.save_every and state.step % cfg.save_every == 0:
                self.checkpointer.save_last(self.point(epoch, position))
            if request or self.rules.max_steps_reached(state):
                progress.stopped_at = position
                break
        bar.close()
        progress.seconds = max(time.time() - started, 1e-9)
        if request:
            self.checkpointer.save_last(self.point(epoch, progress.stopped_at))
            raise self.stopped(
                f"{request} received: saved {self.checkpointer.last_path} at epoch {epoch}, step "
                f"{state.step}; continue with `{self.ctx.resume_hint}`",
                StopReason.SIGNAL,
            )
        if progress.mid_epoch:  # the exact point, so that a larger train.max_steps continues from here
            progress.last = self.checkpointer.save_last(self.point(epoch, progress.stopped_at))
        return progress

    def run_step(self, group: list[Batch], epoch: int, position: int) -> None:
        """One optimizer step (over a group of train.accumulate batches); a CUDA out-of-memory batch is
        skipped, and repeated ones stop the run."""
        self.state.step += 1
        self.parts.schedule.before_step(self.state.step)
        try:
            self.parts.stepper(group)
        except torch.cuda.OutOfMemoryError:
            try:
                self.parts.stepper.oom(group[-1], self.cfg.train.max_oom)
            except RuntimeError as e:
                if self.ctx.world == 1:  # with several processes the others are inside a collective: just stop
                    self.checkpointer.save_last(self.point(epoch, position))
                raise self.stopped(
                    f"{e} (checkpoint: {self.checkpointer.last_path}; continue with `{self.ctx.resume_hint}`)",
                    StopReason.OOM,
                ) from None

    def check_health(self, epoch: int, position: int) -> str | None:
        """(A host sync.) Warn of skipped updates, stop a diverged run; returns the stop request all ranks agree on."""
        totals = self.parts.stepper.totals()
        request, (bad_run,) = self.signals.agreed(totals.bad_run)
        if totals.skipped > self.seen_skipped:
            new = int(totals.skipped - self.seen_skipped)
            self.seen_skipped = totals.skipped
            self.log(
                f"warning: step {self.state.step}: {new} update(s) skipped for a non-finite loss or gradient "
                f"({int(bad_run)} in a row, {self.state.skipped + int(totals.skipped)} in this run)"
            )
        limit = self.cfg.train.max_nonfinite
        if bad_run >= limit:
            self.checkpointer.save_last(self.point(epoch, position))
            raise self.stopped(
                f"{limit} non-finite losses in a row at step {self.state.step}: training diverged; "
                f"lower train.lr, keep train.clip > 0, or check the data (the last finite weights are "
                f"in {self.checkpointer.last_path})",
                StopReason.DIVERGED,
            )
        return request

    def epoch_totals(self, epoch: int) -> StepTotals:
        """The epoch's loss sums and counts over all ranks."""
        taken = list(self.parts.stepper.take())
        totals = StepTotals(*distributed.all_reduce_sum(torch.tensor(taken, device=self.ctx.device)).tolist())
        self.state.skipped += int(totals.skipped)
        if totals.skipped:
            self.log(f"warning: skipped {int(totals.skipped)} updates with a non-finite loss in epoch {epoch}")
        return totals

    def validate(self, epoch: int, progress: EpochProgress, totals: StepTotals) -> EpochRecord:
        """Validation loss (all ranks) and BLEU of real decoding (rank 0); the LR schedule steps on the loss."""
        started = time.time()
        parts, cfg, dev = self.parts, self.cfg, self.ctx.device
        val_loss = validation_loss(parts.model, self.valid_split, cfg, dev, parts.amp_dtype)
        bleus = (None, None)  # cased, lowercased
        if cfg.train.val_bleu:
            if self.ctx.is_main:
                beam = cfg.train.val_beam_size
                hyps = decode_split(parts.model, self.codecs, cfg, self.valid_split, dev, beam, parts.amp_dtype)
                scores = score(hyps, self.valid_refs, cfg.data.lowercase, keys=EPOCH_METRICS)
                bleus = (scores["bleu"], scores["bleu_lc"])
            bleus = distributed.broadcast_object(bleus)
        val_seconds = time.time() - started
        lr = parts.schedule.lr
        parts.schedule.after_epoch(epoch, val_loss)
        self.state.elapsed = self.elapsed()
        record = EpochRecord.measure(
            epoch=epoch, step=self.state.step, elapsed=self.state.elapsed, totals=totals, seconds=progress.seconds,
            n_src=progress.n_src, n_tgt=progress.n_tgt, val_loss=val_loss, val_bleu=bleus[0], val_bleu_lc=bleus[1],
            val_seconds=val_seconds, lr=lr, world=self.ctx.world)  # fmt: skip
        if self.ctx.world > 1:
            record.processes, record.weights_sha256 = self.ctx.world, self.agreed_weights(epoch)
        return record

    def agreed_weights(self, epoch: int) -> str:
        """DDP keeps replicas identical; prove it, and stop loudly if they ever drift apart."""
        hashes = distributed.all_gather_object(distributed.weights_sha256(self.parts.model.state_dict()))
        if len(set(hashes)) != 1:
            raise TrainingStopped(
                f"the {self.ctx.world} processes hold different weights after epoch {epoch} "
                f"({', '.join(hashes)}); this is a bug, please report it"
            )
        return hashes[0]

    def update_best(self, record: EpochRecord) -> bool:
        """Keep the best validation metric; count the epochs without improvement (early stopping)."""
        name = self.cfg.train.best_metric
        value = record.metric(name)
        improved = self.state.best_so_far.improved_by(name, value)
        if improved:
            self.state.apply(BestSoFar(value, record.epoch, 0))
        else:
            self.state.bad_epochs += 1
        return improved

    def save_epoch(self, record: EpochRecord, improved: bool, progress: EpochProgress) -> None:
        """In the order a crash may cut them: the metrics line before last.pt (a resumed run drops the line of
        an epoch it repeats); curves.png last, as nothing depends on it."""
        ctx, jobs, weights = self.ctx, [], None
        if ctx.is_main:
            weights = snapshot(self.parts.model.state_dict())  # one copy for best.pt, epoch_*.pt and last.pt
            jobs.append(partial(append_line, ctx.result_dir / "metrics.jsonl", record.to_json()))
            self.log(record.console_line(improved))
        jobs += self.checkpointer.epoch_jobs(
            self.point(record.epoch + 1, 0), record, improved, weights, write_last=not progress.mid_epoch
        )
        if progress.mid_epoch:  # the same point again, now knowing this epoch's validation
            jobs.append(self.checkpointer.last_job(progress.last, validated=self.state.best_so_far))
        if ctx.is_main:
            jobs.append(partial(self.report_epoch, record.to_dict(), ctx.result_dir))
        self.writer.submit(*jobs)

    def should_stop(self, epoch: int, progress: EpochProgress) -> StopReason | None:
        if self.rules.early_stopping_due(self.state):
            self.log(f"early stopping: no better {self.cfg.train.best_metric} for {self.state.bad_epochs} epochs")
        return self.rules.after_epoch(self.state, epoch, progress.stopped_at is not None)

    def stopped(self, message: str, reason: StopReason) -> TrainingStopped:
        self.writer.flush()  # the checkpoint the message names is on disk (or its write error is raised instead)
        return TrainingStopped(message, reason)

    def elapsed(self) -> float:
        return time.time() - self.clock_start

    def point(self, epoch: int, position: int) -> RunState:
        """The run's state as last.pt records it at batch `position` of `epoch`, now."""
        return self.state.at(epoch, position, elapsed=self.elapsed())
