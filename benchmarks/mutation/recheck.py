"""Second look at the survivors of a mutmut run: each is run against the scope's whole test selection.

mutmut runs, for a mutant, only the tests that called the mutated function. Work done in a module- or
session-scoped fixture is credited to the first test that needed it, so a mutant of (say) corpus preparation
is tried on that one test alone, though every later test using the fixture reads its output. This runs each
survivor (and each mutant no test reached) with MUTANT_UNDER_TEST set, as mutmut's own trampoline reads it,
against every test of the selection, stopping at the first failure. Writes SCOPE/recheck.txt.

    python benchmarks/mutation/recheck.py SCOPE   (from run.sh, in its environment; skips those rechecked before)
    python benchmarks/mutation/recheck.py SCOPE NAME...   (these again, after a new test; merged into recheck.txt)
RECHECK_FIRST="tests/a.py tests/b.py" runs those files of the selection first (a survivor then dies sooner).
A scope's [tool.mt_mutation] recheck_also (with recheck_also_k) is run after its selection: subprocess tests.
RECHECK_SELECTION="tests/a.py" runs only those files, without the scope's -k: a recheck of earlier samples'
survivors by tests that existed, unchanged, before those samples were drawn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tomllib
from merge import verdicts
from summarize import listed

HERE = Path(__file__).resolve().parent
NOT_KILLED = ("survived", "no tests")


def judged() -> set[str]:
    """The mutants equivalent.txt and gpu_only.txt already account for."""
    return listed("equivalent.txt") | listed("gpu_only.txt")


def survivors(results: Path) -> list[str]:
    return [name for name, state in verdicts(results).items() if state in NOT_KILLED]


def run_one(name: str, work: Path, selections: list[list[str]], timeout: int) -> tuple[str, str, float]:
    """The selections one after another (the scope's, then its subprocess tests), until one fails."""
    start = time.perf_counter()
    env = {**os.environ, "MUTANT_UNDER_TEST": name}
    for selection in selections:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection]
        try:
            code = subprocess.run(cmd, cwd=work / "mutants", env=env, capture_output=True, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return name, "timeout", time.perf_counter() - start
        if code != 0:
            return name, "killed", time.perf_counter() - start
    return name, "survived", time.perf_counter() - start


def main(scope: str, only: list[str]) -> None:
    tables = tomllib.loads((HERE / "scopes" / f"{scope}.toml").read_text())["tool"]
    table, extra = tables["mutmut"], tables.get("mt_mutation", {})
    files = table["pytest_add_cli_args_test_selection"]
    first = os.environ.get("RECHECK_FIRST", "").split()  # likely killers first: -x stops sooner, same verdicts
    selection = table.get("pytest_add_cli_args", []) + first + [f for f in files if f not in first]  # with its -k
    selections = [selection]
    if extra.get("recheck_also"):  # subprocess tests, which mutmut's own run cannot use
        selections.append(["-k", extra.get("recheck_also_k", ""), *extra["recheck_also"]])
    if os.environ.get("RECHECK_SELECTION"):
        selections = [os.environ["RECHECK_SELECTION"].split()]
    path = HERE / scope / "recheck.txt"
    earlier = [line for line in path.read_text().splitlines() if line] if path.exists() else []
    skip = judged() | ({line.split(": ")[0] for line in earlier} if not only else set())  # done by a past run
    names = [
        name for name in survivors(HERE / scope / "results.txt") if name not in skip and (not only or name in only)
    ]
    work = Path(f"/tmp/mt-mutation-{scope}")
    jobs, timeout = int(os.environ.get("JOBS", "2")), int(os.environ.get("RECHECK_TIMEOUT", "900"))
    kept = [line for line in earlier if line.split(": ")[0] not in names]
    lines = []
    with ThreadPoolExecutor(jobs) as pool:
        for name, verdict, seconds in pool.map(lambda n: run_one(n, work, selections, timeout), names):
            lines.append(f"{name}: {verdict}  ({seconds:.0f} s)")
            print(lines[-1], flush=True)
    path.write_text("".join(line + "\n" for line in sorted(kept + lines)))
    print(f"{sum(' killed' in line for line in lines)} of {len(lines)} killed on the recheck")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
