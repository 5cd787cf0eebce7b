#!/usr/bin/env bash
# Fresh machine to first results: install the Debian packages, build, and decode the
# example prompts with the built-in trained model (models/brown-gqa, a 5 M-parameter
# Llama-style GQA model trained on the Brown corpus by training/train.py) on 2 MPI
# ranks, each holding half of the query heads and half of the KV groups; print the results.
#   scripts/quickstart.sh [extra decode flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j 2
model=models/brown-gqa
mkdir -p out
launch/shardlm-run -np 2 decode --model "$model" --prompts examples/prompts.jsonl \
  --output out/example-results.jsonl --progress "$@"
echo "--- out/example-results.jsonl"
cat out/example-results.jsonl
