"""CTranslate2 against mt_cli's PyTorch path on this machine's CPU, side by side in one run: a trained
checkpoint exported at float32 and int8, each engine translating a test set greedy and with beam 5 through
translate_lines (what `mt translate` runs), timed after a warm-up; cased sacreBLEU of every output.
  python benchmarks/ct2_cpu.py --checkpoint saved/multi30k_cpu/best.pt --out benchmarks/cpu/ct2_cpu.json
With --untrained CONFIG instead: that config's model with random weights (its prepared codecs), outputs capped
by --set decode.max_len_a/b, as speed alone (no BLEU to compare) where no trained model of it exists."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import sacrebleu
import torch

from mt_cli.ct2_engine import load_translator
from mt_cli.export import export_ctranslate2
from mt_cli.translate import translate_lines


def timed(model, cfg, codecs, lines, beam) -> tuple[float, list[str]]:
    cpu = torch.device("cpu")
    translate_lines(model, cfg, codecs, lines[:64], cpu, beam)  # warm-up
    t0 = time.perf_counter()
    out = translate_lines(model, cfg, codecs, lines, cpu, beam)
    return time.perf_counter() - t0, [n[0] for n in out]


def untrained_checkpoint(config: str, overrides: list[str], path: Path) -> Path:
    """A checkpoint of `config`'s model with seeded random weights and its prepared corpus's codecs."""
    from mt_cli.checkpoint import save_checkpoint
    from mt_cli.config import load_config
    from mt_cli.data.prepare import load_corpus
    from mt_cli.data.vocab import PAD
    from mt_cli.model import build_model

    cfg = load_config(config, overrides)
    codecs, _, _, _ = load_corpus(cfg, cfg.train.bucket_width, resident=False)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD)
    save_checkpoint(path, model=model, cfg=cfg, codecs=codecs, epoch=0, step=0)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--untrained", metavar="CONFIG", help="a random-weight model of this config instead")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (with --untrained)")
    ap.add_argument("--lines", type=int, help="only the first N sentences of the split")
    ap.add_argument("--data", default="../shared/data/multi30k")
    ap.add_argument("--split", default="test_2016_flickr")
    ap.add_argument("--out", default="benchmarks/cpu/ct2_cpu.json")
    args = ap.parse_args()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or untrained_checkpoint(args.untrained, args.set, Path(tmp) / "untrained.pt")
        model, cfg, codecs = load_translator(checkpoint, cpu)
    read = lambda lang: gzip.open(f"{args.data}/{args.split}.{lang}.gz", "rt", encoding="utf-8").read().splitlines()  # noqa: E731
    src, ref = read(cfg.data.src_lang)[: args.lines], read(cfg.data.tgt_lang)[: args.lines]
    engines = {"pytorch_fp32": (model, cfg, codecs)}
    with tempfile.TemporaryDirectory() as tmp:
        for q in ("float32", "int8"):
            folder = export_ctranslate2(model, cfg, codecs, Path(tmp) / q, quantization=q)
            engines[f"ctranslate2_{q}"] = load_translator(folder, cpu)
        report = {}
        for name, (m, c, k) in engines.items():
            for beam in (1, 5):
                seconds, hyps = timed(m, c, k, src, beam)
                report[f"{name}_beam{beam}"] = {
                    "sentences_per_s": round(len(src) / seconds, 1),
                    "seconds": round(seconds, 2),
                    "bleu": round(sacrebleu.corpus_bleu(hyps, [ref]).score, 2),
                }
                print(name, beam, report[f"{name}_beam{beam}"], flush=True)
    for beam in (1, 5):
        ours = report[f"pytorch_fp32_beam{beam}"]["sentences_per_s"]
        report[f"int8_speedup_beam{beam}"] = round(report[f"ctranslate2_int8_beam{beam}"]["sentences_per_s"] / ours, 2)
    full = {
        "what": f"{args.split} ({len(src)} sentences) through translate_lines, decode.batch_size "
        f"{cfg.decode.batch_size}, after a warm-up; cased sacreBLEU 13a",
        "device": f"cpu ({os.cpu_count()} cores): {platform.processor() or platform.machine()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoint": args.checkpoint or f"untrained {args.untrained} {' '.join(args.set)} (BLEU meaningless)",
        **report,
    }
    Path(args.out).write_text(json.dumps(full, indent=1) + "\n")
    print(json.dumps(full, indent=1))


if __name__ == "__main__":
    main()
