// `shardlm bench`'s flags: parsed here into bench/'s BenchOptions, so bench/ never sees a
// command line.
#include "launch/bench_flags.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace shardlm {

std::vector<FlagSpec> BenchFlags() {
  return {
      {"model", true, "checkpoint directory (or give --preset)"},
      {"preset", true, "build a make-model preset instead: tiny | small | paper-m | paper-xl"},
      {"attention", true, "with --preset: mha | mqa | gqa | gta | mla | gla (default gqa)"},
      {"layers", true, "with --preset: override the layer count"},
      {"intermediate-size", true, "with --preset: override the MLP width"},
      {"match-params", true,
       "with --preset: MLP width that gives this family's parameter count (e.g. gqa)"},
      {"dtype", true, "with --preset: checkpoint dtype F32 | BF16 | F16 (default F32)"},
      {"seed", true, "weights, cache contents, page order and tokens (default 0)"},
      {"model-cache", true,
       "where preset models are written once and reused "
       "(default $TMPDIR/shardlm-bench-models)"},
      {"label", true, "the model column (default: preset-L<layers> or the directory)"},
      {"contexts", true, "context lengths L, comma-separated, k = 1024 (default 1k,4k,16k)"},
      {"batches", true, "batch sizes B, comma-separated (default 1,8,32)"},
      {"warmup", true, "untimed steps per configuration (default 2)"},
      {"steps", true, "timed steps per configuration (default 10)"},
      {"page-size", true, "KV cache page size in tokens (default 16)"},
      {"page-order", true,
       "shuffled | contiguous: where each sequence's pages sit in the pool "
       "(default shuffled)"},
      {"kv-cache-mb", true, "cache budget per rank for the capacity column, MiB (default 1024)"},
      {"kv-dtype", true, "KV cache values: f32 (default), bf16 or int8"},
      {"mla-attention", true,
       "MLA models: tp (default: heads over the ranks, the latent duplicated) or dp "
       "(data-parallel attention: each rank attends for its own sequences with all heads; the "
       "MLP stays tensor-parallel)"},
      {"max-pool-mb", true,
       "skip configurations whose timed pool exceeds this per rank (default 8192)"},
      {"prefill-tokens", true,
       "prefill chunk length; 0 skips the prefill measurement (default 512)"},
      {"prefill-reps", true, "timed prefill chunks (default 3)"},
      {"threads", true,
       "compute threads per rank (default 1), or auto: this host's cores / its ranks"},
      {"bf16-math", true,
       "BF16 weights: exact (default) or dot (AVX512-BF16, activations rounded to bf16)"},
      {"prefetch", true,
       "how far ahead the matmul and attention prefetch from memory: near or far (default: this "
       "CPU's choice)"},
      {"bandwidth-gbs", true, "roofline per rank in GB/s; skips the probe"},
      {"probe-mb", true, "bandwidth probe buffer per rank, MiB (default 512)"},
      {"probe-passes", true, "bandwidth probe passes, the best counts (default 5)"},
      {"probe-only", false, "run the bandwidth probe and exit"},
      {"csv", true, "write the records as CSV"},
      {"json", true, "write the records as JSON Lines (one BenchRecord per line)"},
      {"help", false, "this message"},
  };
}

absl::Status ParseBenchOptions(const Flags& flags, BenchOptions* o) {
  o->model_dir = flags.String("model", "");
  o->spec.preset = flags.String("preset", "");
  o->spec.attention = flags.String("attention", "gqa");
  ASSIGN_OR_RETURN(o->spec.layers, flags.Int("layers", 0, 0, 1 << 16));
  ASSIGN_OR_RETURN(o->spec.intermediate, flags.Int("intermediate-size", 0, 0, 1 << 24));
  ASSIGN_OR_RETURN(o->spec.dtype, ParseWeightDType(flags.String("dtype", "F32")));
  ASSIGN_OR_RETURN(int64_t seed, flags.Int("seed", 0, 0, INT64_MAX));
  o->spec.seed = static_cast<uint64_t>(seed);
  o->seed = static_cast<uint64_t>(seed);
  o->match_params = flags.String("match-params", "");
  const char* tmp = std::getenv("TMPDIR");
  o->model_cache = flags.String(
      "model-cache",
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/shardlm-bench-models"));
  o->label = flags.String("label", "");
  if (flags.Has("contexts")) {
    ASSIGN_OR_RETURN(o->contexts,
                     ParseSizeList(flags.String("contexts", ""), "contexts", 1, 1 << 30));
  }
  if (flags.Has("batches")) {
    ASSIGN_OR_RETURN(o->batches, ParseSizeList(flags.String("batches", ""), "batches", 1, 1 << 16));
  }
  ASSIGN_OR_RETURN(o->warmup, flags.Int("warmup", 2, 0, 1 << 20));
  ASSIGN_OR_RETURN(o->steps, flags.Int("steps", 10, 1, 1 << 20));
  ASSIGN_OR_RETURN(o->page_size, flags.Int("page-size", 16, 1, 1 << 20));
  ASSIGN_OR_RETURN(o->kv_cache_mb, flags.Double("kv-cache-mb", 1024, 1e-6, 1e9));
  ASSIGN_OR_RETURN(o->kv_dtype, ParseKvDType(flags.String("kv-dtype", "f32")));
  ASSIGN_OR_RETURN(o->mla_attention, ParseAttentionSplit(flags.String("mla-attention", "tp")));
  ASSIGN_OR_RETURN(o->max_pool_mb, flags.Double("max-pool-mb", 8192, 1e-6, 1e9));
  ASSIGN_OR_RETURN(o->prefill_tokens, flags.Int("prefill-tokens", 512, 0, 1 << 20));
  ASSIGN_OR_RETURN(o->prefill_reps, flags.Int("prefill-reps", 3, 1, 1 << 20));
  ASSIGN_OR_RETURN(o->threads, flags.Threads());
  ASSIGN_OR_RETURN(o->bf16_math, flags.Bf16MathMode());
  const std::string prefetch =
      flags.String("prefetch", StreamPrefetchName(SelectedStreamPrefetch()));
  const std::optional<StreamPrefetch> parsed = ParseStreamPrefetch(prefetch);
  if (!parsed.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prefetch must be near or far, got \"", prefetch, "\""));
  }
  o->prefetch = *parsed;
  ASSIGN_OR_RETURN(o->bandwidth_gbs, flags.Double("bandwidth-gbs", 0, 0, 1e6));
  ASSIGN_OR_RETURN(o->probe_mb, flags.Int("probe-mb", 512, 1, 1 << 20));
  ASSIGN_OR_RETURN(o->probe_passes, flags.Int("probe-passes", 5, 1, 1000));
  o->probe_only = flags.Bool("probe-only");
  const std::string order = flags.String("page-order", "shuffled");
  if (order != "shuffled" && order != "contiguous") {
    return absl::InvalidArgumentError(
        absl::StrCat("--page-order must be shuffled or contiguous, got \"", order, "\""));
  }
  o->shuffle_pages = order == "shuffled";
  o->csv = flags.String("csv", "");
  o->json = flags.String("json", "");
  if (o->probe_only) return absl::OkStatus();
  if (o->model_dir.empty() == o->spec.preset.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model DIR and --preset NAME");
  }
  if (!o->model_dir.empty() &&
      (flags.Has("attention") || flags.Has("layers") || flags.Has("intermediate-size") ||
       flags.Has("match-params") || flags.Has("dtype"))) {
    return absl::InvalidArgumentError(
        "--attention, --layers, --intermediate-size, --match-params and --dtype describe a "
        "--preset model; a --model checkpoint has its own config");
  }
  if (!o->match_params.empty() && o->spec.intermediate > 0) {
    return absl::InvalidArgumentError("give --intermediate-size or --match-params, not both");
  }
  return absl::OkStatus();
}

}  // namespace shardlm
