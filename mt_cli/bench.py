"""`mt bench`: training and translation throughput, peak memory, device and versions, as JSON."""

from __future__ import annotations

import platform
import time

import torch

from mt_cli import __version__
from mt_cli.config import Config
from mt_cli.data.batching import batch_plan, iterate
from mt_cli.data.prepare import load_corpus
from mt_cli.data.vocab import PAD
from mt_cli.distributed import device_name
from mt_cli.evaluate import decode_rows, decode_split, load_eval_split
from mt_cli.steps import resolve_precision
from mt_cli.training.components import build_components


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_training(cfg: Config, dev: torch.device, steps: int, log=print) -> dict:
    """Steps per second on real batches, after every batch shape has been seen once (warm-up)."""
    codecs, train_split, _, _ = load_corpus(cfg, cfg.train.bucket_width)
    train_split.to(dev)
    parts = build_components(cfg, len(codecs["src"].vocab), len(codecs["tgt"].vocab), dev, log)  # as `mt train`
    schedule, stepper = parts.schedule, parts.stepper
    plan = batch_plan(
        train_split, cfg.train.batch_sentences, cfg.train.max_tokens, shuffle=True, seed=cfg.train.seed, epoch=1
    )
    warm, seen = [], set()
    for batch_rows, length in plan:  # one batch of every shape, so captures/compilation stay out of the timing
        if length not in seen:
            seen.add(length)
            warm.append((batch_rows, length))
    trim = dev.type == "cpu"  # as mt train: CPU batches cut to their longest sentence
    if trim and not cfg.train.compile:  # eager CPU steps have nothing to capture per shape
        warm = warm[:2]
    t0 = time.perf_counter()
    for step, batch in enumerate(iterate(train_split, warm, dev, trim=trim), 1):
        schedule.before_step(step)
        stepper(batch)
    _sync(dev)
    warm_s = time.perf_counter() - t0
    timed = (plan * (steps // max(1, len(plan)) + 1))[:steps]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    n_src = n_tgt = 0
    t0 = time.perf_counter()
    for step, batch in enumerate(iterate(train_split, timed, dev, trim=trim), len(warm) + 1):
        schedule.before_step(step)
        stepper(batch)
        n_src += batch.n_src
        n_tgt += batch.n_tgt
    _sync(dev)
    secs = time.perf_counter() - t0
    totals = stepper.take()
    return {
        "steps": len(timed),
        "seconds": round(secs, 3),
        "warmup_seconds": round(warm_s, 2),
        "warmup_steps": len(warm),
        "tokens_per_s": round((n_src + n_tgt) / secs),
        "tgt_tokens_per_s": round(n_tgt / secs),
        "steps_per_s": round(len(timed) / secs, 2),
        "mean_loss": round(totals.mean_loss, 3),
        "cuda_graphs": stepper.use_graphs,
        "precision": str(parts.amp_dtype).removeprefix("torch."),
        "parameters": parts.parameters,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None,
    }


def bench_translation(model, cfg: Config, codecs, dev: torch.device, split: str, beams: list[int]) -> dict:
    """Sentences/s decoding the whole split, per beam size, after a warm-up; the first (cold) call is
    reported too: it pays for kernel loading and the allocator's first blocks of each size."""
    data, _ = load_eval_split(cfg, split)
    amp = resolve_precision("auto", dev)
    src = data.source_rows(torch.arange(len(data)))
    longest = src[(src != PAD).sum(1).argsort(descending=True)[: cfg.decode.batch_size]]
    out = {}
    for k in beams:
        cold = _timed(dev, decode_rows, model, longest, cfg, dev, k, amp)
        # the longest batch first: the largest buffers of this beam size, which later batches reuse
        secs = _timed(dev, decode_split, model, codecs, cfg, data, dev, k, amp)
        out[f"beam{k}"] = {
            "sentences": len(data),
            "seconds": round(secs, 3),
            "sentences_per_s": round(len(data) / secs, 1),
            "cold_longest_batch": {"sentences": len(longest), "seconds": round(cold, 3)},
        }
    return out


def _timed(dev, fn, *args, **kwargs) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    _sync(dev)
    return time.perf_counter() - t0


def environment(dev: torch.device) -> dict:
    return {
        "device": device_name(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "mt_cli": __version__,
        "cpu_threads": torch.get_num_threads(),
    }
