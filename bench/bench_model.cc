#include "bench/bench_model.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "base/rng.h"
#include "base/status.h"
#include "engine/config.h"
#include "engine/make_model.h"
#include "engine/weights.h"

namespace shardlm {
absl::StatusOr<ModelConfig> BenchModelConfig(const BenchModelSpec& spec) {
  ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(spec.preset, spec.attention));
  if (spec.layers > 0) config.set_num_hidden_layers(static_cast<int32_t>(spec.layers));
  if (spec.intermediate > 0) config.set_intermediate_size(static_cast<int32_t>(spec.intermediate));
  return config;
}

int64_t MainParameters(const ModelDims& dims) {
  int64_t params = 0;
  for (const TensorSpec& spec : CheckpointTensors(dims)) {
    int64_t count = 1;
    for (int64_t s : spec.shape) count *= s;
    params += count;
  }
  if (IsLatent(dims.type))
    params += dims.layers * dims.num_kv_heads * dims.latent_dim;  // kv_a_layernorm
  return params;
}

absl::StatusOr<int64_t> MatchedIntermediate(const BenchModelSpec& spec,
                                            const std::string& reference) {
  BenchModelSpec ref = spec;
  ref.attention = reference;
  ref.intermediate = 0;
  ASSIGN_OR_RETURN(ModelConfig ref_config, BenchModelConfig(ref));
  ASSIGN_OR_RETURN(ModelDims ref_dims, ResolveDims(ref_config, "reference preset"));
  const int64_t target = MainParameters(ref_dims);
  // Parameters are affine in the MLP width: P(I) = P(0) + slope · I.
  BenchModelSpec probe = spec;
  probe.intermediate = 1;
  ASSIGN_OR_RETURN(ModelConfig c1, BenchModelConfig(probe));
  probe.intermediate = 2;
  ASSIGN_OR_RETURN(ModelConfig c2, BenchModelConfig(probe));
  ASSIGN_OR_RETURN(ModelDims d1, ResolveDims(c1, "bench model"));
  ASSIGN_OR_RETURN(ModelDims d2, ResolveDims(c2, "bench model"));
  const int64_t slope = MainParameters(d2) - MainParameters(d1);
  const int64_t base = MainParameters(d1) - slope;
  const int64_t width = static_cast<int64_t>(
      std::llround(static_cast<double>(target - base) / static_cast<double>(slope)));
  if (width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--match-params ", reference, ": ", spec.attention,
                     " already has more parameters than ", reference, " without any MLP"));
  }
  return width;
}

std::string BenchModelName(const BenchModelSpec& spec) {
  absl::StatusOr<ModelConfig> config = BenchModelConfig(spec);
  const int64_t layers = config.ok() ? config->num_hidden_layers() : spec.layers;
  const int64_t width = config.ok() ? config->intermediate_size() : spec.intermediate;
  return absl::StrCat(spec.preset, "-", spec.attention, "-L", layers, "-I", width, "-",
                      DTypeName(spec.dtype), "-s", spec.seed);
}

absl::StatusOr<std::string> EnsureBenchModel(const BenchModelSpec& spec,
                                             const std::string& cache_root) {
  namespace fs = std::filesystem;
  ASSIGN_OR_RETURN(ModelConfig config, BenchModelConfig(spec));
  const std::string dir = cache_root + "/" + BenchModelName(spec);
  if (fs::exists(dir + "/config.json") && fs::exists(dir + "/model.safetensors")) return dir;

  std::error_code ec;
  fs::create_directories(cache_root, ec);
  if (ec)
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", cache_root, ": ", ec.message()));
  const std::string tmp = absl::StrCat(dir, ".tmp-", getpid());
  fs::remove_all(tmp, ec);
  // Exactly what `shardlm make-model --intermediate-size N` writes.
  MakeModelOptions options;
  options.attention = spec.attention;
  options.preset = spec.preset;
  options.seed = spec.seed;
  options.dtype = spec.dtype;
  options.layers = spec.layers;
  options.intermediate_size = config.intermediate_size();
  RETURN_IF_ERROR(MakeModel(options, tmp));
  fs::rename(tmp, dir, ec);
  if (ec) {
    // Another bench finished the same model first: use that one.
    fs::remove_all(tmp);
    if (!fs::exists(dir + "/config.json")) {
      return absl::InternalError(
          absl::StrCat("cannot rename ", tmp, " to ", dir, ": ", ec.message()));
    }
  }
  return dir;
}

}  // namespace shardlm
