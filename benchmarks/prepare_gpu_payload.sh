#!/usr/bin/env bash
# Build the git-ignored .gpu/ folder that benchmarks/gpu_run.sh needs on a GPU machine without internet:
# the JoeyNMT peer harness, the Multi30k files it reads, and the peer's wheels (Python 3.12, pure Python).
# Also prepares the corpora of the default config and of the peer-sized config into data/.
# Then carry .gpu and the data/<corpus> folders with the device call (see README, Results).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-../shared}"
rm -rf .gpu && mkdir -p .gpu/peers .gpu/data/multi30k .gpu/whl
cp -r "$SHARED/peers/joeynmt" .gpu/peers/
for s in train val test_2016_flickr; do for l in de en; do cp "$SHARED/data/multi30k/$s.$l.gz" .gpu/data/multi30k/; done; done
cp "$SHARED/data/multi30k/SHA256SUMS" .gpu/data/multi30k/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  -d .gpu/whl joeynmt==2.3.0 sacremoses==0.1.1 subword-nmt==0.3.8 importlib_metadata==8.7.0 zipp==3.23.0
mt prepare --source "$SHARED/data/multi30k"
mt prepare -c configs/peer_joeynmt.yaml --source "$SHARED/data/multi30k"
# a variant with its own data options (gpu_run.sh VARIANTS) needs its corpus prepared here too, e.g.
#   mt prepare --source "$SHARED/data/multi30k" --set data.tokenizer=spacy --set data.joint_vocab=false
du -sh .gpu data/*
echo "carry: .gpu $(ls -d data/multi30k_* | grep -v raw | tr '\n' ' ')"
