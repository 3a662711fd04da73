"""The pieces a training step needs, built from a config in one place (`mt train` and `mt bench` share it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mt_cli import distributed
from mt_cli.config import Config
from mt_cli.data.vocab import PAD
from mt_cli.model import build_model
from mt_cli.model.transformer import Transformer
from mt_cli.schedule import LRSchedule
from mt_cli.steps import Stepper, build_optimizer, resolve_precision
from mt_cli.training.rng import seed_all


@dataclass
class Components:
    model: Transformer  # the plain module: checkpoints, validation, decoding
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None  # fp16 only
    stepper: Stepper
    amp_dtype: torch.dtype
    device: torch.device

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_components(
    cfg: Config, src_vocab: int, tgt_vocab: int, device: torch.device, log=print, rank: int = 0, world: int = 1
) -> Components:
    """Seeded model (identical on every rank), optimizer, LR schedule, grad scaler and Stepper for `device`."""
    seed_all(cfg.train.seed)
    model = build_model(cfg.model, src_vocab, tgt_vocab, PAD).to(device)
    if rank:  # same initial weights everywhere, but each process its own dropout masks
        seed_all(cfg.train.seed + 1000 * rank)
    amp_dtype = resolve_precision(cfg.train.precision, device)
    params = list(model.parameters())
    optimizer = build_optimizer(params, cfg.train, device)
    schedule = LRSchedule(optimizer, cfg.train)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    net = distributed.wrap(model, device)  # what the steps run: the model, DDP-wrapped and/or compiled
    if cfg.train.compile:
        net = torch.compile(net)
    # one process only: a DDP step synchronizes gradients in hooks a captured graph would replay blindly
    # (a captured step is one batch per update: with train.accumulate > 1 the steps run eagerly)
    use_graphs = (
        cfg.train.cuda_graphs
        and device.type == "cuda"
        and world == 1
        and not cfg.train.compile
        and cfg.train.accumulate == 1
    )
    stepper = Stepper(
        net,
        optimizer,
        params,
        device=device,
        amp_dtype=amp_dtype,
        clip=cfg.train.clip,
        label_smoothing=cfg.train.label_smoothing,
        use_graphs=use_graphs,
        scaler=scaler,
        log=log,
    )
    return Components(model, optimizer, schedule, scaler, stepper, amp_dtype, device)  # the Stepper holds `net`
