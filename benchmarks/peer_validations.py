"""Each validation of a CPU peer run (benchmarks/cpu_peer.sh), for both programs: its lowercased sacreBLEU on the
raw references, seconds since the training process's first output, and the validation's own seconds.

    python benchmarks/peer_validations.py MT_STAMPED_LOG MT_METRICS_JSONL JOEY_TRAIN_LOG JOEY_RESULTS_JSON
mt_cli's clock is benchmarks/stamped.py's (from process start, imports included); JoeyNMT's is its log's, from
its first line (after its imports)."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime

STAMP = re.compile(r"^\[\s*([\d.]+)s\] ")  # benchmarks/stamped.py's prefix
MT_EPOCH = re.compile(r"^epoch\s+(\d+)\s+train ")
JOEY_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - ")


def mt_cli_rows(stamped_log: str, metrics: str) -> list[dict]:
    """One row per epoch: the stamp of its epoch line (printed once validation has ended), the rest from its metrics."""
    stamps = {}
    for raw in open(stamped_log, "rb"):  # binary: text mode would also split lines at tqdm's carriage returns
        line = raw.decode(errors="replace")
        if stamp := STAMP.match(line):  # tqdm's bar and a carriage return may come before the epoch line
            if m := MT_EPOCH.match(line[stamp.end() :].rsplit("\r", 1)[-1].strip()):
                stamps[int(m.group(1))] = float(stamp.group(1))
    return [
        dict(
            epoch=r["epoch"],
            bleu_lc=r["val_bleu_lc"],
            since_start_s=stamps[r["epoch"]],
            validation_s=round(r["val_seconds"], 1),
        )
        for r in map(json.loads, open(metrics))
    ]


def joeynmt_rows(train_log: str, results: str) -> list[dict]:
    """One row per validation: 'Predicting' to 'Evaluation result' in its log; BLEU from the harness's results."""
    first, starts, ends = None, [], []
    for line in open(train_log, errors="replace"):
        if not (m := JOEY_TIME.match(line)):
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        first = t if first is None else first
        if "joeynmt.prediction - Predicting" in line:
            starts.append(t)
        elif "joeynmt.prediction - Evaluation result" in line:
            ends.append(t)
    epochs = json.load(open(results))["epochs"]
    return [
        dict(
            epoch=e["epoch"],
            bleu_lc=e["valid_bleu_lc"],
            since_start_s=round(end - first, 1),
            validation_s=round(end - start, 1),
        )
        for e, start, end in zip(epochs, starts, ends)
    ]


def time_to(rows: list[dict], bleu: float) -> float | None:
    """Seconds from the start to the first validation at or above `bleu`; None if none reached it."""
    return next((r["since_start_s"] for r in rows if r["bleu_lc"] >= bleu), None)


def report(mt_log: str, mt_metrics: str, joey_log: str, joey_results: str) -> dict:
    """Both runs' validations, and the seconds each took to reach every 5 BLEU (and the highest level both did)."""
    runs = {"mt_cli": mt_cli_rows(mt_log, mt_metrics), "joeynmt_2_3_0": joeynmt_rows(joey_log, joey_results)}
    top = min(max(r["bleu_lc"] for r in rows) for rows in runs.values())
    levels = sorted({5.0 * k for k in range(1, int(top // 5) + 1)} | {top})
    return {
        "validations": runs,
        "time_to_valid_bleu_lc": {f"{x:g}": {name: time_to(rows, x) for name, rows in runs.items()} for x in levels},
    }


if __name__ == "__main__":
    print(json.dumps(report(*sys.argv[1:5]), indent=1))
