"""Merge a partial run's `mutmut results` into the scope's earlier results.txt: a mutant this run did not try
('not checked') keeps the verdict an earlier run gave it. The code under mutation must not have changed
between the runs (mutant names are numbered per function).

    python benchmarks/mutation/merge.py NEW EARLIER > results.txt"""

from __future__ import annotations

import sys
from pathlib import Path


def verdicts(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        name, sep, state = line.strip().rpartition(": ")
        if sep and name.startswith("mt_cli"):
            out[name] = state.strip()
    return out


def main(new: str, earlier: str) -> None:
    now, before = verdicts(Path(new)), verdicts(Path(earlier))
    for name, state in now.items():
        kept = before.get(name, "not checked") if state == "not checked" else state
        print(f"    {name}: {kept}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
