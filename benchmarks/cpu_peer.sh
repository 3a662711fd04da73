#!/usr/bin/env bash
# CPU training throughput of mt_cli against JoeyNMT 2.3.0, like for like, one after the other in this run:
# the same model (configs/peer_joeynmt.yaml: word level, 3+3 layers, d 256, FFN 512), the whole Multi30k
# training set (29,000 pairs; N=1280 for the harness's smoke-sized subset), batches of 128 sentences, EPOCHS
# epochs each, on this machine's cores. Both count non-pad target tokens (with <eos>) per second of training,
# validation excluded, whole epochs (data loading included); and, from each validation, its lowercased sacreBLEU
# on the raw references, the seconds since the training process started and the validation's own seconds (loss
# and greedy decoding of the 1,014 sentences in batches of 128, both). The peer runs its own harness
# (../shared/peers/joeynmt, CPU mode: its SMOKE=2 settings without the 1,280-pair cut). Writes
# benchmarks/cpu/peer_cpu.json and copies both training logs to benchmarks/cpu/.
#   JOEY_PY: a python with joeynmt 2.3.0 (see ../shared/peers/joeynmt/README.md), e.g.
#     python3 -m venv /tmp/joeyenv && /tmp/joeyenv/bin/pip install torch==2.13.0 sacrebleu tensorboard \
#       matplotlib sentencepiece joblib pyyaml tqdm && /tmp/joeyenv/bin/pip install --no-deps joeynmt==2.3.0 \
#       sacremoses==0.1.1 subword-nmt==0.3.8 importlib_metadata==8.7.0 zipp==3.23.0
set -euo pipefail
cd "$(dirname "$0")/.."
JOEY_PY=${JOEY_PY:-/tmp/joeyenv/bin/python}
EPOCHS=${EPOCHS:-2}
WORK=${WORK:-/tmp/mt_cpu_peer}
PEER=${PEER:-../shared/peers/joeynmt}
DATA=${DATA:-../shared/data/multi30k}
N=${N:-29000}
rm -rf "$WORK" && mkdir -p "$WORK/corpus"

# the peer first: its CPU smoke mode 2 (no CUDA, epoch-end validation), on the first N training pairs
cp -r "$PEER" "$WORK/harness"
sed -i "s/--max-train 1280); CFG_EXTRA=(--n-train 1280/--max-train $N); CFG_EXTRA=(--n-train $N/" "$WORK/harness/run.sh"
grep -q -- "--max-train $N" "$WORK/harness/run.sh"
PY="$JOEY_PY" SMOKE=2 EPOCHS="$EPOCHS" BUDGET=$((EPOCHS * 900 + 300)) TRAIN_WALL=$((EPOCHS * 900)) \
  TEST_TIMEOUT=${TEST_TIMEOUT:-30} OUT="$WORK/peer_out" WORK="$WORK/peer_work" \
  DATA="$(cd "$DATA" && pwd)" bash "$WORK/harness/run.sh" > "$WORK/peer.log" 2>&1 || true

# mt_cli on the same pairs: a `files` corpus of the first N lines, the full validation set
for lang in de en; do
  gzip -cd "$DATA/train.$lang.gz" | sed -n "1,${N}p" > "$WORK/corpus/train.$lang"  # sed reads to the end: no SIGPIPE
  zcat "$DATA/val.$lang.gz" > "$WORK/corpus/val.$lang"
done
SETS=(--set data.corpus=files --set "data.train=$WORK/corpus/train" --set "data.valid=$WORK/corpus/val"
      --set "data.root=$WORK/data" --set "train.epochs=$EPOCHS" --set train.save_every=0
      --set decode.beam_size=1  # the final test is not what this measures: greedy keeps it short
      --set decode.batch_size=128  # validation decodes in the peer's batches of 128 sentences
      --set train.bucket_width=1)  # CPU batching: exact length buckets (batches are trimmed; no shapes to reuse)
python -m mt_cli prepare -c configs/peer_joeynmt.yaml "${SETS[@]}" > "$WORK/mt_prepare.log" 2>&1
# each line stamped with the seconds since `mt train` started (its log has no clock; the peer's has)
python benchmarks/stamped.py "$WORK/mt_train.log" -- python -m mt_cli train -c configs/peer_joeynmt.yaml \
  "${SETS[@]}" --device cpu --saved "$WORK/saved" --result "$WORK/result"

cp "$WORK/peer_out/train.log" benchmarks/cpu/peer_joeynmt_train.log
cp "$WORK/mt_train.log" benchmarks/cpu/peer_mt_cli_train.log
cp "$WORK/peer_out/results.json" benchmarks/cpu/peer_joeynmt_results.json
python - "$WORK" "$EPOCHS" "$N" "${SETS[@]}" <<'PY'
import json, os, platform, statistics, sys
import torch
from mt_cli.config import load_config
from mt_cli.data.batching import batch_plan
from mt_cli.data.prepare import load_corpus
work, epochs, n_pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = load_config("configs/peer_joeynmt.yaml", [s for s in sys.argv[4:] if s != "--set"])
_, split, _, _ = load_corpus(cfg, cfg.train.bucket_width)
lengths = split.tgt_len  # with <eos>: what the loss counts


sys.path.insert(0, "benchmarks")
from padding import padding  # noqa: E402 - share of computed target positions that are padding


def trimmed(batches):  # (rows, computed rows, width): each batch cut to its longest sentence
    return ((rows, len(rows), int(lengths[rows].max())) for rows in batches)


shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).split(128)
real_rows = (rows[rows < len(lengths)] for rows, _ in batch_plan(split, 128, None, shuffle=True, seed=1, epoch=1))
pad_ours = round(padding(trimmed(real_rows), lengths), 3)  # CPU batches are trimmed (iterate)
pad_peer = round(padding(trimmed(shuffled), lengths), 3)  # JoeyNMT: shuffled, padded to the longest
peer = json.load(open(f"{work}/peer_out/results.json"))
peer_epochs = [e["train_tok_per_s"] for e in peer.get("epochs", []) if e.get("train_tok_per_s")]
ours = [json.loads(line) for line in open(f"{work}/result/peer_joeynmt/metrics.jsonl")]
ours_epochs = [r["tgt_tokens_per_s"] for r in ours]
report = {
    "what": f"training target tok/s (non-pad, with <eos>), whole epochs without validation, same model, the same "
            f"{n_pairs:,} Multi30k pairs, batches of 128 sentences; median over epochs 2.. (epoch 1 warms up)",
    "padding": {"mt_cli": pad_ours, "joeynmt_estimate": pad_peer,
                "note": "share of computed target positions that are padding: mt_cli buckets by length (width 1) "
                        "and trims CPU batches; the peer's estimate is shuffled batches of 128 over the same "
                        "(mt_cli-tokenized) targets"},
    "device": f"cpu ({os.cpu_count()} cores): {platform.processor() or platform.machine()}",
    "torch": torch.__version__, "threads": torch.get_num_threads(), "epochs": epochs,
    "joeynmt_2_3_0": {"per_epoch": peer_epochs, "median": statistics.median(peer_epochs[1:] or peer_epochs)},
    "mt_cli": {"per_epoch": ours_epochs, "median": statistics.median(ours_epochs[1:] or ours_epochs),
               "precision": "fp32", "epoch_seconds": [r["seconds"] for r in ours]},
}
report["ratio"] = round(report["mt_cli"]["median"] / report["joeynmt_2_3_0"]["median"], 2)
from peer_validations import report as validations  # noqa: E402 - BLEU, time since start, validation seconds
report |= validations(f"{work}/mt_train.log", f"{work}/result/peer_joeynmt/metrics.jsonl",
                      f"{work}/peer_out/train.log", f"{work}/peer_out/results.json")
json.dump(report, open("benchmarks/cpu/peer_cpu.json", "w"), indent=1)
print(json.dumps(report, indent=1))
PY
