#!/usr/bin/env bash
# Mutation testing of the scope set in pyproject.toml ([tool.mutmut]) with mutmut 3; a benchmark, not CI.
# Writes benchmarks/mutation/results.txt (every mutant and its status) and summary.txt.
# mutmut runs the tests from a copy of the tree in mutants/: Multi30k is found through a ./shared link
# (as ../shared from the tests' copy), and the test corpus is prepared once into a fixed root.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -e shared ] || ln -s ../shared shared
export MT_TEST_DATA_ROOT="${MT_TEST_DATA_ROOT:-/tmp/mt_mutation_data}"
rm -rf mutants
start=$(date +%s)
mutmut run --max-children "${JOBS:-2}" || true
mutmut results --all true > benchmarks/mutation/results.txt 2>&1 || mutmut results > benchmarks/mutation/results.txt
python benchmarks/mutation/summarize.py benchmarks/mutation/results.txt "$(( $(date +%s) - start ))" \
  > benchmarks/mutation/summary.txt
cat benchmarks/mutation/summary.txt
