"""Early in a run on the CPU, one line saying how long its training will take at the measured speed
(a GPU recipe on a laptop takes hours, and nothing else would say so up front)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CPU_RECIPE = Path("configs/multi30k_cpu.yaml")  # named in the line where it exists (the repository's configs/)
WORTH_SAYING_S = 30 * 60  # shorter runs need no warning


def human_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{max(1, round(seconds / 60))} min"


@dataclass
class DurationEstimate:
    """Times steps `skip`+1 .. `skip`+`measure` of this process (the first ones warm up), then estimates once."""

    steps_to_go: int  # updates this process will still train when it starts measuring
    config_name: str | None = None
    skip: int = 5
    measure: int = 25
    clock: Callable[[], float] = time.perf_counter
    _seen: int = 0
    _started: float | None = None
    done: bool = field(default=False)

    def after_step(self) -> str | None:
        """Call after every update; returns the line once, when it is worth saying."""
        if self.done:
            return None
        self._seen += 1
        if self._seen == self.skip:
            self._started = self.clock()
        if self._seen < self.skip + self.measure:
            return None
        self.done = True
        per_step = (self.clock() - self._started) / self.measure
        remaining = per_step * max(0, self.steps_to_go - self._seen)
        if remaining < WORTH_SAYING_S:
            return None
        hint = ""
        if CPU_RECIPE.is_file() and self.config_name != CPU_RECIPE.stem:
            hint = f"; `-c {CPU_RECIPE}` trains in about 17 minutes on 2 cores (see the README, No GPU?)"
        return (
            f"estimate: about {human_duration(remaining)} of training to go at this speed on this CPU "
            f"({per_step:.2f} s per step, {self.steps_to_go - self._seen:,} steps; validation not included)"
            f"{hint}. The run continues."
        )
