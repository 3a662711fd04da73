"""Learning-rate schedules against their definitions: ReduceLROnPlateau on a sequence of validation losses
(halving exactly when the patience is exceeded, warm-up epochs ignored, the floor held), inverse square root
per step, constant, and a resumed schedule that carries on where it stopped."""

from __future__ import annotations

import math

import pytest
import torch

from mt_cli.config import TrainConfig
from mt_cli.schedule import LRSchedule


def optimizer(lr: float = 1.0, tensor_lr: bool = False) -> torch.optim.Optimizer:
    p = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.Adam([p], lr=torch.tensor(lr) if tensor_lr else lr)


def plateau_reference(
    losses: list[float], lr: float, factor: float, patience: int, min_lr: float, warmup_epochs: int
) -> list[float]:
    """The plateau rule written out: after the warm-up epochs, an epoch improves on the best loss if it is lower
    by more than the relative threshold 1e-4 (torch's default); once more than `patience` epochs in a row did not
    improve, lr ← max(lr × factor, min_lr) (unless that changes it by less than 1e-8) and the count restarts.
    Returns the lr after each epoch."""
    best, bad, out = float("inf"), 0, []
    for epoch, loss in enumerate(losses, 1):
        if epoch > warmup_epochs:
            if loss < best * (1 - 1e-4):
                best, bad = loss, 0
            else:
                bad += 1
            if bad > patience:
                new = max(lr * factor, min_lr)
                lr, bad = (new if lr - new > 1e-8 else lr), 0  # torch skips changes below eps=1e-8
        out.append(lr)
    return out


# epochs 3-5 do not improve on 4.0: the third of them (5) exceeds a patience of 2; then 3.0 at 6, and 7-9 stall
LOSSES = [5.0, 4.0, 4.5, 4.2, 4.1, 3.0, 3.5, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
HALVED = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.0625]


@pytest.mark.parametrize("tensor_lr", [False, True])
def test_plateau_halves_exactly_when_the_patience_is_exceeded(tensor_lr):
    cfg = TrainConfig(lr=1.0, scheduler="plateau", plateau_factor=0.5, plateau_patience=2, min_lr=0.0)
    opt = optimizer(1.0, tensor_lr)
    lr_object = opt.param_groups[0]["lr"]
    sched = LRSchedule(opt, cfg)
    seen = []
    for epoch, loss in enumerate(LOSSES, 1):
        sched.after_epoch(epoch, loss)
        seen.append(sched.lr)
    assert seen == HALVED
    assert HALVED == plateau_reference(LOSSES, 1.0, 0.5, 2, 0.0, 0)
    if tensor_lr:  # captured CUDA-graph steps read this very tensor: it is updated in place, never replaced
        assert opt.param_groups[0]["lr"] is lr_object and float(lr_object) == HALVED[-1]


def test_a_loss_that_falls_every_epoch_never_lowers_the_lr():
    sched = LRSchedule(optimizer(), TrainConfig(lr=1.0, plateau_patience=0, min_lr=0.0))
    for epoch in range(1, 20):
        sched.after_epoch(epoch, 10.0 - 0.5 * epoch)
    assert sched.lr == 1.0


@pytest.mark.parametrize(
    "factor, patience, min_lr, warmup", [(0.5, 0, 0.0, 0), (0.1, 1, 0.02, 0), (0.5, 2, 0.0, 3), (0.7, 3, 1e-3, 1)]
)
def test_plateau_follows_the_rule(factor, patience, min_lr, warmup):
    g = torch.Generator().manual_seed(patience * 10 + warmup)
    # a noisy falling curve with long plateaus: improvements and stalls of every length
    losses = (5.0 - torch.arange(40) * 0.02 + torch.rand(40, generator=g) * 0.6).tolist()
    losses[:warmup] = [0.1] * warmup  # warm-up epochs' losses count for nothing, not even as the best
    cfg = TrainConfig(lr=1.0, plateau_factor=factor, plateau_patience=patience, min_lr=min_lr, warmup_epochs=warmup)
    sched = LRSchedule(optimizer(), cfg)
    seen = []
    for epoch, loss in enumerate(losses, 1):
        sched.after_epoch(epoch, loss)
        seen.append(sched.lr)
    want = plateau_reference(losses, 1.0, factor, patience, min_lr, warmup)
    assert seen == pytest.approx(want, rel=1e-9)
    assert len(set(want)) >= 3  # the sequence really lowers the lr several times
    assert min(seen) >= min_lr


def test_warmup_epochs_are_not_counted():
    """With 2 warm-up epochs, epochs 1-2 neither set the best nor count as stalls."""
    cfg = TrainConfig(lr=1.0, plateau_patience=1, warmup_epochs=2, min_lr=0.0)
    sched = LRSchedule(optimizer(), cfg)
    seen = []
    for epoch, loss in enumerate([1.0, 1.0, 3.0, 2.9, 2.95, 2.95], 1):
        sched.after_epoch(epoch, loss)
        seen.append(sched.lr)
    assert seen == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]


def test_resumed_plateau_schedule_carries_on():
    cfg = TrainConfig(lr=1.0, plateau_factor=0.5, plateau_patience=2, min_lr=0.0)
    first = LRSchedule(optimizer(), cfg)
    for epoch, loss in enumerate(LOSSES[:7], 1):
        first.after_epoch(epoch, loss)
    state = first.state_dict()
    resumed = LRSchedule(optimizer(), cfg)
    resumed.load_state_dict(state)
    seen = []
    for epoch, loss in enumerate(LOSSES[7:], 8):
        resumed.after_epoch(epoch, loss)
        seen.append(resumed.lr)
    assert resumed.lr == HALVED[-1] and seen == HALVED[7:]


@pytest.mark.parametrize("warmup", [1, 4, 100])
def test_inverse_sqrt_is_the_formula(warmup):
    """lr × min(step / warmup, √(warmup / step)): linear warm-up to lr at step = warmup, then 1/√step."""
    cfg = TrainConfig(lr=2e-3, scheduler="inverse_sqrt", warmup_steps=warmup)
    opt = optimizer(2e-3)
    sched = LRSchedule(opt, cfg)
    assert sched.lr == pytest.approx(2e-3 * min(1 / warmup, warmup**0.5))  # set for step 1 already
    for step in (1, 2, warmup, warmup + 1, 4 * warmup, 400):
        sched.before_step(step)
        want = 2e-3 * step / warmup if step <= warmup else 2e-3 * (warmup / step) ** 0.5
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
    sched.before_step(4 * warmup)
    assert sched.lr == pytest.approx(1e-3)  # a quarter past the peak: half the peak lr
    sched.after_epoch(5, 10.0)  # no plateau stepping on this schedule
    assert sched.lr == pytest.approx(1e-3)


def test_constant_schedule_never_changes():
    sched = LRSchedule(optimizer(3e-4), TrainConfig(lr=3e-4, scheduler="constant"))
    for epoch in range(1, 10):
        sched.before_step(epoch * 100)
        sched.after_epoch(epoch, 5.0)
    assert sched.lr == 3e-4


@pytest.mark.parametrize("warmup, total, min_lr", [(10, 110, 0.0), (1, 50, 1e-4), (100, 100, 0.0), (40, 400, 2e-4)])
def test_cosine_is_the_formula(warmup, total, min_lr):
    """Linear warm-up to lr at step = warmup, then min_lr + (lr - min_lr)(1 + cos(π·t))/2, t = (step - warmup) /
    (total - warmup): lr at the end of warm-up, the mean of lr and min_lr half-way, min_lr at the last update."""
    lr = 2e-3
    opt = optimizer(lr)
    sched = LRSchedule(opt, TrainConfig(lr=lr, scheduler="cosine", warmup_steps=warmup, min_lr=min_lr))
    sched.set_total(total)
    sched.set_total(10 * total)  # the first total is kept (a resumed run restores it)
    for step in range(1, total + 1):
        sched.before_step(step)
        if step <= warmup:
            want = lr * step / warmup
        else:
            t = (step - warmup) / max(1, total - warmup)
            want = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t)) / 2
        assert sched.lr == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert sched.lr == pytest.approx(min_lr if total > warmup else lr, abs=1e-15)
    if (total - warmup) % 2 == 0 and total > warmup:
        sched.before_step(warmup + (total - warmup) // 2)
        assert sched.lr == pytest.approx((lr + min_lr) / 2, rel=1e-12)
    sched.before_step(total + 50)  # past the planned end (a larger max_steps on resume): held at the floor
    assert sched.lr == pytest.approx(min_lr, abs=1e-15)


def test_resumed_cosine_schedule_keeps_its_total():
    cfg = TrainConfig(lr=1.0, scheduler="cosine", warmup_steps=5, min_lr=0.0)
    first = LRSchedule(optimizer(), cfg)
    first.set_total(105)
    first.before_step(30)
    resumed = LRSchedule(optimizer(), cfg)
    resumed.load_state_dict(first.state_dict())
    resumed.set_total(500)  # what a resumed trainer offers: ignored, the saved plan holds
    resumed.before_step(55)
    assert resumed.lr == pytest.approx(0.5)  # half-way through the 100 decay steps of the saved plan


def test_cosine_sets_the_first_steps_rate_at_once_and_waits_for_the_total():
    """Step 1's warm-up rate is set when the schedule is made (as for inverse sqrt); before set_total (mt bench)
    the decay has not started, so the rate after warm-up stays at lr."""
    opt = optimizer(1.0)
    sched = LRSchedule(opt, TrainConfig(lr=1.0, scheduler="cosine", warmup_steps=4, min_lr=0.0))
    assert sched.lr == pytest.approx(0.25)
    for step in (5, 50, 5000):
        sched.before_step(step)
        assert sched.lr == 1.0


def test_cosine_with_one_step_of_decay_ends_at_min_lr():
    sched = LRSchedule(optimizer(), TrainConfig(lr=1.0, scheduler="cosine", warmup_steps=10, min_lr=0.1))
    sched.set_total(11)
    sched.before_step(11)
    assert sched.lr == pytest.approx(0.1)


def test_a_plateau_schedule_takes_a_state_without_plateau_counters():
    sched = LRSchedule(optimizer(), TrainConfig(lr=1.0, scheduler="plateau"))
    sched.load_state_dict({"plateau": None, "lr": 0.25})
    assert sched.lr == 0.25
