"""Per-epoch weight snapshots (the last N kept) and checkpoint averaging."""

from __future__ import annotations

from pathlib import Path

import torch

from mt_cli.atomic import refuse_overwrite
from mt_cli.checkpoint import CheckpointError, load_checkpoint, save_state


def epoch_checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("epoch_*.pt"))


def keep_epoch_checkpoint(folder: Path, epoch: int, cfg, state: dict) -> None:
    """Save this epoch's checkpoint `state` when it may be needed (averaging, keep_last > 1); prune older ones.
    keep_last N >= 2 keeps epoch_*.pt of the last N epochs (besides best.pt and last.pt); 1 keeps none."""
    keep = max(cfg.train.average_last, cfg.train.keep_last if cfg.train.keep_last > 1 else 0)
    if keep <= 0:
        return
    save_state(folder / f"epoch_{epoch:04d}.pt", state)
    for old in epoch_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)


def _same(a, b) -> bool:
    """Equality of nested plain data that may hold tensors (a sentencepiece model is stored as bytes)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _check_tensors(weights: dict, path: Path, reference: dict, reference_path: Path) -> None:
    """Every weight a tensor of the reference's shape and dtype, else one line naming the tensor and both files."""
    for name, ref in reference.items():
        t = weights[name]
        if not isinstance(t, torch.Tensor) or not isinstance(ref, torch.Tensor):
            bad = path if not isinstance(t, torch.Tensor) else reference_path
            raise CheckpointError(f"{bad}: weight {name} is not a tensor; not an mt_cli checkpoint")
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise CheckpointError(
                f"tensor {name} is {list(t.shape)} {t.dtype} in {path} but {list(ref.shape)} "
                f"{ref.dtype} in {reference_path}; average checkpoints of one run"
            )


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """Element-wise mean of the weights of `paths`; metadata from the last one."""
    if not paths:
        raise ValueError("no checkpoints to average")
    refuse_overwrite(out, {"the checkpoint to average": paths})
    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[-1]
    keys = first["model"].keys()
    for p, c in zip(paths, ckpts):
        same = (
            c["model"].keys() == keys
            and c["config"]["model"] == first["config"]["model"]
            and _same(c["codecs"], first["codecs"])
        )  # same architecture and the same vocabularies
        if not same:
            raise ValueError(f"{p}: a different model or vocabulary than {paths[-1]}; average checkpoints of one run")
        _check_tensors(c["model"], p, first["model"], paths[-1])
    avg = {}
    for k in keys:
        t = first["model"][k]
        avg[k] = torch.stack([c["model"][k].float() for c in ckpts]).mean(0).to(t.dtype) if t.is_floating_point() else t
    state = {
        **{k: v for k, v in first.items() if k != "train_state"},
        "model": avg,
        "metrics": {"averaged": [str(p) for p in paths]},
    }
    save_state(out, state)
    return out
