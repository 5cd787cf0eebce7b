#!/usr/bin/env bash
# One multi-rank score test: run `shardlm score` on NP ranks and compare the
# logprobs with a reference result file within a tolerance derived from the
# model's sizes (tests/reference/tolerance.py).
# usage: score_check.sh SHARDLM MODEL_DIR PROMPTS OUT NP REF [extra score flags...]
set -euo pipefail
shardlm=$1 model=$2 prompts=$3 out=$4 np=$5 ref=$6
shift 6
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$(dirname "$out")"
mpirun --oversubscribe --bind-to none -np "$np" "$shardlm" score --model "$model" \
  --input "$prompts" --output "$out" "$@"
read -r atol rtol < <(/usr/bin/python3 "$here/reference/tolerance.py" "$model")
/usr/bin/python3 "$here/reference/compare.py" "$out" "$ref" --atol "$atol" --rtol "$rtol"
