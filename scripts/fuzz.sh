#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang (ASan + UBSan) in a build
# directory of their own and runs each for a bounded time on a copy of its seed
# corpus. Exits non-zero if any target crashes, hangs, runs out of memory or
# leaks, printing the saved input and how to reproduce it.
#
#   scripts/fuzz.sh [SECONDS]      # per target; default 60
#
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_TARGETS (default
# "safetensors config request openai chat_template"), FUZZ_JOBS (build parallelism, default 2),
# FUZZ_RSS_MB (-rss_limit_mb, default 2048; the request target's RSS grows
# about 3 MB/s under ASan, so runs much past 5 minutes need more).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS per target, >= 1]" >&2
  exit 2
fi
build=$(realpath -m "${FUZZ_BUILD_DIR:-build-fuzz}")
targets=(${FUZZ_TARGETS:-safetensors config request openai chat_template})
for tool in clang clang++; do
  command -v "$tool" >/dev/null || { echo "fuzz: $tool not found; run scripts/install-deps.sh" >&2; exit 2; }
done

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSHARDLM_FUZZ=ON >/dev/null
cmake --build "$build" -j "${FUZZ_JOBS:-2}" --target "${targets[@]/%/_fuzz}"

# A failed check or sanitizer report aborts; libFuzzer saves the input. Leaks are
# reported per input by libFuzzer itself.
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
symbolizer=$(command -v llvm-symbolizer || true)
[ -n "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH="$symbolizer"

failed=()
for t in "${targets[@]}"; do
  run="$build/fuzz-run/$t"
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/artifacts"
  cp -r "fuzz/corpus/$t/." "$run/corpus/"
  echo "== fuzz $t: ${seconds}s (log: $run/fuzz.log)"
  status=0
  # -timeout: one input taking longer is a hang; -rss_limit_mb: over that is an
  # OOM; -max_len covers the largest seeds with room to grow.
  "$build/fuzz/${t}_fuzz" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -max_len=4096 -dict=fuzz/json.dict -artifact_prefix="$run/artifacts/" \
    -print_final_stats=1 "$run/corpus" >"$run/fuzz.log" 2>&1 || status=$?
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)" \
    "$run/fuzz.log" | sed 's/^/   /' || true
  shopt -s nullglob
  artifacts=("$run"/artifacts/*)
  shopt -u nullglob
  if [ "$status" -ne 0 ] || [ ${#artifacts[@]} -gt 0 ]; then
    failed+=("$t")
    echo "!! fuzz $t FAILED (exit $status); the report:"
    grep -E "ERROR: |fuzz check failed|runtime error|SUMMARY|^  " "$run/fuzz.log" | head -20 | sed 's/^/   /'
    for a in "${artifacts[@]}"; do
      echo "   saved input: $a"
      echo "   reproduce:   $build/fuzz/${t}_fuzz $a"
      echo "   once fixed, keep it: cp $a fuzz/corpus/$t/regression-<what> (ctest fuzz_replay.$t replays it)"
    done
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a finding"
