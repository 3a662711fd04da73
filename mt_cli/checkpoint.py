"""Self-contained checkpoints: weights + plain metadata, saved atomically, loaded without running code."""
from __future__ import annotations

import pickle
import re
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


def save_state(path: str | Path, state: dict) -> None:
    """torch.save `state` atomically. Writing through a Python file object turns a full disk into an
    OSError (ENOSPC), which atomic_path reports as a clear OutputError, instead of a zip-writer RuntimeError."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def checkpoint_state(*, weights: dict, cfg: Config, codecs: dict, epoch: int, step: int,
                     metrics: dict | None = None, train_state: dict | None = None) -> dict:
    """What a checkpoint file holds; `weights` is a model's state dict."""
    state = {
        "format": FORMAT, "version": __version__, "config": cfg.to_dict(),
        # data.root is kept as written (often relative); the absolute path lets `mt evaluate` find the
        # corpus when run from another folder.
        "data_root_abs": str(Path(cfg.data.root).resolve()),
        "codecs": {side: c.state() for side, c in codecs.items()},
        "model": weights, "epoch": epoch, "step": step, "metrics": metrics or {},
    }
    if train_state is not None:
        state["train_state"] = train_state
    return state


def save_checkpoint(path: Path, *, model, cfg: Config, codecs: dict, epoch: int, step: int,
                    metrics: dict | None = None, train_state: dict | None = None) -> None:
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_state(path, checkpoint_state(weights=weights, cfg=cfg, codecs=codecs, epoch=epoch, step=step,
                                      metrics=metrics, train_state=train_state))


def _first_line(e: BaseException, default: str = "") -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else default


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True: tensors and plain data only, never code. Every way a file can be
    unusable (missing, empty, truncated, foreign, unsafe) becomes a one-line CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint (an interrupted copy?)")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise CheckpointError(f"{path}: not a checkpoint (not a file written by torch.save)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))
        if unsafe:
            raise CheckpointError(f"{path}: refused to load: it asks to import {unsafe.group(1)}, which could run "
                                  f"code; mt_cli only loads tensors and plain data (weights_only). "
                                  f"Do not use checkpoints from untrusted sources") from None
        op = re.search(r"(Unsupported operand \d+|Unsupported class [\w.]+)", str(e))
        raise CheckpointError(f"{path}: refused to load: not an mt_cli checkpoint (data other than tensors and "
                              f"plain values{': ' + op.group(1) if op else ''})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, EOFError) or re.search(r"central directory|truncat|EOF", str(e)):
            raise CheckpointError(f"{path}: damaged: the file is truncated (a crash while copying or writing it?); "
                                  f"use another copy") from None
        first = re.split(r"(?<=\.) ", _first_line(e, type(e).__name__))[0]
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({first})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - foreign files fail in many ways (KeyError, ValueError, ...)
        raise CheckpointError(f"{path}: not a checkpoint ({type(e).__name__}: {_first_line(e, 'unreadable')})") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mt_cli checkpoint (expected format {FORMAT})")
    missing = [k for k in ("config", "codecs", "model") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    return ckpt


def _find_data_root(cfg: Config, recorded: str | None) -> None:
    """Use the absolute corpus folder recorded at training time when data.root means nothing from here."""
    if recorded and not (Path(cfg.data.root) / cfg.data.corpus_name).is_dir() \
            and (Path(recorded) / cfg.data.corpus_name).is_dir():
        cfg.data.root = recorded


def restore(ckpt: dict, path: str | Path = "checkpoint") -> tuple[Transformer, Config, dict]:
    """Rebuild (model, config, codecs) from a loaded checkpoint."""
    try:
        cfg = config_from_dict(ckpt["config"])
        _find_data_root(cfg, ckpt.get("data_root_abs"))
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
