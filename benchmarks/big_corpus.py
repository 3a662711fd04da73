"""Big-corpus benchmark (issue 15): synthetic 1M- and 10M-pair `files` corpora built from Multi30k, then
`mt prepare --workers 2` (pairs/s, peak memory of the process tree) and `mt train` start-up (time to the first
training step's progress bar, peak memory) on each.

    python benchmarks/big_corpus.py --sizes 1000000 10000000 --out benchmarks/big_corpus.json

The corpora go to --work (default /tmp/mt_big_corpus, outside the repository). A pair joins 1 to 3 random
Multi30k training pairs (the same ones on both sides), so lengths vary from 1x to 3x Multi30k's. Peak memory is
sampled from /proc every 0.1 s over the command and all its children (RSS summed, and PSS summed, which counts a
page shared by forked workers once), and ru_maxrss of the children (the largest single process) is recorded too.
--baseline PYTHONPATH runs the same prepare with another mt_cli (e.g. `git archive` of an older commit)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared/data/multi30k"


def lines(name: str) -> list[str]:
    with gzip.open(MULTI30K / name, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def build_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    """train.de/train.en with `n` joined pairs, valid.de/valid.en = Multi30k's validation set; a config."""
    folder.mkdir(parents=True, exist_ok=True)
    de, en = lines("train.de.gz"), lines("train.en.gz")
    if not (folder / "train.en").is_file() or sum(1 for _ in open(folder / "train.en", "rb")) != n:
        rng = random.Random(seed)
        with (
            open(folder / "train.de", "w", encoding="utf-8") as fd,
            open(folder / "train.en", "w", encoding="utf-8") as fe,
        ):
            for start in range(0, n, 100_000):
                rows = [
                    [rng.randrange(len(de)) for _ in range(rng.randint(1, 3))] for _ in range(min(100_000, n - start))
                ]
                fd.write("".join(" ".join(de[i] for i in r) + "\n" for r in rows))
                fe.write("".join(" ".join(en[i] for i in r) + "\n" for r in rows))
    for lang in ("de", "en"):
        (folder / f"valid.{lang}").write_text("\n".join(lines(f"val.{lang}.gz")) + "\n", encoding="utf-8")
    cfg = folder / "big.yaml"
    cfg.write_text(
        f"""name: big
data: {{corpus: files, name: big, root: {folder / "data"}, train: {folder / "train"}, valid: {folder / "valid"},
        tokenizer: sentencepiece, sp_type: bpe, sp_vocab_size: 8000, lowercase: true}}
model: {{d_model: 32, n_heads: 2, enc_layers: 1, dec_layers: 1, d_ff: 64, dropout: 0.1}}
train: {{epochs: 1, max_tokens: 1024, val_bleu: false, save_every: 0}}
decode: {{beam_size: 1, batch_size: 256}}
""",
        encoding="utf-8",
    )
    return cfg


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process."""
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


# runs the command and reports its process tree's CPU seconds and largest ru_maxrss (its own RUSAGE_CHILDREN)
WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "sys.stderr.write(f'\\nRUSAGE {r.ru_utime + r.ru_stime:.1f} {r.ru_maxrss}\\n'); sys.exit(rc)"
)


def measure(cmd: list[str], env: dict, marker: bytes | None = None, cwd: Path = REPO) -> dict:
    """Run `cmd`; wall time, time until `marker` first shows on stderr, CPU time and peak memory of the tree."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd
    )
    peak = {"rss": 0, "pss": 0}
    seen: dict = {}
    err = bytearray()

    def sample():
        while p.poll() is None:
            mems = [_mem(q) for q in _tree(p.pid)]
            peak["rss"] = max(peak["rss"], sum(m[0] for m in mems))
            peak["pss"] = max(peak["pss"], sum(m[1] for m in mems))
            time.sleep(0.1)

    def read_err():
        for chunk in iter(lambda: p.stderr.read1(1 << 16), b""):
            err.extend(chunk)
            if marker and "marker" not in seen and marker in err:
                seen["marker"] = time.perf_counter() - t0

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for t in threads:
        t.start()
    out = p.stdout.read()
    p.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    text = err.decode(errors="replace").replace("\r", "\n").strip().splitlines()
    usage = [x.split() for x in text if x.startswith("RUSAGE ")]
    cpu, maxrss = (float(usage[-1][1]), int(usage[-1][2])) if usage else (None, None)
    res = {
        "rc": p.returncode,
        "seconds": round(wall, 1),
        "cpu_seconds": cpu,
        "peak_rss_tree_mb": round(peak["rss"] / 2**20),
        "peak_pss_tree_mb": round(peak["pss"] / 2**20),
        "largest_process_maxrss_mb": round(maxrss / 1024) if maxrss else None,
        "stderr_tail": [x for x in text if not x.startswith("RUSAGE ")][-3:],
    }
    if marker:
        res["seconds_to_marker"] = round(seen["marker"], 1) if "marker" in seen else None
    if p.returncode:
        res["stdout_tail"] = out.decode(errors="replace")[-2000:]
    return res


def env_for(pythonpath: str | None) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if pythonpath:
        e["PYTHONPATH"] = pythonpath
    return e


def measure_train(folder: Path, cfg: Path) -> dict:
    """`mt train` of 20 steps: time to the first training step's progress bar, and peak memory."""
    mt = [sys.executable, "-m", "mt_cli"]
    return measure(
        mt
        + [
            "train",
            "--config",
            str(cfg),
            "--device",
            "cpu",
            "--set",
            "train.max_steps=20",
            "--saved",
            str(folder / "saved"),
            "--result",
            str(folder / "result"),
        ],
        env_for(None),
        marker=b"epoch 1:",
    )


def train_again(args) -> None:
    report = json.loads(Path(args.out).read_text(encoding="utf-8"))
    report["train_load_before"] = os.getloadavg()
    for run in report["runs"]:
        folder = Path(args.work) / str(run["pairs"])
        run["train_20_steps"] = measure_train(folder, folder / "big.yaml")
        print(run["pairs"], json.dumps(run["train_20_steps"]), flush=True)
    report["train_load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _code_version() -> str:
    """The commit measured, and whether the working tree differed from it."""
    run = lambda *cmd: subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = run("git", "status", "--porcelain", "--untracked-files=no")
    return run("git", "rev-parse", "--short", "HEAD") + (" plus uncommitted changes" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--work", default="/tmp/mt_big_corpus")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--baseline",
        default=None,
        help="a folder holding another mt_cli (e.g. `git archive` of an "
        "older commit), which prepares the first size too",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks/big_corpus.json"))
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="measure `mt train` again on the prepared corpora, keeping the prepare figures of --out",
    )
    args = ap.parse_args()
    if args.train_only:
        return train_again(args)
    report = {
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "code": _code_version(),
        "corpus": "files corpus: each pair joins 1-3 random Multi30k de-en training pairs; sentencepiece bpe 8000 "
        "per side, lowercased, data.sp_sample 1,000,000; prepare --workers 2 --force",
        "load_before": os.getloadavg(),
        "runs": [],
    }
    mt = [sys.executable, "-m", "mt_cli"]
    for n in args.sizes:
        folder = Path(args.work) / str(n)
        t0 = time.perf_counter()
        cfg = build_corpus(folder, n)
        run = {
            "pairs": n,
            "build_seconds": round(time.perf_counter() - t0, 1),
            "train_bytes": sum((folder / f"train.{x}").stat().st_size for x in ("de", "en")),
        }
        print(f"{n:,} pairs: corpus ready, preparing", flush=True)
        prep = measure(mt + ["prepare", "--config", str(cfg), "--workers", str(args.workers), "--force"], env_for(None))
        prep["pairs_per_s"] = round(n / prep["seconds"]) if not prep["rc"] else None
        # what idle cores would give (the machine is shared): the pairs over the tree's CPU seconds per worker
        cpu = prep["cpu_seconds"]
        prep["pairs_per_s_on_idle_cores"] = round(n / cpu * args.workers) if cpu else None
        run["prepare"] = prep
        print(json.dumps(prep), flush=True)
        if args.baseline and n == args.sizes[0]:
            base = measure(
                mt + ["prepare", "--config", str(cfg), "--force", "--set", f"data.root={folder / 'data_baseline'}"],
                env_for(args.baseline),
                cwd=Path(args.baseline),
            )  # `python -m` imports from the working folder first
            base["pairs_per_s"] = round(n / base["seconds"]) if not base["rc"] else None
            run["prepare_baseline"] = base
            print("baseline", json.dumps(base), flush=True)
        run["train_20_steps"] = train = measure_train(folder, cfg)
        print(json.dumps(train), flush=True)
        report["runs"].append(run)
        report["load_after"] = os.getloadavg()  # 1, 5 and 15 minute load averages, as after each size
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
