"""Mutation score from `mutmut results --all true`: counts per status, and killed / (mutants − those judged
equivalent in equivalent.txt). gpu_only.txt lists survivors that differ only on an accelerator: they count
as not killed, and the score without them is given beside. Both files: one mutant per line, reason after '#'."""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

from merge import verdicts

KILLED = {"killed", "timeout", "segfault"}  # a mutant a test (or its hang) exposed


def listed(name: str) -> set[str]:
    path = Path(__file__).with_name(name)
    lines = path.read_text().splitlines() if path.exists() else []
    return {line.split("#")[0].strip() for line in lines} - {""}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k / n, in percent."""
    if not n:
        return 0.0, 100.0
    p, q = k / n, z * z / n
    mid, half = (p + q / 2) / (1 + q), z * math.sqrt(p * (1 - p) / n + q / (4 * n)) / (1 + q)
    return 100 * (mid - half), 100 * (mid + half)


def samples(folder: Path, status: dict, equivalent: set, gpu_only: set) -> None:
    """The score of each random sample (SCOPE/sample*.txt: names from sample.py), with its 95% interval."""
    for path in sorted(folder.glob("sample*.txt")):
        names = [n for n in path.read_text().split() if n in status]
        judged = [n for n in names if n not in equivalent and status[n] != "not checked"]
        killed = sum(status[n] in KILLED for n in judged)
        low, high = wilson(killed, len(judged))
        print(
            f"{path.name}: {len(names)} sampled, {len(names) - len(judged)} equivalent; {killed} killed of "
            f"{len(judged)} = {100 * killed / max(1, len(judged)):.1f}% (95% interval {low:.1f}-{high:.1f}%); "
            f"GPU-only among them: {len(set(judged) & gpu_only)}"
        )


def main(results: str, seconds: str) -> None:
    status = verdicts(Path(results))
    by_status = dict(sorted(Counter(status.values()).items()))  # mutmut's own verdicts
    recheck = Path(results).with_name("recheck.txt")  # survivors killed by the whole test selection (recheck.py)
    rechecked = 0
    for line in recheck.read_text().splitlines() if recheck.exists() else []:
        name, _, verdict = line.partition(": ")
        if verdict and verdict.split()[0] in KILLED and status.get(name) not in KILLED:
            status[name], rechecked = "killed", rechecked + 1
    equivalent, gpu_only = listed("equivalent.txt") & set(status), listed("gpu_only.txt") & set(status)
    unchecked = {m for m, state in status.items() if state == "not checked"}  # outside a partial run's patterns
    judged = {m for m in status if m not in equivalent and m not in unchecked}
    killed = sum(status[m] in KILLED for m in judged)
    print(f"mutants: {len(status)} in {seconds} s; by status: {by_status}")
    if unchecked:
        print(
            f"not run (outside this run's PATTERNS): {len(unchecked)}; the score is over the other "
            f"{len(status) - len(unchecked)}"
        )
    if rechecked:
        print(f"killed on the recheck against the whole test selection (recheck.txt): {rechecked}")
    print(f"judged equivalent (equivalent.txt): {len(equivalent)}; GPU-only (gpu_only.txt): {len(gpu_only)}")
    print(f"score: {killed} killed of {len(judged)} non-equivalent = {100 * killed / max(1, len(judged)):.1f}%")
    here = len(judged - gpu_only)
    print(f"without the GPU-only: {killed} of {here} = {100 * killed / max(1, here):.1f}%")
    samples(Path(results).parent, status, equivalent, gpu_only)
    for m in sorted(judged):
        if status[m] not in KILLED:
            print(f"not killed: {m}: {status[m]}" + ("  (GPU-only)" if m in gpu_only else ""))


if __name__ == "__main__":
    main(*sys.argv[1:3])
