"""Load benchmark of `mt serve` (bounded: a fixed number of clients and requests, localhost only).

Starts the real server, sends CLIENTS concurrent clients REQUESTS requests each of LINES source lines of a
test set, and reports throughput (lines/s) and latency percentiles; then times `mt translate`'s engine
(translate_lines, the whole set in one call, model already loaded) on the same lines, in the same run.
  python benchmarks/serve_load.py --checkpoint saved/multi30k_cpu/best.pt --out benchmarks/serve/serve_load_cpu.json"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, port: int, max_batch: int, max_wait_ms: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mt_cli", "serve", "--checkpoint", checkpoint, "--port", str(port)]
    cmd += ["--device", "cpu", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up")


def load(url: str, lines: list[str], clients: int, requests: int, per_request: int, beam: int) -> dict:
    def client(c: int) -> list[float]:
        latencies = []
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                at = ((c * requests + r) * per_request) % len(lines)
                text = (lines[at:] + lines)[:per_request]
                t0 = time.perf_counter()
                answer = http.post(f"{url}/translate", json={"text": text, "beam": beam})
                answer.raise_for_status()
                latencies.append(time.perf_counter() - t0)
        return latencies

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for part in pool.map(client, range(clients)) for x in part]
    seconds = time.perf_counter() - t0
    latencies.sort()
    return {
        "lines": clients * requests * per_request,
        "seconds": round(seconds, 2),
        "lines_per_s": round(clients * requests * per_request / seconds, 1),
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 1),
            "p99": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        },
    }


def translate_speed(checkpoint: str, lines: list[str], beam: int) -> dict:
    from mt_cli.checkpoint import load_for_inference
    from mt_cli.translate import translate_lines

    cpu = torch.device("cpu")
    model, cfg, codecs = load_for_inference(checkpoint, cpu)
    translate_lines(model, cfg, codecs, lines[:50], cpu, beam)  # warm-up
    t0 = time.perf_counter()
    translate_lines(model, cfg, codecs, lines, cpu, beam)
    seconds = time.perf_counter() - t0
    return {"lines": len(lines), "seconds": round(seconds, 2), "lines_per_s": round(len(lines) / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--source", default="../shared/data/multi30k/test_2016_flickr.de.gz")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--lines-per-request", type=int, default=8)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--out", default="benchmarks/serve/serve_load_cpu.json")
    args = ap.parse_args()
    lines = gzip.open(args.source, "rt", encoding="utf-8").read().splitlines()
    port = free_port()
    server = start_server(args.checkpoint, port, args.max_batch, args.max_wait_ms)
    try:
        load(f"http://127.0.0.1:{port}", lines, 2, 2, args.lines_per_request, args.beam)  # warm-up
        served = load(f"http://127.0.0.1:{port}", lines, args.clients, args.requests, args.lines_per_request, args.beam)
    finally:
        server.terminate()
        server.wait(timeout=60)
    n = served["lines"]
    direct = translate_speed(args.checkpoint, (lines * (n // len(lines) + 1))[:n], args.beam)
    report = {
        "what": f"{args.clients} concurrent clients x {args.requests} requests x {args.lines_per_request} lines of "
        f"{Path(args.source).name}, beam {args.beam}, against mt translate's engine on the same {n} lines",
        "device": f"cpu ({os.cpu_count()} cores): {platform.processor() or platform.machine()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoint": args.checkpoint,
        "server": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, **served},
        "translate": direct,
        "serve_over_translate": round(served["lines_per_s"] / direct["lines_per_s"], 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
