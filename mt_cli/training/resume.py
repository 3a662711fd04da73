"""Run folders, and continuing a run: finding its last.pt, checking it against the config, restoring it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from mt_cli.atomic import check_writable, remove_stale_temps, write_text
from mt_cli.checkpoint import CheckpointError, load_checkpoint
from mt_cli.config import Config
from mt_cli.config.flat import flatten
from mt_cli.torch_io import safe_load
from mt_cli.training.rng import set_rng_state
from mt_cli.training.state import RunState, TrainState

# Config keys that may differ between a run and its resumption (they change when or how often things
# happen, not what a step computes). Anything else must match the checkpoint's config.
RESUMABLE_CHANGES = (
    "name",
    "data.root",
    "train.epochs",
    "train.max_steps",
    "train.early_stopping",
    "train.save_every",
    "train.keep_last",
    "train.average_last",
    "train.max_nonfinite",
    "train.max_oom",
    "train.tensorboard",
    "decode.",
)


def run_folders(cfg: Config, saved_root: str, result_root: str, claim: bool = False) -> tuple[Path, Path]:
    """The folders of a new run, saved/<name> and result/<name>, with a numeric suffix where either exists:
    a run never overwrites another. `claim` creates them atomically, so runs of one config started at the
    same moment (a sweep) each get their own."""
    n = 0
    while True:
        n += 1
        name = cfg.name if n == 1 else f"{cfg.name}-{n}"
        saved, result = Path(saved_root) / name, Path(result_root) / name
        if saved.exists() or result.exists():
            continue
        if not claim:
            return saved, result
        try:
            saved.mkdir(parents=True)  # exactly one process creates it
        except FileExistsError:
            continue
        try:
            result.mkdir(parents=True)
        except FileExistsError:  # appeared meanwhile without its saved/ twin: leave the name to its owner
            saved.rmdir()
            continue
        return saved, result


def discard_run_folders(saved_dir: Path, result_dir: Path) -> None:
    """Remove the folders of a new run that failed before it saved anything to continue from (no last.pt):
    left behind, they would only shift the next run's name."""
    if (saved_dir / "last.pt").exists():
        return
    for folder in (saved_dir, result_dir):
        shutil.rmtree(folder, ignore_errors=True)


def _run_name(last: Path) -> str | None:
    """The config name recorded in a checkpoint (memory-mapped: the weights are not read); None if unreadable."""
    try:
        checkpoint = safe_load(last, "checkpoint", CheckpointError, mmap=True)
        return checkpoint["config"]["name"]
    except (CheckpointError, KeyError, TypeError):  # an unreadable file is reported when it is loaded for real
        return None


def find_last(saved_root: str | Path, name: str) -> Path:
    """The last.pt that plain `--resume` continues: of saved/<name>/ and saved/<name>-N/ (runs started
    again with the same config get a suffix), the most recently written one."""
    root = Path(saved_root)
    pattern = re.compile(re.escape(name) + r"(-\d+)?")
    found = [
        d / "last.pt"
        for d in root.glob(f"{name}*")
        if pattern.fullmatch(d.name)
        and (d / "last.pt").is_file()
        and (d.name == name or _run_name(d / "last.pt") in (name, None))
    ]  # not an experiment "<name>-2020"
    if not found:
        raise CheckpointError(
            f"{root / name / 'last.pt'}: no run named {name!r} to resume under {root}/; "
            f"start it without --resume, or name a checkpoint with --resume-from PATH"
        )
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def open_run(cfg: Config, resume, saved_root: str, result_root: str) -> tuple[Path, Path, Path | None]:
    """(rank 0) Choose the run folders, check they could be written, and clear a crashed writer's temp files."""
    resume_path = None
    if resume:
        resume_path = Path(resume) if isinstance(resume, (str, Path)) else find_last(saved_root, cfg.name)
        if not resume_path.is_file():  # the clear one-line error for a missing/odd path
            load_checkpoint(resume_path)
        saved_dir, result_dir = resume_path.parent, Path(result_root) / resume_path.parent.name
    else:
        saved_dir, result_dir = run_folders(cfg, saved_root, result_root)
    check_writable(saved_dir)  # creates nothing yet: train() claims the folders once the run can start
    check_writable(result_dir)
    remove_stale_temps(saved_dir)
    remove_stale_temps(result_dir)
    return saved_dir, result_dir, resume_path


def _flat(d: dict) -> dict:
    return flatten(json.loads(json.dumps(d)))  # tuples → lists: a loaded config compares equal to a fresh one


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes allowed on resume, changes that are not) between two config dicts."""
    old_flat, new_flat = _flat(old), _flat(new)
    changed = sorted(
        k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k, "<unset>") != new_flat.get(k, "<unset>")
    )
    allowed = [
        k for k in changed if any(k == key or (key.endswith(".") and k.startswith(key)) for key in RESUMABLE_CHANGES)
    ]
    return allowed, [k for k in changed if k not in allowed]


def check_resume(checkpoint: dict, cfg: Config, resume_path: Path, result_dir: Path, log) -> None:
    """Refuse a checkpoint that is not a last.pt of a run with this config; log the allowed changes."""
    if not isinstance(checkpoint.get("train_state"), dict):
        raise CheckpointError(
            f"{resume_path}: holds weights only (best.pt, epoch_*.pt and averaged checkpoints do); resume from last.pt"
        )
    allowed, refused = config_changes(checkpoint["config"], cfg.to_dict())
    if refused:
        recorded = result_dir / "config.yaml"
        how = f"--config {recorded}" if recorded.is_file() else "the config it was started with"
        raise ValueError(
            f"{resume_path}: the run was started with another config ({', '.join(refused[:4])}"
            f"{' …' if len(refused) > 4 else ''} differ); resume it with {how}"
        )
    old, new = _flat(checkpoint["config"]), _flat(cfg.to_dict())
    for k in allowed:
        log(f"resuming with a changed {k}: {old.get(k)} -> {new.get(k)}")


def restore_training(checkpoint: dict, parts, *, rank: int, world: int, log) -> RunState:
    """Load last.pt's weights, optimizer, schedule, scaler and this rank's RNG and loss sums into the
    Components `parts`; returns the run's progress."""
    saved = TrainState.from_dict(checkpoint["train_state"])
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(saved.optimizer)
    if parts.optimizer.defaults.get("capturable"):  # load_state_dict may turn a tensor lr into a float; graphs need it
        for group in parts.optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=parts.device)
    parts.schedule.load_state_dict(saved.schedule)
    if parts.scaler is not None and saved.scaler:
        parts.scaler.load_state_dict(saved.scaler)
    state = RunState.from_dict(saved.progress)
    accumulators = parts.stepper.acc
    if state.world == world and len(saved.ranks) == world:
        mine = saved.ranks[rank]
        set_rng_state(mine["rng"], parts.device)
        if mine.get("acc") is not None:
            accumulators.copy_(mine["acc"].to(accumulators.device))
    else:  # another process count: the shares of the epoch differ, so continue from about the same point
        state.position = state.position * state.world // world
        set_rng_state(saved.ranks[rank % len(saved.ranks)]["rng"], parts.device)
        if rank == 0 and all(r.get("acc") is not None for r in saved.ranks):
            accumulators.copy_(sum(r["acc"] for r in saved.ranks).to(accumulators.device))
        log(
            f"warning: resuming with {world} process(es), the run used {state.world}: the epoch continues from "
            f"about the same point, but the result will not be bit-identical to an uninterrupted run"
        )
    state.world = world
    return state


def truncate_metrics(path: Path, first_epoch: int) -> int:
    """Drop metric lines of epochs >= first_epoch: a run stopped after logging an epoch but before its
    checkpoint repeats that epoch on resume, and must not log it twice. Returns the number dropped."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            epoch = json.loads(line).get("epoch")
        except (ValueError, AttributeError):
            epoch = None
        if isinstance(epoch, int) and epoch >= first_epoch:
            dropped += 1
        elif line.strip():
            keep.append(line)
    if dropped:
        write_text(path, "".join(x + "\n" for x in keep))
    return dropped


def resume_command(saved_dir: Path, result_dir: Path, result_root: str, device: str, world: int = 1) -> str:
    """The command that continues this run (named in the message of a stopped run)."""
    cmd = f"train --config {result_dir / 'config.yaml'} --resume-from {saved_dir / 'last.pt'}"
    cmd = f"torchrun <the same torchrun options> -m mt_cli {cmd}" if world > 1 else f"mt {cmd}"
    if Path(result_root) != Path("result"):
        cmd += f" --result {result_root}"
    if device != "auto":
        cmd += f" --device {device}"
    return cmd


def initial_weights(cfg: Config, codecs: dict, log) -> dict:
    """The weights of train.init_from, for a new run that fine-tunes them on its own data with a fresh
    optimizer and schedule; refused unless the model and both vocabularies are the ones of this run."""
    path = Path(cfg.train.init_from)
    checkpoint = load_checkpoint(path)
    saved_model, this_model = _flat(checkpoint["config"]["model"]), _flat(cfg.to_dict()["model"])
    changed = [k for k in sorted(saved_model.keys() | this_model.keys()) if saved_model.get(k) != this_model.get(k)]
    if changed:
        raise CheckpointError(
            f"{path}: train.init_from needs the same model; model.{changed[0]} differs "
            f"({len(changed)} key(s)); use the checkpoint's model settings"
        )
    from mt_cli.data.tokenize import SideCodec  # (a light import; here only to read the saved vocabularies)

    for side in ("src", "tgt"):
        saved = SideCodec.from_state(checkpoint["codecs"][side]).vocab.itos
        if saved != codecs[side].vocab.itos:
            raise CheckpointError(
                f"{path}: train.init_from needs the same {side} vocabulary as the prepared corpus "
                f"({len(saved)} vs {len(codecs[side].vocab.itos)} tokens); prepare the new data "
                f"with the checkpoint's vocabulary settings (e.g. a shared sentencepiece model)"
            )
    log(f"starting from the weights of {path} (epoch {checkpoint.get('epoch')}), with a fresh optimizer and schedule")
    return checkpoint["model"]
