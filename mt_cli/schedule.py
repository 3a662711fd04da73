"""Learning-rate schedules: ReduceLROnPlateau on validation loss (after warm-up epochs),
warm-up + inverse square root per step, or constant."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mt_cli.config import TrainConfig


class LRSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
        self.opt, self.cfg = optimizer, cfg
        self.plateau = None
        if cfg.scheduler == "plateau":
            self.plateau = ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
            )
        if cfg.scheduler == "inverse_sqrt":
            self._set(self._inv_sqrt(1))

    def _inv_sqrt(self, step: int) -> float:
        w = max(1, self.cfg.warmup_steps)
        return self.cfg.lr * min(step / w, (w / step) ** 0.5)

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
        if self.cfg.scheduler == "inverse_sqrt":
            self._set(self._inv_sqrt(step))

    def after_epoch(self, epoch: int, val_loss: float) -> None:
        if self.plateau is not None and epoch > self.cfg.warmup_epochs:
            lr_tensors = [g["lr"] for g in self.opt.param_groups]
            self.plateau.step(val_loss)
            new = self.lr
            for g, t in zip(self.opt.param_groups, lr_tensors):
                g["lr"] = t  # some torch versions replace a tensor lr by a float here
            self._set(new)

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict() if self.plateau else None, "lr": self.lr}

    def load_state_dict(self, d: dict) -> None:
        if self.plateau is not None and d.get("plateau"):
            self.plateau.load_state_dict(d["plateau"])
        self._set(d["lr"])
