"""Stopping and continuing a run exactly: its folders, the resume checks and restore, RNG states,
the metrics log of a repeated epoch, the resume command, and SIGINT/SIGTERM as a flag."""
from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import sys
from pathlib import Path

import torch

from mt_cli.atomic import check_writable, remove_stale_temps, write_text
from mt_cli.checkpoint import CheckpointError, load_checkpoint
from mt_cli.config import Config
from mt_cli.runs import flatten

# Config keys that may differ between a run and its resumption (they change when or how often things
# happen, not what a step computes). Anything else must match the checkpoint's config.
RESUMABLE_CHANGES = ("name", "data.root", "train.epochs", "train.max_steps", "train.early_stopping",
                     "train.save_every", "train.keep_last", "train.average_last", "train.max_nonfinite",
                     "train.max_oom", "train.tensorboard", "decode.")


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


def _run_name(last: Path) -> str | None:
    """The config name recorded in a checkpoint (memory-mapped: the weights are not read); None if unreadable."""
    try:
        ck = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        return ck["config"]["name"]
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is loaded for real
        return None


def find_last(saved_root: str | Path, name: str) -> Path:
    """The last.pt that plain `--resume` continues: of saved/<name>/ and saved/<name>-N/ (runs started
    again with the same config get a suffix), the most recently written one."""
    root = Path(saved_root)
    pattern = re.compile(re.escape(name) + r"(-\d+)?")
    found = [d / "last.pt" for d in root.glob(f"{name}*") if pattern.fullmatch(d.name) and (d / "last.pt").is_file()
             and (d.name == name or _run_name(d / "last.pt") in (name, None))]  # not an experiment "<name>-2020"
    if not found:
        raise CheckpointError(f"{root / name / 'last.pt'}: no run named {name!r} to resume under {root}/; "
                              f"start it without --resume, or name a checkpoint with --resume-from PATH")
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
    a, b = _flat(old), _flat(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    ok = [k for k in changed if any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)]
    return ok, [k for k in changed if k not in ok]


def check_resume(ck: dict, cfg: Config, resume_path: Path, result_dir: Path, log) -> None:
    """Refuse a checkpoint that is not a last.pt of a run with this config; log the allowed changes."""
    if not isinstance(ck.get("train_state"), dict):
        raise CheckpointError(f"{resume_path}: holds weights only (best.pt, epoch_*.pt and averaged checkpoints "
                              f"do); resume from last.pt")
    allowed, refused = config_changes(ck["config"], cfg.to_dict())
    if refused:
        recorded = result_dir / "config.yaml"
        how = f"--config {recorded}" if recorded.is_file() else "the config it was started with"
        raise ValueError(f"{resume_path}: the run was started with another config ({', '.join(refused[:4])}"
                         f"{' …' if len(refused) > 4 else ''} differ); resume it with {how}")
    for k in allowed:
        log(f"resuming with a changed {k}: {_flat(ck['config']).get(k)} -> {_flat(cfg.to_dict()).get(k)}")


def restore_training(ck: dict, *, model, opt, schedule, scaler, acc: torch.Tensor, progress: dict, dev,
                     rank: int, world: int, log) -> None:
    """Load last.pt's weights, optimizer, schedule, scaler, progress, and this rank's RNG and loss sums."""
    ts = ck["train_state"]
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ts["optimizer"])
    if opt.defaults.get("fused"):  # load_state_dict may turn a tensor lr into a float; captured steps need it
        for g in opt.param_groups:
            g["lr"] = torch.tensor(float(g["lr"]), device=dev)
    schedule.load_state_dict(ts["schedule"])
    if scaler is not None and ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    progress.update({k: v for k, v in ts["progress"].items() if k in progress})
    ranks = ts.get("ranks") or [{"rng": ts["rng"], "acc": None}]  # older last.pt: rank 0's RNG only
    old_world = int(ts["progress"].get("world", 1))
    if old_world == world and len(ranks) == world:
        mine = ranks[rank]
        set_rng_state(mine["rng"], dev)
        if mine.get("acc") is not None:
            acc.copy_(mine["acc"].to(acc.device))
    else:  # another process count: the shares of the epoch differ, so continue from about the same point
        progress["position"] = progress["position"] * old_world // world
        set_rng_state(ranks[rank % len(ranks)]["rng"], dev)
        if rank == 0 and all(r.get("acc") is not None for r in ranks):
            acc.copy_(sum(r["acc"] for r in ranks).to(acc.device))
        log(f"warning: resuming with {world} process(es), the run used {old_world}: the epoch continues from "
            f"about the same point, but the result will not be bit-identical to an uninterrupted run")


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2 ** 32)


def rng_state(device) -> dict:
    """Every random generator a step may draw from, as tensors and plain data (weights_only-loadable)."""
    py = random.getstate()
    st = {"python": list(py[1]), "python_pos": py[2], "torch": torch.get_rng_state()}
    np = sys.modules.get("numpy")
    if np is not None:
        s = np.random.get_state()
        st["numpy"] = [str(s[0]), [int(x) for x in s[1]], int(s[2]), int(s[3]), float(s[4])]
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device) -> None:
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    torch.set_rng_state(st["torch"])
    if st.get("numpy") is not None:
        import numpy as np

        name, keys, pos, has_gauss, gauss = st["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if device.type == "cuda" and st.get("cuda") is not None:
        torch.cuda.set_rng_state(st["cuda"], device)


def weights_sha256(state: dict) -> str:
    """A hash of a model's weights (state-dict order), to check that processes hold identical copies."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


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


class Signals:
    """Turn SIGINT/SIGTERM into a flag checked between steps (a safe point to save).

    In one process the first signal restores the previous handlers, so a second Ctrl-C stops at once.
    Under torchrun a worker gets each signal twice (from the terminal or scheduler, and forwarded by the
    torchrun agent), so there the flag handler stays, and also while the process exits after the stop."""

    def __init__(self, log=print, second_quits: bool = True):
        self.hit = None
        self.log = log
        self.second_quits = second_quits
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.hit is None:
            self.hit = signal.Signals(signum).name
            if self.second_quits:
                self._restore()
            self.log(f"{self.hit} received: finishing this step, then saving"
                     f"{' (send it again to quit at once)' if self.second_quits else ''}")

    def _restore(self):
        for s, h in self._old.items():
            try:
                signal.signal(s, h)
            except (ValueError, TypeError):
                pass
        self._old = {}

    def __exit__(self, exc_type, *exc):
        if exc_type is None or self.hit is None:
            self._restore()
