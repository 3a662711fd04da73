"""Where beam search spends its time: decode the longest batch of a split once (warm-up), then again under
torch.profiler, and print the operators by self time (CUDA time on a GPU) and the time per decoding step.
Usage: python benchmarks/profile_decode.py CHECKPOINT [--split test_2016_flickr] [--beam 5] [--device auto]"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mt_cli.checkpoint import load_for_inference
from mt_cli.data.vocab import PAD
from mt_cli.decode import translate_ids
from mt_cli.distributed import resolve_device
from mt_cli.evaluate import load_eval_split
from mt_cli.steps import resolve_precision


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--split", default="test_2016_flickr")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--rows", type=int, default=0, help="sentences to decode [decode.batch_size]")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    model, cfg, _ = load_for_inference(args.checkpoint, dev)
    if args.data_root:
        cfg.data.root = args.data_root
    data, _ = load_eval_split(cfg, args.split)
    src = data.source_rows(torch.arange(len(data)))
    batch = src[(src != PAD).sum(1).argsort(descending=True)[: args.rows or cfg.decode.batch_size]]
    amp = resolve_precision("auto", dev)

    def decode():
        out = translate_ids(model, batch, cfg.decode, dev, beam_size=args.beam, amp_dtype=amp)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    decode()  # warm-up: kernels, allocator blocks
    t0 = time.perf_counter()
    out = decode()
    secs = time.perf_counter() - t0
    steps = max(len(h[0][0]) for h in out) + 1
    print(
        f"{len(batch)} sentences, beam {args.beam}, {dev}: {secs:.3f} s, about {steps} steps, "
        f"{1000 * secs / steps:.2f} ms/step, {len(batch) / secs:.0f} sentences/s"
    )
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        decode()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()
