"""SIGINT/SIGTERM as a stop request checked between steps, and the agreement of all ranks on it."""

from __future__ import annotations

import signal
from pathlib import Path

from mt_cli import distributed
from mt_cli.training.state import StopReason, TrainingStopped


class Signals:
    """Turn SIGINT/SIGTERM into a flag checked between steps (a safe point to save).

    In one process the first signal restores the previous handlers, so a second Ctrl-C stops at once.
    Under torchrun a worker gets each signal twice (from the terminal or scheduler, and forwarded by the
    torchrun agent), so there the flag handler stays, and also while the process exits after the stop."""

    def __init__(self, log=print, second_quits: bool = True):
        self.hit: str | None = None
        self.log = log
        self.second_quits = second_quits
        self._old_handlers: dict = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.hit is None:
            self.hit = signal.Signals(signum).name
            if self.second_quits:
                self._restore()
            self.log(
                f"{self.hit} received: finishing this step, then saving"
                f"{' (send it again to quit at once)' if self.second_quits else ''}"
            )

    def _restore(self):
        for signum, handler in self._old_handlers.items():
            try:
                signal.signal(signum, handler)
            except (ValueError, TypeError):
                pass
        self._old_handlers = {}

    def __exit__(self, exc_type, *exc):
        if exc_type is None or self.hit is None:
            self._restore()

    def agreed(self, *values: float) -> tuple[str | None, list[float]]:
        """The stop request of any rank, and the maximum over ranks of `values` (one collective: every
        rank calls this at the same step). Another rank's signal reads as SIGTERM here."""
        if distributed.world() == 1:
            return self.hit, list(values)
        flag, *maxima = distributed.all_reduce_max([1.0 if self.hit else 0.0, *values])
        return (self.hit or "SIGTERM") if flag else None, maxima

    def refuse_before_training(self) -> None:
        """A signal during start-up: stop before the first step (there is nothing to continue from yet)."""
        request, _ = self.agreed()
        if request:
            raise TrainingStopped(f"{request} received before training started; nothing was saved", StopReason.SIGNAL)

    def refuse_after_training(self, last: Path, resume_hint: str) -> None:
        """A signal during the last validation: last.pt is complete, but the user asked to stop before the test."""
        request, _ = self.agreed()
        if request:
            raise TrainingStopped(
                f"{request} received: training is saved in {last}; the final test was skipped; run it with "
                f"`{resume_hint}`",
                StopReason.SIGNAL,
            )
