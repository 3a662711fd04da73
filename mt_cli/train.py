"""`mt train`: the training loop (validation with real decoding, checkpoints, logs, final test)."""
from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mt_cli import distributed as D
from mt_cli.atomic import append_line, check_writable, write_json
from mt_cli.checkpoint import load_checkpoint, save_checkpoint
from mt_cli.config import Config
from mt_cli.data.batching import Split, batch_plan, iterate, shard
from mt_cli.data.prepare import corpus_dir, load_manifest
from mt_cli.data.sources import DataError
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import PAD
from mt_cli.evaluate import decode_split, evaluate_splits, score
from mt_cli.model import build_model
from mt_cli.schedule import LRSchedule
from mt_cli.steps import LOSS, SKIPPED, STEPS, TOKENS, Stepper, autocast, loss_sum, resolve_precision


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


@torch.no_grad()
def validation_loss(model, split: Split, cfg: Config, device, amp_dtype) -> float:
    """Token-level cross-entropy (no label smoothing) on the validation split."""
    model.eval()
    total = torch.zeros(2, device=device)
    plan = shard(batch_plan(split, None, cfg.train.max_tokens or 4096, shuffle=False, fill=False), D.rank(), D.world())
    for b in iterate(split, plan, device):
        with autocast(device, amp_dtype):
            loss, n = loss_sum(model, b.src, b.tgt_in, b.tgt_out, 0.0)
        total += torch.stack([loss.float(), n.float()])
    model.train()
    total = D.all_reduce_sum(total)
    return (total[0] / total[1].clamp(min=1)).item()


class _Signals:
    """Turn SIGINT/SIGTERM into a flag checked between steps (a safe point to save)."""

    def __init__(self):
        self.hit = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.hit = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new > best if metric == "val_bleu" else new < best


def _rng_state(device) -> dict:
    st = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2], "torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device) -> None:
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def train(cfg: Config, device: str = "auto", resume: str | bool | None = None, saved_root: str = "saved",
          result_root: str = "result", log=print) -> dict:
    """Train `cfg`; returns a summary (run folders, best metrics, test report)."""
    t_start = time.time()
    D.setup()
    dev = D.device_for_rank(resolve_device(device))
    is_main = D.rank() == 0
    log = log if is_main else (lambda *_: None)
    resume_path = None
    if resume:
        resume_path = Path(resume) if isinstance(resume, str) else Path(saved_root) / cfg.name / "last.pt"
    saved_dir, result_dir = (resume_path.parent, Path(result_root) / resume_path.parent.name) if resume_path \
        else run_folders(cfg, saved_root, result_root, resume=False)
    if is_main:
        check_writable(saved_dir)
        check_writable(result_dir)
    D.barrier()

    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    codecs, train_split, valid_split, manifest = load_corpus(cfg, cfg.train.bucket_width)
    train_split.to(dev)
    valid_split.to(dev)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD).to(dev)
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
    use_graphs = cfg.train.cuda_graphs and dev.type == "cuda" and D.world() == 1 and not cfg.train.compile
    stepper = Stepper(net, opt, params, device=dev, amp_dtype=amp_dtype, clip=cfg.train.clip,
                      label_smoothing=cfg.train.label_smoothing, use_graphs=use_graphs, scaler=scaler, log=log)

    st = {"epoch": 1, "step": 0, "position": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "elapsed": 0.0,
          "skipped": 0}
    if resume_path:
        ck = load_checkpoint(resume_path)
        if ck["config"] != cfg.to_dict():
            raise ValueError(f"{resume_path}: the run was started with another config; resume it with the "
                             f"config stored in {result_dir / 'config.yaml'}")
        model.load_state_dict(ck["model"])
        ts = ck["train_state"]
        opt.load_state_dict(ts["optimizer"])
        if fused:  # load_state_dict may turn a tensor lr into a float; captured steps need the tensor
            for g in opt.param_groups:
                g["lr"] = torch.tensor(float(g["lr"]), device=dev)
        schedule.load_state_dict(ts["schedule"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        st.update(ts["progress"])
        _set_rng_state(ts["rng"], dev)
        log(f"resuming {resume_path}: epoch {st['epoch']}, step {st['step']}, batch {st['position']}")
    if is_main:
        write_json(result_dir / "config.json", cfg.to_dict())
        import yaml

        (result_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())),
                                                               sort_keys=False), encoding="utf-8")
    log(f"run {saved_dir.name}: {n_params / 1e6:.2f}M parameters, device {dev}"
        f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}, precision "
        f"{str(amp_dtype).removeprefix('torch.')}, {'CUDA graphs' if use_graphs else 'eager'} steps, "
        f"{len(train_split)} training pairs")
    metrics_path = result_dir / "metrics.jsonl"

    def save_last(epoch, position, metrics=None):
        if not is_main:
            return
        ts = {"optimizer": opt.state_dict(), "schedule": schedule.state_dict(), "rng": _rng_state(dev),
              "scaler": scaler.state_dict() if scaler is not None else None,
              "progress": {**st, "epoch": epoch, "position": position, "elapsed": st["elapsed"]}}
        save_checkpoint(saved_dir / "last.pt", model=model, cfg=cfg, codecs=codecs, epoch=epoch, step=st["step"],
                        metrics=metrics, train_state=ts)

    t_resume = time.time() - st["elapsed"]
    history = []
    with _Signals() as sig:
        for epoch in range(st["epoch"], cfg.train.epochs + 1):
            plan = shard(batch_plan(train_split, cfg.train.batch_sentences, cfg.train.max_tokens, shuffle=True,
                                    seed=cfg.train.seed, epoch=epoch), D.rank(), D.world())
            start = st["position"] if epoch == st["epoch"] else 0
            t0 = time.time()
            n_src = n_tgt = 0
            bar = tqdm(iterate(train_split, plan, dev, start), total=len(plan), initial=start,
                       desc=f"epoch {epoch}", disable=not is_main, leave=False, mininterval=1.0)
            stopped_at = None
            for k, batch in enumerate(bar, start):
                st["step"] += 1
                schedule.before_step(st["step"])
                try:
                    stepper(batch)
                except torch.cuda.OutOfMemoryError:
                    stepper.oom(batch, cfg.train.max_oom)
                n_src += batch.n_src
                n_tgt += batch.n_tgt
                if st["step"] % 50 == 0 and stepper.bad_run() >= cfg.train.max_nonfinite:
                    save_last(epoch, k + 1)
                    raise TrainingStopped(f"{cfg.train.max_nonfinite} non-finite losses in a row at step "
                                          f"{st['step']}; lower train.lr or check the data (checkpoint: "
                                          f"{saved_dir / 'last.pt'})")
                if sig.hit or (cfg.train.max_steps and st["step"] >= cfg.train.max_steps):
                    stopped_at = k + 1
                    break
            bar.close()
            if sig.hit:
                st["elapsed"] = time.time() - t_resume
                save_last(epoch, stopped_at)
                raise TrainingStopped(f"{sig.hit} received: saved {saved_dir / 'last.pt'} at epoch {epoch}, "
                                      f"step {st['step']}; continue with `mt train --config <config> --resume "
                                      f"{saved_dir / 'last.pt'}`")
            acc = D.all_reduce_sum(torch.tensor(stepper.take(), device=dev)).tolist()
            train_secs = time.time() - t0
            st["skipped"] += int(acc[SKIPPED])
            if acc[SKIPPED]:
                log(f"warning: skipped {int(acc[SKIPPED])} updates with a non-finite loss in epoch {epoch}")
            train_loss = acc[LOSS] / max(acc[TOKENS], 1)
            t1 = time.time()
            val_loss = validation_loss(net, valid_split, cfg, dev, amp_dtype)
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
            world = D.world()
            rec = {"epoch": epoch, "step": st["step"], "train_loss": round(train_loss, 4),
                   "val_loss": round(val_loss, 4), "val_ppl": round(math.exp(min(val_loss, 50)), 3),
                   "val_bleu": val_bleu, "lr": lr_now, "seconds": round(train_secs, 2),
                   "val_seconds": round(val_secs, 2), "tokens_per_s": round((n_src + n_tgt) * world / train_secs),
                   "tgt_tokens_per_s": round(n_tgt * world / train_secs), "elapsed": round(st["elapsed"], 1),
                   "steps": int(acc[STEPS]), "skipped": int(acc[SKIPPED])}
            history.append(rec)
            metric = val_bleu if cfg.train.best_metric == "val_bleu" else val_loss
            improved = metric is not None and _better(cfg.train.best_metric, metric, st["best"])
            if improved:
                st.update(best=metric, best_epoch=epoch, bad_epochs=0)
            else:
                st["bad_epochs"] += 1
            if is_main:
                append_line(metrics_path, json.dumps(rec))
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
            done = stopped_at is not None or epoch == cfg.train.epochs or (
                cfg.train.early_stopping and st["bad_epochs"] >= cfg.train.early_stopping)
            save_last(epoch + 1, 0, rec)
            if done:
                if cfg.train.early_stopping and st["bad_epochs"] >= cfg.train.early_stopping:
                    log(f"early stopping: no better {cfg.train.best_metric} for {st['bad_epochs']} epochs")
                break
    summary = {"run": saved_dir.name, "saved": str(saved_dir), "result": str(result_dir), "parameters": n_params,
               "best_epoch": st["best_epoch"], f"best_{cfg.train.best_metric}": st["best"],
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
