"""`mt train`: the training loop (validation with real decoding, checkpoints, logs, final test).

Reliability (see docs/reliability.md): last.pt holds everything needed to continue a run exactly
(model, optimizer, LR schedule, grad scaler, progress, best metric, early-stopping counter, every
rank's RNG states and loss accumulators, the position in the epoch's batch order); it is written
atomically at epoch ends, every train.save_every steps, and when SIGINT/SIGTERM stops the run."""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mt_cli import distributed as D
from mt_cli.atomic import append_line, check_writable, remove_stale_temps, write_json, write_text
from mt_cli.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mt_cli.config import Config
from mt_cli.data.batching import Split, batch_plan, iterate, shard
from mt_cli.data.prepare import corpus_dir, load_manifest
from mt_cli.data.sources import DataError
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import PAD
from mt_cli.evaluate import decode_split, evaluate_splits, score
from mt_cli.model import build_model
from mt_cli.schedule import LRSchedule
from mt_cli.steps import BAD_RUN, LOSS, SKIPPED, STEPS, TOKENS, Stepper, autocast, loss_sum, resolve_precision

# Config keys that may differ between a run and its resumption (they change when or how often things
# happen, not what a step computes). Anything else must match the checkpoint's config.
RESUMABLE_CHANGES = ("name", "data.root", "train.epochs", "train.max_steps", "train.early_stopping",
                     "train.save_every", "train.keep_last", "train.average_last", "train.max_nonfinite",
                     "train.max_oom", "train.tensorboard", "decode.")


class TrainingStopped(RuntimeError):
    """Training ended early for a reason the user must see (non-finite losses, OOM, signal)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu or auto")
    return dev


def load_corpus(cfg: Config, bucket_width: int):
    folder = corpus_dir(cfg.data)
    man = load_manifest(folder)
    if man.get("fingerprint") != cfg.data.fingerprint():
        raise DataError(f"{folder}: prepared with another data config; run `mt prepare --config <this config>`")
    codec_state = torch.load(folder / "codecs.pt", map_location="cpu", weights_only=True)
    codecs = {side: SideCodec.from_state(codec_state[side]) for side in ("src", "tgt")}
    return codecs, Split(folder / "train.pt", bucket_width), Split(folder / "valid.pt", bucket_width), man


def run_folders(cfg: Config, saved_root: str, result_root: str, resume: bool) -> tuple[Path, Path]:
    name = cfg.name
    if not resume:  # never overwrite an earlier run: add a numeric suffix
        n = 1
        while (Path(saved_root) / name).exists() or (Path(result_root) / name).exists():
            n += 1
            name = f"{cfg.name}-{n}"
    return Path(saved_root) / name, Path(result_root) / name


def find_last(saved_root: str | Path, name: str) -> Path:
    """The last.pt that plain `--resume` continues: of saved/<name>/ and saved/<name>-N/ (runs started
    again with the same config get a suffix), the most recently written one."""
    root = Path(saved_root)
    pattern = re.compile(re.escape(name) + r"(-\d+)?")
    found = [d / "last.pt" for d in root.glob(f"{name}*") if pattern.fullmatch(d.name) and (d / "last.pt").is_file()]
    if not found:
        raise CheckpointError(f"{root / name / 'last.pt'}: no run named {name!r} to resume under {root}/; "
                              f"start it without --resume, or name a checkpoint with --resume-from PATH")
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def _open_run(cfg: Config, resume, saved_root: str, result_root: str) -> tuple[Path, Path, Path | None]:
    """(rank 0) Choose the run folders, check they can be written, and clear a crashed writer's temp files."""
    resume_path = None
    if resume:
        resume_path = Path(resume) if isinstance(resume, (str, Path)) else find_last(saved_root, cfg.name)
        if not resume_path.is_file():  # the clear one-line error for a missing/odd path
            load_checkpoint(resume_path)
        saved_dir, result_dir = resume_path.parent, Path(result_root) / resume_path.parent.name
    else:
        saved_dir, result_dir = run_folders(cfg, saved_root, result_root, resume=False)
    check_writable(saved_dir)
    check_writable(result_dir)
    remove_stale_temps(saved_dir)
    remove_stale_temps(result_dir)
    return saved_dir, result_dir, resume_path


@torch.no_grad()
def validation_loss(model, split: Split, cfg: Config, device, amp_dtype) -> float:
    """Token-level cross-entropy (no label smoothing) on the validation split; with several processes,
    each scores a disjoint share (no wrap-around, so no sentence counts twice) and the sums are reduced.
    `model` is the plain module, never the DDP wrapper: shares may differ in length by one batch."""
    model.eval()
    total = torch.zeros(2, device=device)
    plan = batch_plan(split, None, cfg.train.max_tokens or 4096, shuffle=False, fill=False)[D.rank()::D.world()]
    for b in iterate(split, plan, device):
        with autocast(device, amp_dtype):
            loss, n = loss_sum(model, b.src, b.tgt_in, b.tgt_out, 0.0)
        total += torch.stack([loss.float(), n.float()])
    model.train()
    total = D.all_reduce_sum(total)
    return (total[0] / total[1].clamp(min=1)).item()


class _Signals:
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


def _better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new > best if metric == "val_bleu" else new < best


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2 ** 32)


def _rng_state(device) -> dict:
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


def _set_rng_state(st: dict, device) -> None:
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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = json.loads(json.dumps(v))  # tuples → lists
    return out


def _config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes allowed on resume, changes that are not) between two config dicts."""
    a, b = _flat(old), _flat(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    ok = [k for k in changed if any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)]
    return ok, [k for k in changed if k not in ok]


def _truncate_metrics(path: Path, first_epoch: int) -> int:
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


def train(cfg: Config, device: str = "auto", resume: str | Path | bool | None = None, saved_root: str = "saved",
          result_root: str = "result", log=print) -> dict:
    """Train `cfg`; returns a summary (run folders, best metrics, test report).

    `resume`: True continues the newest saved/<cfg.name>[-N]/last.pt; a path continues that checkpoint."""
    t_start = time.time()
    dev = resolve_device(device)
    D.setup(dev.type)
    dev = D.device_for_rank(dev)
    rank, world = D.rank(), D.world()
    is_main = rank == 0
    log = log if is_main else (lambda *_: None)
    from mt_cli.plots import EpochReport

    report_epoch = EpochReport(cfg, log, enabled=is_main)  # curves.png (+ TensorBoard): checked now, never fatal later
    saved_dir, result_dir, resume_path = D.on_main(_open_run, cfg, resume, saved_root, result_root)
    ck = None
    if resume_path:  # checked before anything slow: a bad checkpoint or config fails at once
        ck = D.on_main(load_checkpoint, resume_path)  # read once, sent to the others (no shared disk needed)
        ts = ck.get("train_state")
        if not isinstance(ts, dict):
            raise CheckpointError(f"{resume_path}: holds weights only (best.pt, epoch_*.pt and averaged checkpoints "
                                  f"do); resume from last.pt")
        allowed, refused = _config_changes(ck["config"], cfg.to_dict())
        if refused:
            raise ValueError(f"{resume_path}: the run was started with another config ({', '.join(refused[:4])}"
                             f"{' …' if len(refused) > 4 else ''} differ); resume it with --config "
                             f"{result_dir / 'config.yaml'}")
        for k in allowed:
            log(f"resuming with a changed {k}: {_flat(ck['config']).get(k)} -> {_flat(cfg.to_dict()).get(k)}")

    _seed_all(cfg.train.seed)
    codecs, train_split, valid_split, manifest = load_corpus(cfg, cfg.train.bucket_width)
    train_split.to(dev)
    valid_split.to(dev)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD).to(dev)
    if rank:  # same initial weights everywhere (seeded above), but each process its own dropout masks
        _seed_all(cfg.train.seed + 1000 * rank)
    n_params = sum(p.numel() for p in model.parameters())
    amp_dtype = resolve_precision(cfg.train.precision, dev)
    params = list(model.parameters())
    fused = dev.type == "cuda"
    lr = torch.tensor(cfg.train.lr, device=dev) if fused else cfg.train.lr
    opt = torch.optim.Adam(params, lr=lr, betas=cfg.train.betas, eps=cfg.train.eps,
                           weight_decay=cfg.train.weight_decay, fused=fused or None, capturable=fused)
    schedule = LRSchedule(opt, cfg.train)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    net = D.wrap(model, dev)
    if cfg.train.compile:
        net = torch.compile(net)
    use_graphs = cfg.train.cuda_graphs and dev.type == "cuda" and world == 1 and not cfg.train.compile
    stepper = Stepper(net, opt, params, device=dev, amp_dtype=amp_dtype, clip=cfg.train.clip,
                      label_smoothing=cfg.train.label_smoothing, use_graphs=use_graphs, scaler=scaler, log=log)

    st = {"epoch": 1, "step": 0, "position": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "elapsed": 0.0,
          "skipped": 0}
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ts["optimizer"])
        if fused:  # load_state_dict may turn a tensor lr into a float; captured steps need the tensor
            for g in opt.param_groups:
                g["lr"] = torch.tensor(float(g["lr"]), device=dev)
        schedule.load_state_dict(ts["schedule"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        st.update({k: v for k, v in ts["progress"].items() if k in st})
        ranks = ts.get("ranks") or [{"rng": ts["rng"], "acc": None}]  # older last.pt: rank 0's RNG only
        old_world = int(ts["progress"].get("world", 1))
        if old_world == world and len(ranks) == world:
            mine = ranks[rank]
            _set_rng_state(mine["rng"], dev)
            if mine.get("acc") is not None:
                stepper.acc.copy_(mine["acc"].to(stepper.acc.device))
        else:  # another process count: the shares of the epoch differ, so continue from about the same point
            st["position"] = st["position"] * old_world // world
            _set_rng_state(ranks[rank % len(ranks)]["rng"], dev)
            if rank == 0 and all(r.get("acc") is not None for r in ranks):
                stepper.acc.copy_(sum(r["acc"] for r in ranks).to(stepper.acc.device))
            log(f"warning: resuming with {world} process(es), the run used {old_world}: the epoch continues from "
                f"about the same point, but the result will not be bit-identical to an uninterrupted run")
        log(f"resuming {resume_path}: epoch {st['epoch']}, step {st['step']}, batch {st['position']}")
    metrics_path = result_dir / "metrics.jsonl"
    if is_main:
        if resume_path:
            dropped = _truncate_metrics(metrics_path, st["epoch"])
            if dropped:
                log(f"{metrics_path}: dropped {dropped} line(s) of epochs the checkpoint had not finished")
        write_json(result_dir / "config.json", cfg.to_dict())
        import yaml

        write_text(result_dir / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
    log(f"run {saved_dir.name}: {n_params / 1e6:.2f}M parameters, device {dev}"
        f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}"
        f"{f' x {world} processes' if world > 1 else ''}, precision "
        f"{str(amp_dtype).removeprefix('torch.')}, {'CUDA graphs' if use_graphs else 'eager'} steps, "
        f"{len(train_split)} training pairs")
    hint = resume_command(saved_dir, result_dir, result_root, device, world)
    t_resume = time.time() - st["elapsed"]

    def save_last(epoch, position, metrics=None, acc=None):
        """Write last.pt (every rank must call this: each sends its RNG states and loss sums to rank 0)."""
        acc = (stepper.acc if acc is None else acc).detach().cpu().clone()
        ranks = D.all_gather_object({"rng": _rng_state(dev), "acc": acc})
        if not is_main:
            return
        ts = {"optimizer": opt.state_dict(), "schedule": schedule.state_dict(), "ranks": ranks,
              "scaler": scaler.state_dict() if scaler is not None else None,
              "progress": {**st, "epoch": epoch, "position": position, "world": world,
                           "elapsed": time.time() - t_resume}}
        save_checkpoint(saved_dir / "last.pt", model=model, cfg=cfg, codecs=codecs, epoch=epoch, step=st["step"],
                        metrics=metrics, train_state=ts)

    # Host syncs are cheap on the CPU: check every step there; on a GPU every 50 steps.
    check_every = 1 if dev.type == "cpu" else 50
    save_every, max_steps = cfg.train.save_every, cfg.train.max_steps
    finished = bool(max_steps and st["step"] >= max_steps)
    if finished:
        log(f"the run already reached train.max_steps={max_steps}; raise it to train longer")
    history = []
    with _Signals(log, second_quits=world == 1) as sig:
        for epoch in range(st["epoch"], cfg.train.epochs + 1):
            if finished:
                break
            plan = shard(batch_plan(train_split, cfg.train.batch_sentences, cfg.train.max_tokens, shuffle=True,
                                    seed=cfg.train.seed, epoch=epoch), rank, world)
            start = min(st["position"], len(plan)) if epoch == st["epoch"] else 0
            seen_skipped = int(stepper.acc[SKIPPED].item()) if start else 0
            t0 = time.time()
            n_src = n_tgt = 0
            bar = tqdm(iterate(train_split, plan, dev, start), total=len(plan), initial=start,
                       desc=f"epoch {epoch}", disable=not is_main, leave=False, mininterval=1.0)
            stopped_at = interrupted = None
            for k, batch in enumerate(bar, start):
                st["step"] += 1
                schedule.before_step(st["step"])
                try:
                    stepper(batch)
                except torch.cuda.OutOfMemoryError:
                    try:
                        stepper.oom(batch, cfg.train.max_oom)
                    except RuntimeError as e:
                        if world == 1:  # with several processes the others are inside a collective: just stop
                            save_last(epoch, k + 1)
                        raise TrainingStopped(f"{e} (checkpoint: {saved_dir / 'last.pt'}; continue with "
                                              f"`{hint}`)") from None
                n_src += batch.n_src
                n_tgt += batch.n_tgt
                stop_signal = sig.hit if world == 1 else None  # a host flag: free to read every step
                if st["step"] % check_every == 0:
                    a = stepper.acc.tolist()
                    bad = a[BAD_RUN]
                    if world > 1:  # every process must stop at the same step
                        any_sig, bad = D.all_reduce_max([1.0 if sig.hit else 0.0, bad])
                        stop_signal = (sig.hit or "SIGTERM") if any_sig else None
                    if a[SKIPPED] > seen_skipped:
                        n_new = int(a[SKIPPED] - seen_skipped)
                        seen_skipped = a[SKIPPED]
                        log(f"warning: step {st['step']}: {n_new} update(s) skipped for a non-finite loss or "
                            f"gradient ({int(bad)} in a row, {st['skipped'] + int(a[SKIPPED])} in this run)")
                    if bad >= cfg.train.max_nonfinite:
                        save_last(epoch, k + 1)
                        raise TrainingStopped(f"{cfg.train.max_nonfinite} non-finite losses in a row at step "
                                              f"{st['step']}: training diverged; lower train.lr, keep train.clip "
                                              f"> 0, or check the data (the last finite weights are in "
                                              f"{saved_dir / 'last.pt'})")
                if save_every and st["step"] % save_every == 0:
                    save_last(epoch, k + 1)
                if stop_signal or (max_steps and st["step"] >= max_steps):
                    stopped_at, interrupted = k + 1, stop_signal
                    break
            bar.close()
            if interrupted:
                st["elapsed"] = time.time() - t_resume
                save_last(epoch, stopped_at)
                raise TrainingStopped(f"{interrupted} received: saved {saved_dir / 'last.pt'} at epoch {epoch}, "
                                      f"step {st['step']}; continue with `{hint}`")
            partial = stopped_at is not None and stopped_at < len(plan)
            if partial:  # train.max_steps mid-epoch: the exact point, so a larger max_steps continues from here
                finished = True
                save_last(epoch, stopped_at)
            acc = D.all_reduce_sum(torch.tensor(stepper.take(), device=dev)).tolist()
            train_secs = max(time.time() - t0, 1e-9)
            st["skipped"] += int(acc[SKIPPED])
            if acc[SKIPPED]:
                log(f"warning: skipped {int(acc[SKIPPED])} updates with a non-finite loss in epoch {epoch}")
            train_loss = acc[LOSS] / max(acc[TOKENS], 1)
            t1 = time.time()
            val_loss = validation_loss(model, valid_split, cfg, dev, amp_dtype)
            val_bleu = None
            if cfg.train.val_bleu:
                if is_main:
                    hyps = decode_split(model, codecs, cfg, valid_split, dev, cfg.train.val_beam_size, amp_dtype)
                    refs = (corpus_dir(cfg.data) / f"valid.ref.{cfg.data.tgt_lang}").read_text(
                        encoding="utf-8").splitlines()
                    val_bleu = score(hyps, refs, cfg.data.lowercase)["bleu"]
                val_bleu = D.broadcast_float(val_bleu)
            val_secs = time.time() - t1
            lr_now = schedule.lr
            schedule.after_epoch(epoch, val_loss)
            st["elapsed"] = time.time() - t_resume
            rec = {"epoch": epoch, "step": st["step"], "train_loss": round(train_loss, 4),
                   "val_loss": round(val_loss, 4), "val_ppl": round(math.exp(min(val_loss, 50)), 3),
                   "val_bleu": val_bleu, "lr": lr_now, "seconds": round(train_secs, 2),
                   "val_seconds": round(val_secs, 2), "tokens_per_s": round((n_src + n_tgt) * world / train_secs),
                   "tgt_tokens_per_s": round(n_tgt * world / train_secs), "elapsed": round(st["elapsed"], 1),
                   "steps": int(acc[STEPS]), "skipped": int(acc[SKIPPED])}
            if world > 1:  # DDP keeps replicas identical; prove it, and stop loudly if they ever drift apart
                hashes = D.all_gather_object(weights_sha256(model.state_dict()))
                if len(set(hashes)) != 1:
                    raise TrainingStopped(f"the {world} processes hold different weights after epoch {epoch} "
                                          f"({', '.join(hashes)}); this is a bug, please report it")
                rec["processes"], rec["weights_sha256"] = world, hashes[0]
            history.append(rec)
            metric = val_bleu if cfg.train.best_metric == "val_bleu" else val_loss
            improved = metric is not None and _better(cfg.train.best_metric, metric, st["best"])
            if improved:
                st.update(best=metric, best_epoch=epoch, bad_epochs=0)
            else:
                st["bad_epochs"] += 1
            if is_main:
                append_line(metrics_path, json.dumps(rec))
                report_epoch(rec, result_dir)
                bleu_txt = f"  val BLEU {val_bleu:.2f}" if val_bleu is not None else ""
                log(f"epoch {epoch:3d}  train {train_loss:.3f}  val {val_loss:.3f} (ppl {rec['val_ppl']:.2f})"
                    f"{bleu_txt}  lr {lr_now:.2e}  {train_secs:.1f}s+{val_secs:.1f}s  "
                    f"{rec['tgt_tokens_per_s'] / 1000:.1f}k tgt tok/s{'  *' if improved else ''}")
                if improved:
                    save_checkpoint(saved_dir / "best.pt", model=model, cfg=cfg, codecs=codecs, epoch=epoch,
                                    step=st["step"], metrics=rec)
                from mt_cli.averaging import keep_epoch_checkpoint

                keep_epoch_checkpoint(saved_dir, epoch, cfg, model=model, codecs=codecs, step=st["step"],
                                      metrics=rec)
            early = bool(cfg.train.early_stopping and st["bad_epochs"] >= cfg.train.early_stopping)
            done = stopped_at is not None or epoch == cfg.train.epochs or early
            if not partial:
                save_last(epoch + 1, 0, rec)
            if done:
                if early:
                    log(f"early stopping: no better {cfg.train.best_metric} for {st['bad_epochs']} epochs")
                break
        # a signal that arrived during the last validation: last.pt is complete, but the user asked to stop
        late = sig.hit if world == 1 else (sig.hit or "SIGTERM") if D.all_reduce_max([1.0 if sig.hit else 0.0])[0] \
            else None
        if late:
            raise TrainingStopped(f"{late} received: training is saved in {saved_dir / 'last.pt'}; the final test "
                                  f"was skipped; run it with `{hint}`")
    summary = {"run": saved_dir.name, "saved": str(saved_dir), "result": str(result_dir), "parameters": n_params,
               "best_epoch": st["best_epoch"], f"best_{cfg.train.best_metric}": st["best"],
               "skipped_updates": st["skipped"], "processes": world, "rank": rank,
               "train_seconds": round(time.time() - t_start, 1), "device": D.device_name(dev)}
    if is_main:
        summary["test"] = final_test(cfg, saved_dir, result_dir, dev, amp_dtype, log)
        summary["total_seconds"] = round(time.time() - t_start, 1)
        write_json(result_dir / "summary.json", summary)
    D.barrier()
    D.teardown()
    return summary


def final_test(cfg: Config, saved_dir: Path, result_dir: Path, dev, amp_dtype, log) -> dict:
    """Average checkpoints if configured, then decode every test split with the configured beam."""
    from mt_cli.averaging import average_checkpoints, epoch_checkpoints
    from mt_cli.checkpoint import restore

    path = saved_dir / "best.pt"
    if cfg.train.average_last and epoch_checkpoints(saved_dir):
        path = average_checkpoints(epoch_checkpoints(saved_dir)[-cfg.train.average_last:], saved_dir / "averaged.pt")
        log(f"averaged the last {min(cfg.train.average_last, len(epoch_checkpoints(saved_dir)))} epochs -> {path}")
    if not path.is_file():
        return {}
    model, _, codecs = restore(load_checkpoint(path), path)
    model.to(dev).eval()
    tests = sorted(p.stem for p in corpus_dir(cfg.data).glob("test*.pt"))
    log(f"testing {path.name} with beam {cfg.decode.beam_size} on {', '.join(tests) or 'no test split'}")
    report = evaluate_splits(model, codecs, cfg, ["valid"] + tests, dev, cfg.decode.beam_size, result_dir,
                             amp_dtype, log, tag="")
    return {"checkpoint": str(path), **report}
