"""Self-contained checkpoints: weights + plain metadata, saved atomically, loaded without running code."""

from __future__ import annotations

from pathlib import Path

import torch

from mt_cli import __version__, torch_io
from mt_cli.config import Config, ConfigError, config_from_dict
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import PAD
from mt_cli.model.transformer import Transformer, build_model

FORMAT = "mt_cli-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, foreign or unsafe."""


def save_state(path: str | Path, state: dict) -> None:
    """torch.save `state` atomically; a full disk is `cannot write PATH: the disk is full`, the old file intact."""
    torch_io.save(path, state)


def checkpoint_state(
    *,
    weights: dict,
    cfg: Config,
    codecs: dict,
    epoch: int,
    step: int,
    metrics: dict | None = None,
    train_state: dict | None = None,
) -> dict:
    """What a checkpoint file holds; `weights` is a model's state dict."""
    state = {
        "format": FORMAT,
        "version": __version__,
        "config": cfg.to_dict(),
        # data.root is kept as written (often relative); the absolute path lets `mt evaluate` find the
        # corpus when run from another folder.
        "data_root_abs": str(Path(cfg.data.root).resolve()),
        "codecs": {side: c.state() for side, c in codecs.items()},
        "model": weights,
        "epoch": epoch,
        "step": step,
        "metrics": metrics or {},
    }
    if train_state is not None:
        state["train_state"] = train_state
    return state


def save_checkpoint(
    path: Path,
    *,
    model,
    cfg: Config,
    codecs: dict,
    epoch: int,
    step: int,
    metrics: dict | None = None,
    train_state: dict | None = None,
) -> None:
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_state(
        path,
        checkpoint_state(
            weights=weights, cfg=cfg, codecs=codecs, epoch=epoch, step=step, metrics=metrics, train_state=train_state
        ),
    )


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True: tensors and plain data only, never code. Every way a file can be
    unusable (missing, empty, truncated, foreign, unsafe) becomes a one-line CheckpointError."""
    path = Path(path)
    ckpt = torch_io.safe_load(path, "checkpoint", CheckpointError)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mt_cli checkpoint (expected format {FORMAT})")
    missing = [k for k in ("config", "codecs", "model") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    return ckpt


def _find_data_root(cfg: Config, recorded: str | None) -> None:
    """Use the absolute corpus folder recorded at training time when data.root means nothing from here."""
    if (
        recorded
        and not (Path(cfg.data.root) / cfg.data.corpus_name).is_dir()
        and (Path(recorded) / cfg.data.corpus_name).is_dir()
    ):
        cfg.data.root = recorded


def restore(ckpt: dict, path: str | Path = "checkpoint") -> tuple[Transformer, Config, dict]:
    """Rebuild (model, config, codecs) from a loaded checkpoint."""
    try:
        cfg = config_from_dict(ckpt["config"])
        _find_data_root(cfg, ckpt.get("data_root_abs"))
        codecs = {side: SideCodec.from_state(ckpt["codecs"][side]) for side in ("src", "tgt")}
        model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD)
        misfit = weights_misfit(ckpt["model"], model.state_dict())
        if misfit:
            raise RuntimeError(misfit)
        model.load_state_dict(ckpt["model"])
    except (ConfigError, KeyError, RuntimeError, TypeError) as e:
        msg = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: incompatible checkpoint (written by mt_cli {ckpt.get('version', '?')}, "
            f"this is {__version__}): {msg}"
        ) from None
    return model, cfg, codecs


def weights_misfit(weights: dict, expected: dict) -> str | None:
    """What first keeps `weights` from loading into a model whose state dict is `expected`, naming the
    tensor (torch only says `Error(s) in loading state_dict`); None when they fit."""
    for name, want in expected.items():
        got = weights.get(name)
        if got is None:
            return f"tensor {name} is missing from the file"
        if not isinstance(got, torch.Tensor):
            return f"{name} is a {type(got).__name__}, not a tensor"
        if got.shape != want.shape:
            return (
                f"tensor {name} has shape {list(got.shape)} in the file but {list(want.shape)} in the model "
                f"its config describes"
            )
    unexpected = next((k for k in weights if k not in expected), None)
    return f"tensor {unexpected} in the file is not part of the model its config describes" if unexpected else None


def load_for_inference(path: str | Path, device: torch.device):
    model, cfg, codecs = restore(load_checkpoint(path), path)
    return model.to(device).eval(), cfg, codecs


def load_models(paths: list[str], device: torch.device):
    """(model, config, codecs) of one checkpoint, or the Ensemble of several that share their tokenizers and
    vocabularies (trained on the same prepared corpus); the first one's config sets decoding and data."""
    from mt_cli.model.ensemble import Ensemble

    loaded = [load_for_inference(p, device) for p in paths]
    model, cfg, codecs = loaded[0]
    if len(loaded) == 1:
        return model, cfg, codecs
    for path, (_, _, other) in zip(paths[1:], loaded[1:]):
        for side in ("src", "tgt"):
            if not _same_codec(codecs[side], other[side]):
                raise CheckpointError(
                    f"{path}: its {side} tokenizer or vocabulary differs from that of {paths[0]}; an ensemble "
                    f"needs models trained on the same prepared corpus"
                )
    return Ensemble([m for m, _, _ in loaded]).eval(), cfg, codecs


def _same_codec(a: SideCodec, b: SideCodec) -> bool:
    return (a.kind, a.lang, a.lowercase, list(a.vocab.itos), a.sp_model) == (
        b.kind,
        b.lang,
        b.lowercase,
        list(b.vocab.itos),
        b.sp_model,
    )
