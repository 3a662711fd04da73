"""`mt runs`: the training runs under result/, their config differences and their scores, as a table."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mt_cli.config.flat import flatten
from mt_cli.plots import read_metrics, resolve_run
from mt_cli.safe_parse import read_json_or_none

MISSING = "-"
IGNORED = {"name"}  # the run column names the run already


def is_run(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "config.json").is_file() or (folder / "metrics.jsonl").is_file())


def find_runs(result_root: str | Path = "result", names: list[str] | None = None) -> list[Path]:
    """The named runs (folders or names under result_root), or every run folder under result_root,
    oldest first."""
    if names:
        folders = [resolve_run(n, result_root) for n in names]
        for f in folders:
            if not is_run(f):
                raise ValueError(f"{f}: not a training run (no config.json or metrics.jsonl)")
        return folders
    root = Path(result_root)
    if root.is_file():
        raise ValueError(f"{root}: is a file, not the folder of runs (--result DIR)")
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (train a model first, or pass --result DIR)")
    runs = [p for p in root.iterdir() if is_run(p)]

    def started(p: Path) -> float:
        f = p / "config.json"
        return (f if f.is_file() else p / "metrics.jsonl").stat().st_mtime

    return sorted(runs, key=lambda p: (started(p), p.name))


def load_run(folder: Path) -> dict:
    """What the table shows about one run (missing files give missing values, never an error)."""
    cfg = read_json_or_none(folder / "config.json")  # bounded in size and depth: a hostile file reads as missing
    try:
        recs = read_metrics(folder)
    except ValueError:
        recs = []
    summary = read_json_or_none(folder / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    bleus = [r["val_bleu"] for r in recs if _finite(r.get("val_bleu"))]
    losses = [r["val_loss"] for r in recs if _finite(r.get("val_loss"))]
    tests = summary.get("test")
    scored = {
        k: v
        for k, v in (tests if isinstance(tests, dict) else {}).items()
        if k.startswith("test") and isinstance(v, dict) and "bleu" in v
    }
    test = {k: v["bleu"] for k, v in scored.items()}
    test_lc = {k: v["bleu_lc"] for k, v in scored.items() if "bleu_lc" in v}  # (runs before cased scoring: none)
    return {
        "run": folder.name,
        "path": str(folder),
        "config": flatten(cfg) if isinstance(cfg, dict) else {},
        "epochs": len(recs),
        "best_val_bleu": max(bleus) if bleus else None,
        "best_val_loss": min(losses) if losses else None,
        "test_bleu": test,
        "test_bleu_lc": test_lc,
        "finished": bool(summary),
    }


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def differing_keys(configs: list[dict]) -> list[str]:
    """Config keys (dotted) whose values are not the same in every run, in config order."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c if k not in keys]
    return [k for k in keys if k not in IGNORED and len({json.dumps(c.get(k, MISSING)) for c in configs}) > 1]


def _fmt(v, width: int = 24) -> str:
    if v is None:
        return MISSING
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(v, float):
        s = f"{v:g}"
    elif isinstance(v, (list, tuple)):
        s = json.dumps(v)
    else:
        s = str(v)
    return s if len(s) <= width else s[: width - 1] + "…"


def runs_report(folders: list[Path]) -> dict:
    runs = [load_run(f) for f in folders]
    return {"differences": differing_keys([r["config"] for r in runs]), "runs": runs}


def format_runs(report: dict) -> str:
    runs, diff = report["runs"], report["differences"]
    tests: list[str] = []
    for r in runs:
        tests += [t for t in r["test_bleu"] if t not in tests]
    header = ["run"] + diff + ["epochs", "best val BLEU", "best val loss"]
    header += [h for t in tests for h in (f"{t} BLEU", f"{t} BLEU lc")]
    rows = []
    for r in runs:
        cfg = r["config"]
        rows.append(
            [r["run"]]
            + [_fmt(cfg[k]) if cfg.get(k) is not None else "null" if k in cfg else MISSING for k in diff]
            + [str(r["epochs"]), _fmt(r["best_val_bleu"]), _fmt(r["best_val_loss"])]
            + [cell for t in tests for cell in (_fmt(r["test_bleu"].get(t)), _fmt(r.get("test_bleu_lc", {}).get(t)))]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    numeric = set(range(len(diff) + 1, len(header)))

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    if len(runs) > 1 and not diff:
        out.append("(the runs have the same config)")
    out.append("BLEU: cased sacreBLEU (13a) on detokenized output; BLEU lc: the same output lowercased")
    return "\n".join(s.rstrip() for s in out)
