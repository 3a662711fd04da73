"""Per run: the first epoch whose validation BLEU reaches a threshold, its elapsed time, and the best.
Usage: python benchmarks/time_to_bleu.py result/*/metrics.jsonl [--bleu 37.4]"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def first_reaching(rows: list[dict], bleu: float) -> dict | None:
    return next((r for r in rows if (r.get("val_bleu") or 0) >= bleu), None)


def main(argv: list[str]) -> None:
    bleu = 37.4
    if "--bleu" in argv:
        i = argv.index("--bleu")
        bleu = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    print(f"{'run':24} {'epochs':>6} {'first >= ' + str(bleu):>22} {'best val BLEU':>14}  median epoch s")
    for path in argv:
        if not Path(path).is_file():  # e.g. an unmatched shell glob: no runs yet
            continue
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        if not rows:
            continue
        hit = first_reaching(rows, bleu)
        at = f"epoch {hit['epoch']}, {hit['elapsed']} s" if hit else "not reached"
        best = max(rows, key=lambda r: r.get("val_bleu") or 0)
        per_epoch = sorted(r["seconds"] + r["val_seconds"] for r in rows)[len(rows) // 2]
        print(
            f"{Path(path).parent.name:24} {len(rows):6d} {at:>22} {best.get('val_bleu') or 0:9.2f} "
            f"(ep {best['epoch']:2d})  {per_epoch:.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
