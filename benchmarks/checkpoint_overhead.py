"""Per-epoch cost of the end-of-epoch writes (metrics line, curves.png, best.pt, epoch_*.pt, last.pt) for the
default config's model, between real training steps: written on the training thread (`sync`, as before
mt_cli/writer.py) or copied and handed to the background writer (`async`). A measurement, not a test.

    python benchmarks/checkpoint_overhead.py [--mode both|sync|async] [--epochs 5] [--steps 2] [--idle-train S]

--idle-train S replaces the CPU steps by S seconds of waiting and an in-place update of every tensor, as a
training thread that mostly waits for a GPU; with real CPU steps, the steps and the writer share the cores.

`sync` uses only functions that older versions also have: PYTHONPATH=<old checkout> times the old code."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mt_cli.atomic import append_line
from mt_cli.checkpoint import save_checkpoint
from mt_cli.config import load_config
from mt_cli.data.vocab import PAD
from mt_cli.model import build_model
from mt_cli.plots import EpochReport

REPO = Path(__file__).resolve().parents[1]


def codecs_for(cfg):
    """The prepared corpus's codecs when there is one (the real vocabulary size), else a stand-in."""
    try:
        try:
            from mt_cli.data.prepare import load_corpus
        except ImportError:  # older versions
            from mt_cli.data.prepare import load_corpus
        return load_corpus(cfg, cfg.train.bucket_width)[0]
    except Exception:  # noqa: BLE001 - not prepared here
        from mt_cli.data.tokenize import SideCodec
        from mt_cli.data.vocab import Vocab

        v = Vocab([f"w{i}" for i in range(cfg.data.sp_vocab_size)])
        return {s: SideCodec("spacy", lang, True, v) for s, lang in (("src", "de"), ("tgt", "en"))}


def tensors(opt_state) -> list:
    return [t for st in opt_state.values() for t in st.values() if isinstance(t, torch.Tensor) and t.dim()]


def run(mode: str, epochs: int, steps: int, out: Path, idle: float = 0.0) -> dict:
    cfg = load_config(REPO / "configs" / "multi30k_de_en.yaml")
    codecs = codecs_for(cfg)
    nv_src, nv_tgt = len(codecs["src"].vocab), len(codecs["tgt"].vocab)
    torch.manual_seed(0)
    model = build_model(cfg.model, nv_src, nv_tgt, PAD)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=cfg.train.betas, eps=cfg.train.eps)
    saved, result = out / mode / "saved", out / mode / "result"
    saved.mkdir(parents=True)
    result.mkdir(parents=True)
    report = EpochReport(cfg, log=print)
    keep = max(cfg.train.average_last, cfg.train.keep_last if cfg.train.keep_last > 1 else 0)
    writer = None
    if mode == "async":
        from functools import partial

        from mt_cli.averaging import keep_epoch_checkpoint
        from mt_cli.checkpoint import checkpoint_state, save_state
        from mt_cli.writer import Writer, snapshot

        writer = Writer()
    src = torch.randint(4, nv_src, (48, 24))
    tgt = torch.randint(4, nv_tgt, (48, 25))

    def step():
        logits = model(src, tgt[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()

    step()  # Adam's state exists from here on
    rows = []
    t_run = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if idle:  # the device works, the thread waits; then every weight and Adam moment changes in place
            time.sleep(idle)
            with torch.no_grad():
                torch._foreach_add_([*model.parameters(), *tensors(opt.state)], 1e-6)
        for _ in range(0 if idle else steps):  # real steps: they too change every tensor in place
            step()
        t1 = time.perf_counter()
        rec = {
            "epoch": epoch,
            "step": epoch * steps,
            "train_loss": 5.0 / epoch,
            "val_loss": 5.0 / epoch,
            "val_ppl": 150.0 / epoch,
            "val_bleu": 10.0 * epoch,
            "lr": 1e-4,
        }
        train_state = {
            "optimizer": opt.state_dict(),
            "schedule": {"plateau": None, "lr": 1e-4},
            "ranks": [],
            "scaler": None,
            "progress": {"epoch": epoch + 1, "position": 0},
        }
        kw = dict(cfg=cfg, codecs=codecs, epoch=epoch, step=epoch * steps, metrics=rec)
        if mode == "sync":  # the order the loop used: metrics, curves, best, epoch snapshot, last
            append_line(result / "metrics.jsonl", json.dumps(rec))
            report(rec, result)
            save_checkpoint(saved / "best.pt", model=model, **kw)
            save_checkpoint(saved / f"epoch_{epoch:04d}.pt", model=model, **kw)
            for old in sorted(saved.glob("epoch_*.pt"))[:-keep]:
                old.unlink()
            save_checkpoint(saved / "last.pt", model=model, train_state=train_state, **kw)
        else:
            weights = snapshot(model.state_dict())

            def state(weights=weights, kw=kw, **extra):  # bound now: each epoch's own weights and metadata
                return checkpoint_state(weights=weights, **kw, **extra)

            writer.submit(
                partial(append_line, result / "metrics.jsonl", json.dumps(rec)),
                partial(save_state, saved / "best.pt", state()),
                partial(keep_epoch_checkpoint, saved, epoch, cfg, state()),
                partial(save_state, saved / "last.pt", state(train_state=snapshot(train_state))),
                partial(report, rec, result),
            )
        t2 = time.perf_counter()
        rows.append(
            {
                "epoch": epoch,
                "train_s": round(t1 - t0, 3),
                "writes_on_training_thread_s": round(t2 - t1, 3),
                "epoch_wall_s": round(t2 - t0, 3),
            }
        )
        print(f"{mode} epoch {epoch}: train {t1 - t0:.2f}s, writes on the training thread {t2 - t1:.2f}s")
    t_flush = time.perf_counter()
    if writer is not None:
        writer.close()
    t_end = time.perf_counter()
    later = rows[1:] or rows  # the first epoch also pays matplotlib's import
    sizes = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(saved.iterdir())}
    return {
        "mode": mode,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": rows,
        "median_writes_on_training_thread_s": statistics.median(r["writes_on_training_thread_s"] for r in later),
        "median_train_s": statistics.median(r["train_s"] for r in later),
        "median_epoch_wall_s": statistics.median(r["epoch_wall_s"] for r in later),
        "final_flush_s": round(t_end - t_flush, 3),
        "total_s": round(t_end - t_run, 2),
        "files_mib": sizes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["both", "sync", "async"], default="both")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="training steps per epoch (batch 48 x 24 tokens)")
    ap.add_argument(
        "--idle-train",
        type=float,
        default=0.0,
        metavar="S",
        help="per epoch, S seconds of waiting instead of CPU steps (a GPU-bound training thread)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ckpt_overhead_"))
    try:
        modes = ["sync", "async"] if args.mode == "both" else [args.mode]
        results = [run(m, args.epochs, args.steps, out, args.idle_train) for m in modes]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "idle_train_s": args.idle_train,
    }
    for r in results:
        print(
            f"{r['mode']:>5}: {r['parameters'] / 1e6:.1f}M params; per epoch (median after the first): "
            f"train {r['median_train_s']:.2f}s, writes on the training thread "
            f"{r['median_writes_on_training_thread_s']:.2f}s, wall {r['median_epoch_wall_s']:.2f}s; "
            f"final flush {r['final_flush_s']:.2f}s; total {r['total_s']:.1f}s; files (MiB) {r['files_mib']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
