"""`mt train`: the training loop (validation with real decoding, checkpoints, logs; the final test is in evaluate).

Reliability (README, section "Reliability"): last.pt holds everything needed to continue a run exactly
(model, optimizer, LR schedule, grad scaler, progress, best metric, early-stopping counter, every
rank's RNG states and loss accumulators, the position in the epoch's batch order); it is written
atomically at epoch ends, every train.save_every steps, and when SIGINT/SIGTERM stops the run.
Files are written by a background thread (mt_cli/writer.py) from copies of the state."""
from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from mt_cli import distributed as D
from mt_cli.atomic import append_line, read_json, write_json, write_text
from mt_cli.averaging import keep_epoch_checkpoint
from mt_cli.checkpoint import checkpoint_state, load_checkpoint, save_state
from mt_cli.config import Config
from mt_cli.data.batching import batch_plan, iterate, shard
from mt_cli.data.prepare import corpus_dir, load_corpus
from mt_cli.data.vocab import PAD
from mt_cli.evaluate import decode_split, final_test, score, validation_loss
from mt_cli.model import build_model
from mt_cli.runstate import (Signals, check_resume, open_run, restore_training, resume_command, rng_state,
                             run_folders, seed_all, truncate_metrics, weights_sha256)
from mt_cli.schedule import LRSchedule
from mt_cli.steps import BAD_RUN, LOSS, SKIPPED, STEPS, TOKENS, Stepper, build_optimizer, resolve_precision
from mt_cli.writer import Writer, snapshot


class TrainingStopped(RuntimeError):
    """Training ended early for a reason the user must see (non-finite losses, OOM, signal)."""


def _better(metric: str, new: float, best: float | None) -> bool:
    if math.isnan(new):
        return False
    if best is None or math.isnan(best):  # (a NaN best from a run saved by an older version)
        return True
    return new > best if metric == "val_bleu" else new < best


def train(cfg: Config, device: str = "auto", resume: str | Path | bool | None = None, saved_root: str = "saved",
          result_root: str = "result", log=print) -> dict:
    """Train `cfg`; returns a summary (run folders, best metrics, test report).

    `resume`: True continues the newest saved/<cfg.name>[-N]/last.pt; a path continues that checkpoint."""
    t_start = time.time()
    dev = D.resolve_device(device)
    D.setup(dev.type)
    dev = D.device_for_rank(dev)
    rank, world = D.rank(), D.world()
    is_main = rank == 0
    log = log if is_main else (lambda *_: None)
    from mt_cli.plots import EpochReport

    report_epoch = EpochReport(cfg, log, enabled=is_main)  # curves.png (+ TensorBoard): checked now, never fatal later
    saved_dir, result_dir, resume_path = D.on_main(open_run, cfg, resume, saved_root, result_root)
    ck = None
    if resume_path:  # checked before anything slow: a bad checkpoint or config fails at once
        ck = D.on_main(load_checkpoint, resume_path)  # read once, sent to the others (no shared disk needed)
        check_resume(ck, cfg, resume_path, result_dir, log)

    codecs, train_split, valid_split, _ = load_corpus(cfg, cfg.train.bucket_width)
    if not resume_path:  # the run can start: claim its name (the next run of this config gets -2)
        saved_dir, result_dir = D.on_main(run_folders, cfg, saved_root, result_root, claim=True)
    elif is_main:
        saved_dir.mkdir(parents=True, exist_ok=True)
        result_dir.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.train.seed)
    train_split.to(dev)
    valid_split.to(dev)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD).to(dev)
    if rank:  # same initial weights everywhere (seeded above), but each process its own dropout masks
        seed_all(cfg.train.seed + 1000 * rank)
    n_params = sum(p.numel() for p in model.parameters())
    amp_dtype = resolve_precision(cfg.train.precision, dev)
    params = list(model.parameters())
    opt = build_optimizer(params, cfg.train, dev)
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
    validated = None  # best/bad_epochs after validating the epoch in which train.max_steps stopped the run
    if ck is not None:
        restore_training(ck, model=model, opt=opt, schedule=schedule, scaler=scaler, acc=stepper.acc, progress=st,
                         dev=dev, rank=rank, world=world, log=log)
        log(f"resuming {resume_path}: epoch {st['epoch']}, step {st['step']}, batch {st['position']}")
        validated = ck["train_state"]["progress"].get("validated")
        del ck  # the run no longer needs it: do not hold this copy of the state (~300 MB) for the whole run
    max_steps = cfg.train.max_steps
    ended = bool(max_steps and st["step"] >= max_steps)
    if not (ended and validated):  # a larger max_steps finishes that epoch and validates it (again)
        validated = None
    st.update(validated or {})
    early = bool(cfg.train.early_stopping and st["bad_epochs"] >= cfg.train.early_stopping)
    finished = ended or early or st["epoch"] > cfg.train.epochs
    metrics_path = result_dir / "metrics.jsonl"
    if is_main:
        if resume_path:  # the old summary describes an ended run; a new one comes when this one ends
            (result_dir / "summary.json").unlink(missing_ok=True)
        if resume_path and not validated:  # a run that ended validated keeps its last line
            dropped = truncate_metrics(metrics_path, st["epoch"])
            if dropped:
                log(f"{metrics_path}: dropped {dropped} line(s) of epochs the checkpoint had not finished")
        resolved = json.loads(json.dumps(cfg.to_dict()))
        if read_json(result_dir / "config.json") != resolved or not (result_dir / "config.yaml").is_file():
            # (unchanged on resume: not rewritten, as `mt runs` orders runs by its time)
            import yaml

            write_json(result_dir / "config.json", resolved)
            write_text(result_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    log(f"run {saved_dir.name}: {n_params / 1e6:.2f}M parameters, device {dev}"
        f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}"
        f"{f' x {world} processes' if world > 1 else ''}, precision "
        f"{str(amp_dtype).removeprefix('torch.')}, {'CUDA graphs' if use_graphs else 'eager'} steps, "
        f"{len(train_split)} training pairs")
    hint = resume_command(saved_dir, result_dir, result_root, device, world)
    t_resume = time.time() - st["elapsed"]

    def checkpoint(weights, epoch, metrics=None, train_state=None) -> dict:
        return checkpoint_state(weights=weights, cfg=cfg, codecs=codecs, epoch=epoch, step=st["step"],
                                metrics=metrics, train_state=train_state)

    def last_pt(epoch, position, metrics=None, weights=None):
        """The job that writes last.pt, from a copy of the state taken now; None on ranks other than 0.
        Every rank must call this: each sends its RNG states and loss sums to rank 0."""
        ranks = D.all_gather_object({"rng": rng_state(dev), "acc": stepper.acc.detach().cpu().clone()})
        if not is_main:
            return None
        ts = snapshot({"optimizer": opt.state_dict(), "schedule": schedule.state_dict(), "ranks": ranks,
                       "scaler": scaler.state_dict() if scaler is not None else None})
        ts["progress"] = {**st, "epoch": epoch, "position": position, "world": world,
                          "elapsed": time.time() - t_resume}
        weights = snapshot(model.state_dict()) if weights is None else weights
        return partial(save_state, saved_dir / "last.pt", checkpoint(weights, epoch, metrics, ts))

    def stopped(message: str) -> TrainingStopped:
        writer.flush()  # the checkpoint the message names is on disk (or its write error is raised instead)
        return TrainingStopped(message)

    # Host syncs are cheap on the CPU: check every step there; on a GPU every 50 steps.
    check_every = 1 if dev.type == "cpu" else 50
    save_every = cfg.train.save_every
    if finished and resume_path:
        why = "early stopping" if early else f"train.max_steps={max_steps}" if max_steps and st["step"] >= max_steps \
            else f"train.epochs={cfg.train.epochs}"
        log(f"the run already reached {why}; raise it to train longer (now only the final test runs)")
    with Signals(log, second_quits=world == 1) as sig, Writer() as writer:
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
                            writer.submit(last_pt(epoch, k + 1))
                        raise stopped(f"{e} (checkpoint: {saved_dir / 'last.pt'}; continue with `{hint}`)") \
                            from None
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
                        writer.submit(last_pt(epoch, k + 1))
                        raise stopped(f"{cfg.train.max_nonfinite} non-finite losses in a row at step "
                                      f"{st['step']}: training diverged; lower train.lr, keep train.clip > 0, "
                                      f"or check the data (the last finite weights are in {saved_dir / 'last.pt'})")
                if save_every and st["step"] % save_every == 0:
                    writer.submit(last_pt(epoch, k + 1))
                if stop_signal or (max_steps and st["step"] >= max_steps):
                    stopped_at, interrupted = k + 1, stop_signal
                    break
            bar.close()
            if interrupted:
                st["elapsed"] = time.time() - t_resume
                writer.submit(last_pt(epoch, stopped_at))
                raise stopped(f"{interrupted} received: saved {saved_dir / 'last.pt'} at epoch {epoch}, "
                              f"step {st['step']}; continue with `{hint}`")
            part_epoch = stopped_at is not None and stopped_at < len(plan)
            part_last = None
            if part_epoch:  # train.max_steps mid-epoch: the exact point, so a larger max_steps continues from here
                finished = True
                part_last = last_pt(epoch, stopped_at)
                writer.submit(part_last)
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
            metric = val_bleu if cfg.train.best_metric == "val_bleu" else val_loss
            improved = metric is not None and _better(cfg.train.best_metric, metric, st["best"])
            if improved:
                st.update(best=metric, best_epoch=epoch, bad_epochs=0)
            else:
                st["bad_epochs"] += 1
            # In the order a crash may cut them: metrics before last.pt (a resumed run drops the line of an
            # epoch it repeats); curves.png last, as nothing depends on it.
            jobs, weights = [], None
            if is_main:
                weights = snapshot(model.state_dict())  # one copy for best.pt, epoch_*.pt and last.pt
                jobs.append(partial(append_line, metrics_path, json.dumps(rec)))
                if improved:
                    jobs.append(partial(save_state, saved_dir / "best.pt", checkpoint(weights, epoch, rec)))
                jobs.append(partial(keep_epoch_checkpoint, saved_dir, epoch, cfg, checkpoint(weights, epoch, rec)))
                bleu_txt = f"  val BLEU {val_bleu:.2f}" if val_bleu is not None else ""
                log(f"epoch {epoch:3d}  train {train_loss:.3f}  val {val_loss:.3f} (ppl {rec['val_ppl']:.2f})"
                    f"{bleu_txt}  lr {lr_now:.2e}  {train_secs:.1f}s+{val_secs:.1f}s  "
                    f"{rec['tgt_tokens_per_s'] / 1000:.1f}k tgt tok/s{'  *' if improved else ''}")
            if not part_epoch:
                jobs.append(last_pt(epoch + 1, 0, rec, weights))
            elif part_last is not None:  # the same point again, now knowing this epoch's validation
                state = part_last.args[1]
                progress = {**state["train_state"]["progress"], "validated": {
                    "best": st["best"], "best_epoch": st["best_epoch"], "bad_epochs": st["bad_epochs"]}}
                jobs.append(partial(part_last.func, part_last.args[0],
                                    {**state, "train_state": {**state["train_state"], "progress": progress}}))
            if is_main:
                jobs.append(partial(report_epoch, rec, result_dir))
            writer.submit(*jobs)
            early = bool(cfg.train.early_stopping and st["bad_epochs"] >= cfg.train.early_stopping)
            if stopped_at is not None or epoch == cfg.train.epochs or early:
                if early:
                    log(f"early stopping: no better {cfg.train.best_metric} for {st['bad_epochs']} epochs")
                break
        writer.close()  # everything on disk before the final test reads best.pt and the epoch checkpoints
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
