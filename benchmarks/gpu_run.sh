#!/usr/bin/env bash
# One GPU session, every figure of the README's results table in one go (run from the repo root), in order
# of value, each stage capped by the time left (TOTAL) and its results copied to $OUT as soon as it ends:
#   1. `mt train` with the default config (quality, time per epoch, time to BLEU, whole-run time)
#   2. `mt bench` on the peer-sized config (CUDA graphs, then eager for comparison) and on the default
#   3. the JoeyNMT 2.3.0 peer harness (../shared/peers/joeynmt, copied to .gpu/) on the same GPU, then the
#      same peer-sized model trained by `mt train` for the peer's epochs and decoded at its batch size (3b)
#   4. decoding extras: larger decoding batches, per-operator profiles of beam 5 and greedy
#   5. recipe variants of the default config while time is left ($VARIANTS; time to BLEU per run)
# Needs: what benchmarks/prepare_gpu_payload.sh builds (prepared corpora in data/, spaCy is not needed
# for training; for the peer .gpu/{peers/joeynmt,whl,data/multi30k}). Writes $OUT/{summary.txt,results.tar.gz}.
# DRY=1 runs every stage for a few steps on the CPU to check the script itself. STAGES=train,bench runs only
# those stages (e.g. STAGES=peer,variants in a second call while the machine is still warm: runs/ stays).
set -u
OUT="${OUT:-/tmp/gpu_out}"
PY="${PY:-python3}"
TOTAL="${TOTAL:-560}"      # seconds this script may take
RUNS="${RUNS:-runs}"
STAGES="${STAGES:-train,bench,peer,peer_same,extras,variants}"
T0=$(date +%s)
mkdir -p "$OUT" "$RUNS/logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
left() { echo $(( TOTAL - ($(date +%s) - T0) - 12 )); }   # 12 s kept for packing
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }  # a stage's timeout
want() { [[ ",$STAGES," == *",$1,"* ]]; }
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$RUNS/logs/timeline.txt"; }
quiet() { tr '\r' '\n' | grep -vE '[0-9]+/[0-9]+ \[|it/s\]|s/it\]|^\s*$'; }
pack() {  # what is done so far, to $OUT (a command killed at its limit still returns these)
  $PY benchmarks/time_to_bleu.py "$RUNS"/result/*/metrics.jsonl > "$RUNS/logs/time_to_bleu.txt" 2>&1
  tar czf "$OUT/results.tar.gz" --exclude='*.pt' --exclude='tensorboard' "$RUNS" 2>/dev/null
  { cat "$RUNS/logs/env.txt" "$RUNS/logs/timeline.txt" "$RUNS/logs/time_to_bleu.txt"
    for f in "$RUNS"/result/*/summary.json "$RUNS"/bench_*.json; do [ -f "$f" ] && { echo "== $f"; cat "$f"; }; done
    cat "$RUNS/peer/summary.md" 2>/dev/null; } > "$OUT/summary.txt"
}
MT="$PY -m mt_cli"
SET=(); BSET=(); BSTEPS=400; DEV=cuda
if [ "${DRY:-0}" = "1" ]; then
  BSET=(--set decode.max_len_a=0 --set decode.max_len_b=3)
  SET=(--set train.max_steps=3 --set train.epochs=2 "${BSET[@]}"); BSTEPS=4; DEV=cpu
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  $PY -c "import torch,sys,sacrebleu;print('torch',torch.__version__,'cuda',torch.version.cuda,'python',sys.version.split()[0],'sacrebleu',sacrebleu.__version__)"
} > "$RUNS/logs/env.txt"
say "env: $(tr '\n' ' ' < "$RUNS/logs/env.txt")"

# ---- 1. default training -----------------------------------------------------------------------
if want train; then
  say "train default"
  TS=$(date +%s)
  timeout "$(cap 330)" $MT train --device $DEV --saved "$RUNS/saved" --result "$RUNS/result" \
    "${SET[@]}" 2>&1 | quiet > "$RUNS/logs/train_default.log"
  say "train default rc=${PIPESTATUS[0]}, whole command $(( $(date +%s) - TS )) s"; tail -25 "$RUNS/logs/train_default.log"
  pack
fi
# the checkpoint the final test chose (averaged.pt, or best.pt where that did better on valid)
CK=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['test']['checkpoint'])" \
  "$RUNS/result/multi30k_de_en/summary.json" 2>/dev/null) || CK="$RUNS/saved/multi30k_de_en/best.pt"

# ---- 2. benchmarks ------------------------------------------------------------------------------
if want bench; then
  say "bench peer-sized (graphs)"
  timeout "$(cap 120)" $MT bench -c configs/peer_joeynmt.yaml --device $DEV --steps $BSTEPS \
    --out "$RUNS/bench_peer_graphs.json" "${BSET[@]}" 2>&1 | quiet | tail -4
  say "bench peer-sized (eager)"
  timeout "$(cap 90)" $MT bench -c configs/peer_joeynmt.yaml --device $DEV --steps $(( BSTEPS / 2 )) \
    --set train.cuda_graphs=false --out "$RUNS/bench_peer_eager.json" "${BSET[@]}" 2>&1 | quiet | tail -2
  say "bench default (+ trained model translation)"
  timeout "$(cap 120)" $MT bench --device $DEV --steps $BSTEPS --checkpoint "$CK" \
    --out "$RUNS/bench_default.json" 2>&1 | quiet | tail -2
  pack
fi

# ---- 3. the peer, same GPU (its nn.Transformer microbenchmark is skipped unless PEER_MB_TIMEOUT is set) --
if want peer; then
  PB=$(cap 200)
  if [ "${DRY:-0}" != "1" ] && [ -d .gpu/peers/joeynmt ] && [ "$PB" -ge 120 ]; then
    say "peer harness (budget ${PB}s)"
    WHEELS=$PWD/.gpu/whl DATA=$PWD/.gpu/data/multi30k OUT=$PWD/$RUNS/peer WORK=/tmp/joey_work BUDGET=$PB \
      TRAIN_WALL=$(( PB - 120 )) RESERVE=100 EPOCHS=6 MB_TIMEOUT="${PEER_MB_TIMEOUT:-1}" TEST_TIMEOUT=45 \
      timeout -s KILL $(( PB + 20 )) bash .gpu/peers/joeynmt/run.sh > "$RUNS/logs/peer.log" 2>&1
    say "peer rc=$?"; tail -30 "$RUNS/peer/summary.md" 2>/dev/null
  elif [ "${DRY:-0}" != "1" ]; then
    say "peer harness SKIPPED: .gpu/peers/joeynmt missing or ${PB}s left"
  fi
  pack
fi

# ---- 3b. like for like with the peer: the same peer-sized config (word level, lowercased, 9.0M parameters,
# batches of 128 sentences) trained by `mt train` for as many epochs as the peer completed, so both sides give
# whole-epoch throughput with data loading and time from the first step to validation BLEU X; then decoding
# at the peer's batch size of 128 with that model.
if want peer_same; then
  PE=$($PY -c "import json,sys; print(max(1, len(json.load(open(sys.argv[1]))['epochs'])))" \
    "$RUNS/peer/results.json" 2>/dev/null) || PE=5
  [ "${DRY:-0}" = "1" ] && PE=2
  say "peer-sized mt train, $PE epochs (the peer's count)"
  TS=$(date +%s)
  timeout "$(cap 150)" $MT train -c configs/peer_joeynmt.yaml --device $DEV --saved "$RUNS/saved" \
    --result "$RUNS/result" --set train.epochs=$PE "${SET[@]}" 2>&1 | quiet > "$RUNS/logs/train_peer_sized.log"
  say "peer-sized train rc=${PIPESTATUS[0]}, whole command $(( $(date +%s) - TS )) s"
  say "peer-sized decoding at batches of 128"
  timeout "$(cap 60)" $MT bench --device $DEV --no-training --checkpoint "$RUNS/saved/peer_joeynmt/best.pt" \
    --set decode.batch_size=128 --out "$RUNS/bench_peer_sized_bs128.json" "${BSET[@]}" 2>&1 | quiet | tail -2
  pack
fi

# ---- 4. decoding extras: larger batches (launch-bound steps at 500 sentences x 5 beams?), profiles --------
if want extras; then
  for bs in 1000 2000; do
    [ "$(left)" -lt 30 ] && break
    say "bench default translation only, decode.batch_size=$bs"
    timeout "$(cap 60)" $MT bench --device $DEV --no-training --checkpoint "$CK" --set decode.batch_size=$bs \
      --out "$RUNS/bench_default_bs$bs.json" "${BSET[@]}" 2>&1 | quiet | grep -A12 '"translation"'
  done
  for k in 5 1; do
    [ "$(left)" -lt 25 ] && break
    say "profile decoding, beam $k"
    timeout "$(cap 60)" $PY benchmarks/profile_decode.py "$CK" --beam $k --device $DEV > "$RUNS/logs/profile_beam$k.txt" 2>&1
    head -1 "$RUNS/logs/profile_beam$k.txt"
  done
  pack
fi

# ---- 5. recipe variants of the default config, side by side on the GPU while time is left. They share
# the GPU, so their wall times do not count: what counts is their BLEU and the epoch at which validation
# BLEU first reaches 37.4 (time to BLEU = that many epochs at the default run's epoch time).
# VARIANTS: "name --set k=v ..." separated by ';' (default: faster-learning schedules for time to BLEU).
if want variants; then
  VARIANTS="${VARIANTS:-v_lr1e3 --set train.lr=1e-3 --set train.warmup_steps=500;v_preln --set model.norm=pre --set train.lr=1e-3 --set train.warmup_steps=500}"
  T=$(left)
  if [ "$T" -ge 60 ] || [ "${DRY:-0}" = "1" ]; then
    IFS=';' read -ra VLIST <<< "$VARIANTS"
    for v in "${VLIST[@]}"; do
      v="${v# }"; name=${v%% *}; args=""; [[ "$v" == *" "* ]] && args=${v#* }
      say "variant $name (timeout ${T}s): $args"
      # shellcheck disable=SC2086 - args is a list of --set options
      timeout "$T" $MT train --device $DEV --saved "$RUNS/saved" --result "$RUNS/result" --set name=$name $args \
        "${SET[@]}" > "$RUNS/logs/variant_$name.log" 2>&1 &
    done
    wait
    for f in "$RUNS"/logs/variant_*.log; do echo "== $f"; quiet < "$f" | grep -E "^(epoch|valid|test_)" | tail -6; done
  else
    say "no time left for variants (${T}s)"
  fi
fi
say "done"
pack
cat "$RUNS/logs/time_to_bleu.txt"
