#!/usr/bin/env bash
# CPU training throughput of mt_cli against JoeyNMT 2.3.0, like for like, one after the other in this run:
# the same model (configs/peer_joeynmt.yaml: word level, 3+3 layers, d 256, FFN 512), the same first 1,280
# Multi30k training pairs, batches of 128 sentences, EPOCHS epochs each, on this machine's cores. Both count
# non-pad target tokens (with <eos>) per second of training, validation excluded, whole epochs (data loading
# included). Writes benchmarks/cpu/peer_cpu.json (and the peer's logs under $WORK).
#   JOEY_PY: a python with joeynmt 2.3.0 (see ../shared/peers/joeynmt/README.md), e.g.
#     python3 -m venv /tmp/joeyenv && /tmp/joeyenv/bin/pip install torch==2.13.0 sacrebleu tensorboard \
#       matplotlib sentencepiece joblib pyyaml && /tmp/joeyenv/bin/pip install --no-deps joeynmt==2.3.0 \
#       sacremoses==0.1.1 subword-nmt==0.3.8 importlib_metadata==8.7.0 zipp==3.23.0
set -euo pipefail
cd "$(dirname "$0")/.."
JOEY_PY=${JOEY_PY:-/tmp/joeyenv/bin/python}
EPOCHS=${EPOCHS:-3}
WORK=${WORK:-/tmp/mt_cpu_peer}
PEER=${PEER:-../shared/peers/joeynmt}
DATA=${DATA:-../shared/data/multi30k}
N=1280
rm -rf "$WORK" && mkdir -p "$WORK/corpus"

# the peer first (its smoke mode 2: the first 1,280 training pairs, epoch-end validation)
PY="$JOEY_PY" SMOKE=2 EPOCHS="$EPOCHS" BUDGET=900 TRAIN_WALL=600 TEST_TIMEOUT=${TEST_TIMEOUT:-30} OUT="$WORK/peer_out" WORK="$WORK/peer_work" \
  DATA="$(cd "$DATA" && pwd)" bash "$PEER/run.sh" > "$WORK/peer.log" 2>&1 || true

# mt_cli on the same pairs: a `files` corpus of the first 1,280 lines, the full validation set
for lang in de en; do
  gzip -cd "$DATA/train.$lang.gz" | sed -n "1,${N}p" > "$WORK/corpus/train.$lang"  # sed reads to the end: no SIGPIPE
  zcat "$DATA/val.$lang.gz" > "$WORK/corpus/val.$lang"
done
SETS=(--set data.corpus=files --set "data.train=$WORK/corpus/train" --set "data.valid=$WORK/corpus/val"
      --set "data.root=$WORK/data" --set "train.epochs=$EPOCHS" --set train.save_every=0
      --set decode.beam_size=1)  # the final test is not what this measures: greedy keeps it short
python -m mt_cli prepare -c configs/peer_joeynmt.yaml "${SETS[@]}" > "$WORK/mt_prepare.log" 2>&1
python -m mt_cli train -c configs/peer_joeynmt.yaml "${SETS[@]}" --device cpu --saved "$WORK/saved" \
  --result "$WORK/result" > "$WORK/mt_train.log" 2>&1

python - "$WORK" "$EPOCHS" <<'PY'
import json, os, platform, statistics, sys
import torch
work, epochs = sys.argv[1], int(sys.argv[2])
peer = json.load(open(f"{work}/peer_out/results.json"))
peer_epochs = [e["train_tok_per_s"] for e in peer.get("epochs", []) if e.get("train_tok_per_s")]
ours = [json.loads(line) for line in open(f"{work}/result/peer_joeynmt/metrics.jsonl")]
ours_epochs = [r["tgt_tokens_per_s"] for r in ours]
report = {
    "what": "training target tok/s (non-pad, with <eos>), whole epochs without validation, same model, same 1,280 "
            "pairs, batches of 128 sentences; median over epochs 2.. (epoch 1 warms up)",
    "device": f"cpu ({os.cpu_count()} cores): {platform.processor() or platform.machine()}",
    "torch": torch.__version__, "threads": torch.get_num_threads(), "epochs": epochs,
    "joeynmt_2_3_0": {"per_epoch": peer_epochs, "median": statistics.median(peer_epochs[1:] or peer_epochs)},
    "mt_cli": {"per_epoch": ours_epochs, "median": statistics.median(ours_epochs[1:] or ours_epochs),
               "precision": "fp32"},
}
report["ratio"] = round(report["mt_cli"]["median"] / report["joeynmt_2_3_0"]["median"], 2)
json.dump(report, open("benchmarks/cpu/peer_cpu.json", "w"), indent=1)
print(json.dumps(report, indent=1))
PY
