#!/usr/bin/env bash
# Mutation testing with mutmut 3 over one scope (benchmarks/mutation/scopes/SCOPE.toml); a benchmark, not CI.
#   bash benchmarks/mutation/run.sh model     -> benchmarks/mutation/model/{results,summary,recheck}.txt
#   PATTERNS="mt_cli.data.stream.* mt_cli.data.clean.*" bash benchmarks/mutation/run.sh data   (part of a scope)
#   PATTERNS="$(python benchmarks/mutation/sample.py data 300)" bash ... data   (a random sample of the untried)
# A partial run keeps the earlier runs' verdicts for the mutants it did not try (merge.py), and recheck.py
# tries only survivors it has not rechecked before.
# mutmut runs in a copy of the tree (/tmp/mt-mutation-SCOPE) whose pyproject.toml gets the scope's
# [tool.mutmut] table, so the working tree stays free. The tests find Multi30k as ../shared from the repo and
# from mutmut's mutants/ copy; the test corpus is prepared once into a fixed root (MT_TEST_DATA_ROOT).
set -euo pipefail
scope="${1:?usage: run.sh SCOPE (one of: $(ls "$(dirname "$0")/scopes" | sed 's/.toml//' | tr '\n' ' '))}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
shared="$(cd "$repo/../shared" && pwd)"
work="/tmp/mt-mutation-$scope"
out="$repo/benchmarks/mutation/$scope"
earlier="$(mktemp)"; cp "$out/results.txt" "$earlier" 2>/dev/null || true  # a partial run merges into it
rm -rf "$work" && mkdir -p "$work" "$out"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work")
cat "$repo/benchmarks/mutation/scopes/$scope.toml" >> "$work/pyproject.toml"
ln -sfn "$shared" "$work/shared"            # ../shared from mutants/tests
ln -sfn "$shared" "$(dirname "$work")/shared" 2>/dev/null || true  # ../shared from tests/ (/tmp/shared)
if grep -q "fresh-corpus" "$repo/benchmarks/mutation/scopes/$scope.toml"; then
  unset MT_TEST_DATA_ROOT
else
  export MT_TEST_DATA_ROOT="${MT_TEST_DATA_ROOT:-/tmp/mt_mutation_data}"
fi
cd "$work"
start=$(date +%s)
mutmut run --max-children "${JOBS:-2}" ${PATTERNS:-} || true
mutmut results --all true > "$work/results.new" 2>&1 || mutmut results > "$work/results.new"
python "$repo/benchmarks/mutation/merge.py" "$work/results.new" "$earlier" > "$out/results.txt"
python "$repo/benchmarks/mutation/recheck.py" "$scope"  # survivors against the whole selection
python "$repo/benchmarks/mutation/summarize.py" "$out/results.txt" "$(( $(date +%s) - start ))" > "$out/summary.txt"
cat "$out/summary.txt"
