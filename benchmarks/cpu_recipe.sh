#!/usr/bin/env bash
# The CPU recipe's whole README command, timed from the shell: prepare (from the cached raw Multi30k files;
# the prepared corpus is removed first so that it is really built) and train, final test included.
# Run alone on an idle machine. Writes benchmarks/cpu/recipe_run.log, recipe_metrics.jsonl, recipe_summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/cpu
name=$(python -c "from mt_cli.config import load_config; print(load_config('configs/multi30k_cpu.yaml').data.corpus_name)")
rm -rf "data/$name" saved/multi30k_cpu result/multi30k_cpu
start=$(date +%s.%N)
set +e
{ mt prepare -c configs/multi30k_cpu.yaml && mt train -c configs/multi30k_cpu.yaml; } > "$out/recipe_run.raw" 2>&1
rc=$?
end=$(date +%s.%N)
set -e
tr '\r' '\n' < "$out/recipe_run.raw" | grep -v 'it/s\]$\|s/it\]$\|^ *$' > "$out/recipe_run.log" || true
rm "$out/recipe_run.raw"
echo "WALL_SECONDS $(echo "$end - $start" | bc) rc=$rc" >> "$out/recipe_run.log"
[ "$rc" = 0 ] || exit "$rc"
cp result/multi30k_cpu/metrics.jsonl "$out/recipe_metrics.jsonl"
cp result/multi30k_cpu/summary.json "$out/recipe_summary.json"
tail -n 12 "$out/recipe_run.log"
