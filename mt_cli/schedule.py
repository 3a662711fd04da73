"""Learning-rate schedules: ReduceLROnPlateau on validation loss (after warm-up epochs),
warm-up + inverse square root per step, warm-up + cosine decay to min_lr at the run's last update, or constant."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mt_cli.config import TrainConfig


class LRSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
        self.opt, self.cfg = optimizer, cfg
        self.plateau = None
        self.total_steps: int | None = None  # the run's updates, for the cosine schedule (set_total)
        if cfg.scheduler == "plateau":
            self.plateau = ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
            )
        if cfg.scheduler in ("inverse_sqrt", "cosine"):
            self._set(self._per_step(1))

    def set_total(self, total_steps: int) -> None:
        """The number of updates the run will make; kept from the first call (a resumed run restores it)."""
        if self.total_steps is None:
            self.total_steps = max(1, total_steps)

    def _per_step(self, step: int) -> float:
        w = max(1, self.cfg.warmup_steps)
        if self.cfg.scheduler == "inverse_sqrt":
            return self.cfg.lr * min(step / w, (w / step) ** 0.5)
        if step <= w:
            return self.cfg.lr * step / w
        # before set_total (a first lr, or mt bench) the decay has not started
        span = max(1, (self.total_steps or step) - w)
        done = min(1.0, (step - w) / span) if self.total_steps else 0.0
        low = min(self.cfg.min_lr, self.cfg.lr)
        return low + (self.cfg.lr - low) * 0.5 * (1.0 + math.cos(math.pi * done))

    def _set(self, lr: float) -> None:
        # a tensor lr (CUDA graphs) is filled in place so captured steps see the new value
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def before_step(self, step: int) -> None:
        """Called with the 1-based number of the step about to run."""
        if self.cfg.scheduler in ("inverse_sqrt", "cosine"):
            self._set(self._per_step(step))

    def after_epoch(self, epoch: int, val_loss: float) -> None:
        if self.plateau is not None and epoch > self.cfg.warmup_epochs:
            lr_tensors = [g["lr"] for g in self.opt.param_groups]
            self.plateau.step(val_loss)
            new = self.lr
            for g, t in zip(self.opt.param_groups, lr_tensors):
                g["lr"] = t  # some torch versions replace a tensor lr by a float here
            self._set(new)

    def state_dict(self) -> dict:
        return {
            "plateau": self.plateau.state_dict() if self.plateau else None,
            "lr": self.lr,
            "total": self.total_steps,
        }

    def load_state_dict(self, d: dict) -> None:
        if self.plateau is not None and d.get("plateau"):
            self.plateau.load_state_dict(d["plateau"])
        self._set(d["lr"])
        self.total_steps = d.get("total")  # (checkpoints before the cosine schedule: None)
