"""Share of the target positions a training epoch computes that are padding, for mt_cli's batches and for
JoeyNMT's (shuffled batches of 128, each padded to its longest), over the same tokenized training targets.

    python benchmarks/padding.py -c configs/peer_joeynmt.yaml --out benchmarks/peer/padding.json
mt_cli on a GPU: fixed bucket shapes (width train.bucket_width, filler rows topping up each bucket's last
batch, all computed); on the CPU: exact buckets of width 1, batches trimmed to their longest sentence."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from mt_cli.config import load_config
from mt_cli.data.batching import batch_plan
from mt_cli.data.prepare import load_corpus


def padding(batches, lengths: torch.Tensor) -> float:
    """1 - real target tokens / positions computed, over (rows, computed rows, width) batches."""
    real = computed = 0
    for rows, n_rows, width in batches:
        real += int(lengths[rows].sum())
        computed += n_rows * width
    return round(1 - real / computed, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/peer_joeynmt.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--out")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    sentences = cfg.train.batch_sentences or 128
    report = {"config": args.config, "overrides": args.set, "batch_sentences": sentences}
    for name, width, trim in (("mt_cli_gpu", cfg.train.bucket_width, False), ("mt_cli_cpu", 1, True)):
        _, split, _, _ = load_corpus(cfg, width, resident=False)
        lengths = split.tgt_len  # with <eos>: the positions the loss counts
        plan = batch_plan(split, sentences, None, shuffle=True, seed=cfg.train.seed, epoch=1)
        batches = []
        for rows, width_L in plan:
            real = rows[rows < split.n]
            batches.append((real, len(real), int(lengths[real].max())) if trim else (real, len(rows), width_L))
        report[name] = {"bucket_width": width, "trimmed": trim, "padding": padding(batches, lengths)}
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).split(sentences)
    peer = [(rows, len(rows), int(lengths[rows].max())) for rows in shuffled]
    report["joeynmt_estimate"] = {"padding": padding(peer, lengths), "how": "shuffled batches, each to its longest"}
    report["pairs"] = int(len(lengths))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        open(args.out, "w").write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
