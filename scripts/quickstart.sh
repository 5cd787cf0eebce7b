#!/usr/bin/env bash
# Fresh machine to first results: install the Debian packages, build, convert the built-in
# trained model (models/brown-gqa, a 5 M-parameter Llama-style GQA model trained on the Brown
# corpus by training/train.py) to GLA-2 with `shardlm convert` (models/default), and decode the
# example prompts on 2 MPI ranks, each holding half of the query heads and one of the two
# latent heads; print the results. Then the same model with Q4_0 weights (`shardlm quantize`,
# models/default-q4_0) decodes the same prompts.
#   scripts/quickstart.sh [extra decode flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j 2
model=models/default
build/launch/shardlm convert --model models/brown-gqa --attention gla --latent-heads 2 \
  --kv-lora-rank 32 --rope-dim 32 --out "$model"
mkdir -p out
launch/shardlm-run -np 2 decode --model "$model" --prompts examples/prompts.jsonl \
  --output out/example-results.jsonl --progress "$@"
echo "--- out/example-results.jsonl"
cat out/example-results.jsonl
build/launch/shardlm quantize --model "$model" --dtype q4_0 --out "$model-q4_0"
launch/shardlm-run -np 2 decode --model "$model-q4_0" --prompts examples/prompts.jsonl \
  --output out/example-results-q4_0.jsonl "$@"
echo "--- out/example-results-q4_0.jsonl (Q4_0 weights)"
cat out/example-results-q4_0.jsonl
