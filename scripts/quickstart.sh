#!/usr/bin/env bash
# Fresh machine to first results: install the Debian packages, build, create the
# built-in default model (a GLA-2 checkpoint of the `small` preset) if it is not
# there, and decode the example prompts on 2 MPI ranks, printing the results.
#   scripts/quickstart.sh [extra decode flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j 2
model=models/default
if [ ! -f "$model/config.json" ]; then
  build/launch/shardlm make-model --attention gla --preset small --seed 0 --out "$model"
fi
mkdir -p out
launch/shardlm-run -np 2 decode --model "$model" --prompts examples/prompts.jsonl \
  --output out/example-results.jsonl --progress "$@"
echo "--- out/example-results.jsonl"
cat out/example-results.jsonl
