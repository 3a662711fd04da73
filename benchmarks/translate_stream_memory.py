"""Peak resident memory of `mt translate` on a large file: the streamed translation holds one chunk at a time,
so memory must not grow with the file. A measurement, not a test.

    python benchmarks/translate_stream_memory.py --checkpoint P [--lines 1000000] [--chunk-lines 10000]
        [--beam 1] [--out benchmarks/cpu/translate_stream_memory.json]

The input repeats Multi30k test_2016_flickr (German) with an empty line every 50 lines; the output is checked
for line count, empty lines and order (a repeated source line has the same translation at each repetition).
Several --lines values in one call show the growth, if any: e.g. --lines 2000 20000 200000."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_input(path: Path, base: list[str], n: int) -> list[str]:
    """n lines cycling through `base` with an empty line every 50th; returns the cycle used."""
    cycle = [line if (i + 1) % 50 else "" for i, line in enumerate(base)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(cycle[i % len(cycle)] + "\n")
    return cycle


def run_once(checkpoint: str, n: int, chunk_lines: int, beam: int, base: list[str], tmp: Path) -> dict:
    src, out = tmp / f"in{n}.de", tmp / f"out{n}.en"
    cycle = write_input(src, base, n)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mt_cli",
            "translate",
            "--checkpoint",
            checkpoint,
            "-i",
            str(src),
            "-o",
            str(out),
            "--beam",
            str(beam),
            "--chunk-lines",
            str(chunk_lines),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if p.returncode:
        raise SystemExit(f"mt translate failed: {p.stderr.strip().splitlines()[-1]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    got = out.read_text(encoding="utf-8").split("\n")[:-1]
    first: dict[str, str] = {}
    consistent = len(got) == n and all(
        (g == "") == (not cycle[i % len(cycle)].strip()) and first.setdefault(cycle[i % len(cycle)], g) == g
        for i, g in enumerate(got)
    )
    src.unlink()
    out.unlink()
    return {
        "lines": n,
        "chunk_lines": chunk_lines,
        "beam": beam,
        "seconds": round(seconds, 1),
        "lines_per_s": round(n / seconds, 1),
        "peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
        "count_order_and_empty_lines_ok": consistent,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--lines", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--chunk-lines", type=int, default=10_000)
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "cpu" / "translate_stream_memory.json"))
    ap.add_argument("--note", default="", help="Stored in the report, e.g. that the machine was shared.")
    args = ap.parse_args()
    with gzip.open(MULTI30K / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        base = f.read().splitlines()
    report = {"device": f"{cpu_name()}, {os.cpu_count()} cores (CPU)", "checkpoint": args.checkpoint, "runs": []}
    if args.note:
        report["note"] = args.note
    with tempfile.TemporaryDirectory() as d:
        # ru_maxrss of children is the peak over all of them: run the sizes smallest first
        for n in sorted(args.lines):
            report["runs"].append(run_once(args.checkpoint, n, args.chunk_lines, args.beam, base, Path(d)))
            print(json.dumps(report["runs"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
