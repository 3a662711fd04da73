"""A uniform random sample of a scope's mutants that no run has tried yet, for PATTERNS (mutant sampling:
the score of a simple random sample estimates the whole set's, with the interval summarize.py prints).

    PATTERNS="$(python benchmarks/mutation/sample.py data 300 --seed 1)" bash benchmarks/mutation/run.sh data
The names come from SCOPE/results.txt, which lists every mutant of the scope once mutmut has generated them."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from merge import verdicts

HERE = Path(__file__).resolve().parent


def untried(results: Path, exclude: tuple[str, ...]) -> list[str]:
    """Mutant names still 'not checked', minus those whose module matches an excluded prefix."""
    names = [n for n, state in verdicts(results).items() if state == "not checked" and not n.startswith(exclude)]
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scope")
    parser.add_argument("n", type=int)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exclude", nargs="*", default=[], help="module prefixes left out, e.g. mt_cli.data.fit")
    args = parser.parse_args()
    names = untried(HERE / args.scope / "results.txt", tuple(args.exclude))
    print(" ".join(sorted(random.Random(args.seed).sample(names, min(args.n, len(names))))))


if __name__ == "__main__":
    main()
