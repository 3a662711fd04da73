"""`mt train`: open (or continue) a run, build its parts, fit it, and test it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from mt_cli import distributed
from mt_cli.atomic import write_json, write_text
from mt_cli.checkpoint import load_checkpoint
from mt_cli.config import Config
from mt_cli.data.prepare import corpus_dir, load_corpus
from mt_cli.evaluate import final_test
from mt_cli.safe_parse import read_json_or_none
from mt_cli.training.components import Components, build_components
from mt_cli.training.resume import (
    check_resume,
    discard_run_folders,
    initial_weights,
    open_run,
    restore_training,
    resume_command,
    run_folders,
    truncate_metrics,
)
from mt_cli.training.signals import Signals
from mt_cli.training.state import RunState, StopReason
from mt_cli.training.trainer import RunContext, Trainer
from mt_cli.writer import Writer


def _silent(*_) -> None:
    """The log of ranks other than 0: rank 0 reports for all."""


def train(
    cfg: Config,
    device: str = "auto",
    resume: str | Path | bool | None = None,
    saved_root: str = "saved",
    result_root: str = "result",
    log=print,
) -> dict:
    """Train `cfg`; returns a summary (run folders, best metrics, test report).

    `resume`: True continues the newest saved/<cfg.name>[-N]/last.pt; a path continues that checkpoint."""
    started = time.time()
    dev = distributed.resolve_device(device)
    distributed.setup(dev.type)
    dev = distributed.device_for_rank(dev)
    rank, world = distributed.rank(), distributed.world()
    log = log if rank == 0 else _silent
    from mt_cli.plots import EpochReport  # matplotlib: only once a run starts

    # curves.png (+ TensorBoard): checked now, never fatal later
    report_epoch = EpochReport(cfg, log, enabled=rank == 0)
    saved_dir, result_dir, resume_path = distributed.on_main(open_run, cfg, resume, saved_root, result_root)
    resume_from = {}  # holds last.pt's content until it is restored, so that it can be let go of then (~300 MB)
    if resume_path:  # checked before anything slow: a bad checkpoint or config fails at once
        resume_from["checkpoint"] = distributed.on_main(load_checkpoint, resume_path)  # read once, sent to all
        check_resume(resume_from["checkpoint"], cfg, resume_path, result_dir, log)
    with Signals(log, second_quits=world == 1) as signals:  # from here on, a signal stops the run cleanly
        codecs, train_split, valid_split, _ = load_corpus(cfg, cfg.train.bucket_width)
        if cfg.train.init_from and not resume_path:  # checked before the run claims its folders
            resume_from["weights"] = distributed.on_main(initial_weights, cfg, codecs, log)
        saved_dir, result_dir = _claim_folders(cfg, saved_dir, result_dir, resume_path, saved_root, result_root)
        hint = resume_command(saved_dir, result_dir, result_root, device, world)
        ctx = RunContext(cfg, dev, rank, world, saved_dir, result_dir, hint, log)
        try:
            parts, state = _fit(
                ctx, codecs, (train_split, valid_split), resume_from, resume_path, signals, report_epoch
            )
        except BaseException:
            if not resume_path and rank == 0:
                discard_run_folders(saved_dir, result_dir)
            raise
    return _finish(ctx, parts, state, started)


def _fit(
    ctx: RunContext,
    codecs: dict,
    splits: tuple,
    resume_from: dict,
    resume_path: Path | None,
    signals: Signals,
    report_epoch,
) -> tuple[Components, RunState]:
    """Build the run's parts on its device, set its starting state, and train it to its end."""
    cfg, log = ctx.cfg, ctx.log
    train_split, valid_split = (split.to(ctx.device) for split in splits)
    parts = build_components(
        cfg, len(codecs["src"].vocab), len(codecs["tgt"].vocab), ctx.device, log, ctx.rank, ctx.world
    )
    state = _starting_state(ctx, parts, resume_from, resume_path)
    _log_start(ctx, parts, len(train_split))
    log(f"batches: {train_split.description}; {valid_split.description}")
    refs = _valid_refs(cfg) if ctx.is_main and cfg.train.val_bleu else []
    with Writer() as writer:
        trainer = Trainer(ctx, parts, codecs, train_split, valid_split, refs, state, signals, writer, report_epoch)
        if trainer.stop is not None and resume_path:
            log(
                f"the run already reached {_why(trainer.stop, cfg)}; raise it to train longer (now only the "
                f"final test runs)"
            )
        trainer.fit()
    return parts, state


def _claim_folders(
    cfg: Config, saved_dir: Path, result_dir: Path, resume_path: Path | None, saved_root: str, result_root: str
) -> tuple[Path, Path]:
    """The run can start: a new one claims its name (the next run of this config gets -2)."""
    if not resume_path:
        return distributed.on_main(run_folders, cfg, saved_root, result_root, claim=True)
    if distributed.rank() == 0:
        saved_dir.mkdir(parents=True, exist_ok=True)
        result_dir.mkdir(parents=True, exist_ok=True)
    return saved_dir, result_dir


def _starting_state(ctx: RunContext, parts: Components, resume_from: dict, resume_path: Path | None) -> RunState:
    """Fresh, fine-tuned from train.init_from, or restored from last.pt; the result folder made ready."""
    state = RunState(world=ctx.world)
    if "weights" in resume_from:
        parts.model.load_state_dict(resume_from.pop("weights"))
    if "checkpoint" in resume_from:
        state = restore_training(resume_from.pop("checkpoint"), parts, rank=ctx.rank, world=ctx.world, log=ctx.log)
        ctx.log(f"resuming {resume_path}: epoch {state.epoch}, step {state.step}, batch {state.position}")
    kept_validation = _apply_validated(state, ctx.cfg)
    if ctx.is_main:
        _prepare_result_folder(ctx, resumed=resume_path is not None, kept_validation=kept_validation, epoch=state.epoch)
    return state


def _apply_validated(state: RunState, cfg: Config) -> bool:
    """A run that ended by train.max_steps mid-epoch resumes with that epoch's validation, unless a larger
    max_steps lets it finish the epoch (which is then validated again). Returns whether it was applied."""
    validated, state.validated = state.validated, None
    ended = bool(cfg.train.max_steps and state.step >= cfg.train.max_steps)
    if validated is not None and ended:
        state.apply(validated)
        return True
    return False


def _prepare_result_folder(ctx: RunContext, resumed: bool, kept_validation: bool, epoch: int) -> None:
    """(rank 0) Drop what a resumed run will write again, and record the resolved config."""
    result_dir, log = ctx.result_dir, ctx.log
    if resumed:  # the old summary describes an ended run; a new one comes when this one ends
        (result_dir / "summary.json").unlink(missing_ok=True)
    if resumed and not kept_validation:  # a run that ended validated keeps its last line
        metrics_path = result_dir / "metrics.jsonl"
        dropped = truncate_metrics(metrics_path, epoch)
        if dropped:
            log(f"{metrics_path}: dropped {dropped} line(s) of epochs the checkpoint had not finished")
    resolved = json.loads(json.dumps(ctx.cfg.to_dict()))
    if read_json_or_none(result_dir / "config.json") != resolved or not (result_dir / "config.yaml").is_file():
        # (unchanged on resume: not rewritten, as `mt runs` orders runs by its time)
        write_json(result_dir / "config.json", resolved)
        write_text(result_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def _log_start(ctx: RunContext, parts: Components, pairs: int) -> None:
    dev = ctx.device
    ctx.log(
        f"run {ctx.saved_dir.name}: {parts.parameters / 1e6:.2f}M parameters, device {dev}"
        f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}"
        f"{f' x {ctx.world} processes' if ctx.world > 1 else ''}, precision "
        f"{str(parts.amp_dtype).removeprefix('torch.')}, {'CUDA graphs' if parts.stepper.use_graphs else 'eager'}"
        f" steps, {pairs} training pairs"
    )


def _valid_refs(cfg: Config) -> list[str]:
    """The validation references, normalized as at prepare time (read once for the whole run)."""
    path = corpus_dir(cfg.data) / f"valid.ref.{cfg.data.tgt_lang}"
    return path.read_text(encoding="utf-8").splitlines()


def _why(reason: StopReason, cfg: Config) -> str:
    if reason is StopReason.EARLY_STOPPING:
        return "early stopping"
    if reason is StopReason.MAX_STEPS:
        return f"train.max_steps={cfg.train.max_steps}"
    return f"train.epochs={cfg.train.epochs}"


def _finish(ctx: RunContext, parts: Components, state: RunState, started: float) -> dict:
    """The run's summary; rank 0 runs the final test and writes summary.json."""
    summary = {
        "run": ctx.saved_dir.name,
        "saved": str(ctx.saved_dir),
        "result": str(ctx.result_dir),
        "parameters": parts.parameters,
        "best_epoch": state.best_epoch,
        f"best_{ctx.cfg.train.best_metric}": state.best,
        "skipped_updates": state.skipped,
        "processes": ctx.world,
        "rank": ctx.rank,
        "train_seconds": round(time.time() - started, 1),
        "device": distributed.device_name(ctx.device),
    }
    if ctx.is_main:
        summary["test"] = final_test(ctx.cfg, ctx.saved_dir, ctx.result_dir, ctx.device, parts.amp_dtype, ctx.log)
        summary["total_seconds"] = round(time.time() - started, 1)
        write_json(ctx.result_dir / "summary.json", summary)
    distributed.barrier()
    distributed.teardown()
    return summary
