#!/usr/bin/env bash
# Choose the GNMT length penalty on the validation set: beam-5 validation BLEU of one checkpoint per alpha.
#   bash benchmarks/length_penalty.sh saved/multi30k_cpu/best.pt > benchmarks/cpu/length_penalty_valid.txt
set -euo pipefail
ckpt=${1:?checkpoint}
out=$(mktemp -d)
for alpha in ${ALPHAS:-0.6 0.8 1.0 1.2 1.5 2.0 2.5}; do
  mt evaluate --checkpoint "$ckpt" --split valid --beam 5 --length-penalty "$alpha" --out "$out" 2>/dev/null \
    | awk -v a="$alpha" '$1 == "valid" {print "length_penalty " a "  valid BLEU " $2 "  (lc " $3 ")"}'
done
rm -rf "$out"
