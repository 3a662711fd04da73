"""Self-contained checkpoints: weights + plain metadata, saved atomically, loaded without running code."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from mt_cli import __version__
from mt_cli.atomic import atomic_path
from mt_cli.config import Config, ConfigError, config_from_dict
from mt_cli.data.tokenize import SideCodec
from mt_cli.model.transformer import Transformer, build_model

FORMAT = "mt_cli-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, foreign or unsafe."""


def save_checkpoint(path: Path, *, model, cfg: Config, codecs: dict, epoch: int, step: int,
                    metrics: dict | None = None, train_state: dict | None = None) -> None:
    state = {
        "format": FORMAT, "version": __version__, "config": cfg.to_dict(),
        "codecs": {side: c.state() for side, c in codecs.items()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": epoch, "step": step, "metrics": metrics or {},
    }
    if train_state is not None:
        state["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True: tensors and plain data only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain data, "
                              f"which could run code ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else 'truncated'})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mt_cli checkpoint (expected format {FORMAT})")
    return ckpt


def restore(ckpt: dict, path: str | Path = "checkpoint") -> tuple[Transformer, Config, dict]:
    """Rebuild (model, config, codecs) from a loaded checkpoint."""
    try:
        cfg = config_from_dict(ckpt["config"])
        codecs = {side: SideCodec.from_state(ckpt["codecs"][side]) for side in ("src", "tgt")}
        from mt_cli.data.vocab import PAD

        model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD)
        model.load_state_dict(ckpt["model"])
    except (ConfigError, KeyError, RuntimeError, TypeError) as e:
        msg = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: incompatible checkpoint (written by mt_cli {ckpt.get('version', '?')}, "
                              f"this is {__version__}): {msg}") from None
    return model, cfg, codecs


def load_for_inference(path: str | Path, device: torch.device):
    model, cfg, codecs = restore(load_checkpoint(path), path)
    return model.to(device).eval(), cfg, codecs
