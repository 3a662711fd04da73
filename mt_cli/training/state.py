"""The saved state of a training run, declared once: progress (RunState), why a run stops (StopReason),
and the layout of a last.pt's `train_state` (TrainState)."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field


class StopReason(enum.Enum):
    """Why a run ends (or pauses): the loop's one stop flag."""

    SIGNAL = "signal"  # SIGINT/SIGTERM: last.pt saved, resumable
    MAX_STEPS = "max_steps"  # train.max_steps reached (possibly mid-epoch)
    EARLY_STOPPING = "early_stopping"
    LAST_EPOCH = "last_epoch"  # train.epochs done
    DIVERGED = "diverged"  # train.max_nonfinite non-finite losses in a row
    OOM = "oom"  # train.max_oom CUDA out-of-memory errors in a row


class TrainingStopped(RuntimeError):
    """Training ended early for a reason the user must see (non-finite losses, OOM, signal)."""

    def __init__(self, message: str, reason: StopReason | None = None):
        super().__init__(message)
        self.reason = reason


@dataclass
class BestSoFar:
    """The best validation metric, its epoch, and the early-stopping counter."""

    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def improved_by(self, metric_name: str, value: float | None) -> bool:
        return value is not None and is_better(metric_name, value, self.best)


def is_better(metric_name: str, new: float, best: float | None) -> bool:
    """Whether `new` beats `best` (BLEU: higher, loss: lower); NaN never does, a tie is no improvement."""
    if math.isnan(new):
        return False
    if best is None or math.isnan(best):  # (a NaN best from a run saved by an older version)
        return True
    return new > best if metric_name == "val_bleu" else new < best


@dataclass
class RunState:
    """Where a run is: saved in last.pt as train_state["progress"] (plain numbers, weights_only-loadable).

    `position` is the number of batches of epoch `epoch` already trained. `validated` is set only in a
    last.pt written after a mid-epoch max_steps stop: the BestSoFar after validating that epoch, applied
    when the run resumes as it ended (a larger max_steps continues the epoch and validates it again)."""

    epoch: int = 1
    step: int = 0
    position: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed: float = 0.0  # training seconds so far, across resumptions
    skipped: int = 0  # updates skipped for a non-finite loss, whole run
    world: int = 1  # processes that wrote it (a resume with another count re-shards)
    validated: BestSoFar | None = None

    @property
    def best_so_far(self) -> BestSoFar:
        return BestSoFar(self.best, self.best_epoch, self.bad_epochs)

    def apply(self, best: BestSoFar) -> None:
        self.best, self.best_epoch, self.bad_epochs = best.best, best.best_epoch, best.bad_epochs

    def at(self, epoch: int, position: int, **changes) -> "RunState":
        """A copy at another point (last.pt after an epoch is at (epoch + 1, 0))."""
        return dataclasses.replace(self, epoch=epoch, position=position, **changes)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "validated"}
        if self.validated is not None:
            out["validated"] = dataclasses.asdict(self.validated)
        return out

    @classmethod
    def from_dict(cls, progress: dict) -> "RunState":
        """From a saved progress dict; keys it lacks (older versions) keep their defaults, unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)} - {"validated"}
        state = cls(**{k: v for k, v in progress.items() if k in names})
        if isinstance(progress.get("validated"), dict):
            state.validated = BestSoFar(
                **{
                    k: progress["validated"][k]
                    for k in ("best", "best_epoch", "bad_epochs")
                    if k in progress["validated"]
                }
            )
        return state


@dataclass
class TrainState:
    """last.pt's `train_state`: everything besides the weights that continues a run exactly."""

    optimizer: dict
    schedule: dict
    ranks: list  # per rank: {"rng": rng_state(), "acc": the step accumulators}
    scaler: dict | None
    progress: dict = field(default_factory=dict)  # RunState.to_dict()

    def to_dict(self) -> dict:
        return {
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "ranks": self.ranks,
            "scaler": self.scaler,
            "progress": self.progress,
        }

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainState":
        ranks = saved.get("ranks") or [{"rng": saved["rng"], "acc": None}]  # older last.pt: rank 0's RNG only
        return cls(
            optimizer=saved["optimizer"],
            schedule=saved["schedule"],
            ranks=ranks,
            scaler=saved.get("scaler"),
            progress=saved.get("progress") or {},
        )
