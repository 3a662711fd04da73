"""Mutation score from `mutmut results --all true`: counts per status, and killed / (mutants − those judged
equivalent in equivalent.txt, one mutant name per line with the reason after a '#')."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

KILLED = {"killed", "timeout", "segfault"}  # a mutant a test (or its hang) exposed


def main(results: str, seconds: str) -> None:
    status = {}
    for line in Path(results).read_text().splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep and name.startswith("mt_cli"):
            status[name] = state.strip()
    eq_file = Path(__file__).with_name("equivalent.txt")
    equivalent = {
        line.split("#")[0].strip() for line in (eq_file.read_text().splitlines() if eq_file.exists() else [])
    } - {""}
    counts = Counter(status.values())
    judged = {m for m in status if m not in equivalent}
    killed = sum(status[m] in KILLED for m in judged)
    print(f"mutants: {len(status)} in {seconds} s; by status: {dict(sorted(counts.items()))}")
    print(f"judged equivalent (equivalent.txt): {len(equivalent & set(status))}")
    print(f"score: {killed} killed of {len(judged)} non-equivalent = {100 * killed / max(1, len(judged)):.1f}%")
    for m in sorted(judged):
        if status[m] not in KILLED:
            print(f"not killed: {m}: {status[m]}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
