"""Training a run: `train(cfg, ...)` (run.py) over a Trainer (trainer.py) with typed state (state.py),
checkpoints (checkpointer.py), resume (resume.py), RNG (rng.py) and stop requests (signals.py)."""

from mt_cli.training.run import train
from mt_cli.training.state import RunState, StopReason, TrainingStopped

__all__ = ["RunState", "StopReason", "TrainingStopped", "train"]
