"""A run's checkpoint files: last.pt (to continue exactly), best.pt, and epoch_*.pt (for averaging),
written in order by the background Writer from copies of the state taken when they are asked for."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mt_cli import distributed
from mt_cli.averaging import keep_epoch_checkpoint
from mt_cli.checkpoint import checkpoint_state, save_state
from mt_cli.config import Config
from mt_cli.training.components import Components
from mt_cli.training.records import EpochRecord
from mt_cli.training.rng import rng_state
from mt_cli.training.state import BestSoFar, RunState, TrainState
from mt_cli.writer import Writer, snapshot


@dataclass
class LastState:
    """Everything last.pt holds, copied at one point of the run (on rank 0)."""

    weights: dict
    train_state: TrainState
    epoch: int
    step: int
    metrics: dict | None


class Checkpointer:
    """Saves one run's checkpoints into `saved_dir` through `writer`. Only rank 0 writes, but every rank
    takes part in saving last.pt: each sends it its RNG states and loss sums."""

    def __init__(self, saved_dir: Path, cfg: Config, codecs: dict, parts: Components, writer: Writer, is_main: bool):
        self.saved_dir, self.cfg, self.codecs, self.parts = saved_dir, cfg, codecs, parts
        self.writer, self.is_main = writer, is_main

    @property
    def last_path(self) -> Path:
        return self.saved_dir / "last.pt"

    def _file(
        self, weights: dict, epoch: int, step: int, metrics: dict | None = None, train_state: TrainState | None = None
    ) -> dict:
        return checkpoint_state(
            weights=weights,
            cfg=self.cfg,
            codecs=self.codecs,
            epoch=epoch,
            step=step,
            metrics=metrics,
            train_state=train_state.to_dict() if train_state else None,
        )

    def take_last(self, state: RunState, metrics: dict | None = None, weights: dict | None = None) -> LastState | None:
        """A copy of last.pt's content with `state` as its progress; None on ranks other than 0 (collective)."""
        parts = self.parts
        ranks = distributed.all_gather_object(
            {"rng": rng_state(parts.device), "acc": parts.stepper.acc.detach().cpu().clone()}
        )
        if not self.is_main:
            return None
        copied = snapshot(
            {
                "optimizer": parts.optimizer.state_dict(),
                "schedule": parts.schedule.state_dict(),
                "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            }
        )
        train_state = TrainState(ranks=ranks, progress=state.to_dict(), **copied)
        weights = snapshot(parts.model.state_dict()) if weights is None else weights
        return LastState(weights, train_state, state.epoch, state.step, metrics)

    def last_job(self, last: LastState | None, validated: BestSoFar | None = None):
        """The write of last.pt; with `validated`, the progress records the validation of the epoch it stopped in."""
        if last is None:
            return None
        train_state = last.train_state
        if validated is not None:
            progress = {**train_state.progress, "validated": dataclasses.asdict(validated)}
            train_state = dataclasses.replace(train_state, progress=progress)
        return partial(
            save_state, self.last_path, self._file(last.weights, last.epoch, last.step, last.metrics, train_state)
        )

    def save_last(
        self, state: RunState, validated: BestSoFar | None = None, last: LastState | None = None
    ) -> LastState | None:
        """Write last.pt at `state`; call it again with the copy it returned (`last`) and `validated` to
        rewrite that same point once its epoch's validation is known."""
        if last is None:
            last = self.take_last(state)
        self.writer.submit(self.last_job(last, validated))
        return last

    def epoch_jobs(
        self, next_state: RunState, record: EpochRecord, improved: bool, weights: dict | None, write_last: bool
    ) -> list:
        """Writes after an epoch: best.pt if it improved, its epoch_*.pt, and last.pt at `next_state`."""
        jobs = []
        if self.is_main:
            metrics = record.to_dict()
            if improved:
                jobs.append(
                    partial(
                        save_state, self.saved_dir / "best.pt", self._file(weights, record.epoch, record.step, metrics)
                    )
                )
            jobs.append(
                partial(
                    keep_epoch_checkpoint,
                    self.saved_dir,
                    record.epoch,
                    self.cfg,
                    self._file(weights, record.epoch, record.step, metrics),
                )
            )
        if write_last:
            jobs.append(self.last_job(self.take_last(next_state, record.to_dict(), weights)))
        return jobs
