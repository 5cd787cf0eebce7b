#!/usr/bin/env bash
# The engine against the independent PyTorch reference (tests/reference/torch_ref.py,
# float64, written from DESIGN §2): score PROMPTS with both and compare.
# usage: reference_check.sh SHARDLM MODEL_DIR PROMPTS OUT_DIR NP
set -euo pipefail
shardlm=$1 model=$2 prompts=$3 outdir=$4 np=$5
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$outdir"
/usr/bin/python3 "$here/reference/torch_ref.py" score --model "$model" --input "$prompts" \
  --output "$outdir/torch.jsonl"
"$here/score_check.sh" "$shardlm" "$model" "$prompts" "$outdir/shardlm.np$np.jsonl" "$np" \
  "$outdir/torch.jsonl"
