"""When a run stops: train.max_steps, early stopping, its last epoch; and how many updates it has to go."""

from __future__ import annotations

from dataclasses import dataclass

from mt_cli.config import TrainConfig
from mt_cli.training.state import RunState, StopReason


@dataclass
class StopRules:
    train: TrainConfig

    def max_steps_reached(self, state: RunState) -> bool:
        return bool(self.train.max_steps and state.step >= self.train.max_steps)

    def early_stopping_due(self, state: RunState) -> bool:
        patience = self.train.early_stopping
        return bool(patience and state.bad_epochs >= patience)

    def after_epoch(self, state: RunState, epoch: int, stopped_in_epoch: bool) -> StopReason | None:
        """Why the run ends after `epoch` (`stopped_in_epoch`: train.max_steps cut it), or None to go on."""
        if stopped_in_epoch:
            return StopReason.MAX_STEPS
        if self.early_stopping_due(state):
            return StopReason.EARLY_STOPPING
        return StopReason.LAST_EPOCH if epoch == self.train.epochs else None

    def ended_already(self, state: RunState) -> StopReason | None:
        """The reason a resumed run has nothing left to train (then only its final test runs)."""
        if self.early_stopping_due(state):
            return StopReason.EARLY_STOPPING
        if self.max_steps_reached(state):
            return StopReason.MAX_STEPS
        return StopReason.LAST_EPOCH if state.epoch > self.train.epochs else None

    def steps_to_go(self, state: RunState, epoch: int, batches: int, start: int) -> int:
        """Updates left from batch `start` of `epoch` (of `batches`) to the end of the run."""
        per_epoch = -(-batches // self.train.accumulate)
        left = -(-(batches - start) // self.train.accumulate) + per_epoch * (self.train.epochs - epoch)
        if self.train.max_steps:
            left = min(left, self.train.max_steps - state.step)
        return max(left, 0)
