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
namespace {

// A checkpoint for a config make-model has no flag for (an MLP width other than
// the preset's). Same value distributions as engine/make_model.cc: U(±sqrt(3/fan_in)),
// residual branches damped by 1/sqrt(2·layers), norms U(0.9, 1.1), embedding
// U(±1.7), LM head ×2; biases only on GTA's RoPE key (as the paper presets).
// TODO: call MakeModel once MakeModelOptions takes an intermediate size.
absl::Status WriteCheckpoint(const ModelConfig& config, DType dtype, uint64_t seed,
                             const std::string& out_dir) {
  ASSIGN_OR_RETURN(ModelDims dims, ResolveDims(config, "bench model"));
  const float residual_gain = static_cast<float>(1.0 / std::sqrt(2.0 * dims.layers));
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
  const std::vector<TensorSpec> specs = CheckpointTensors(dims);
  values.reserve(2 * specs.size() + dims.layers);  // no reallocation: spans stay valid
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    values.push_back(Rng(seed, name).UniformVector(static_cast<size_t>(count), lo, hi));
    tensors.push_back({name, dtype, std::move(shape), values.back()});
  };
  for (const TensorSpec& spec : specs) {
    if (!spec.is_linear) {
      const bool embed = spec.name == "model.embed_tokens.weight";
      add(spec.name, spec.shape, embed ? -1.7f : 0.9f, embed ? 1.7f : 1.1f);
      continue;
    }
    float a = static_cast<float>(std::sqrt(3.0 / spec.shape[1]));
    if (spec.name.ends_with("o_proj") || spec.name.ends_with("down_proj")) a *= residual_gain;
    if (spec.name == "lm_head") a *= 2.0f;
    add(spec.name + ".weight", spec.shape, -a, a);
    if (spec.name.ends_with("k_rope_proj")) add(spec.name + ".bias", {spec.shape[0]}, -0.1f, 0.1f);
  }
  if (IsLatent(dims.type)) {
    for (int64_t i = 0; i < dims.layers; ++i) {
      add(LayerPrefix(i) + "self_attn.kv_a_layernorm.weight", {dims.num_kv_heads * dims.latent_dim},
          0.9f, 1.1f);
    }
  }
  RETURN_IF_ERROR(WriteSafetensors(out_dir + "/model.safetensors", tensors));
  std::ofstream out(out_dir + "/config.json", std::ios::trunc);
  out << ModelConfigToJson(config) << "\n";
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", out_dir, "/config.json"));
  return absl::OkStatus();
}

}  // namespace

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
  ASSIGN_OR_RETURN(ModelConfig preset_config, PresetConfig(spec.preset, spec.attention));
  if (config.intermediate_size() == preset_config.intermediate_size()) {
    // The preset's own shape: exactly what `shardlm make-model` writes.
    MakeModelOptions options;
    options.attention = spec.attention;
    options.preset = spec.preset;
    options.seed = spec.seed;
    options.dtype = spec.dtype;
    options.layers = spec.layers;
    RETURN_IF_ERROR(MakeModel(options, tmp));
  } else {
    fs::create_directories(tmp, ec);
    if (ec)
      return absl::PermissionDeniedError(absl::StrCat("cannot create ", tmp, ": ", ec.message()));
    RETURN_IF_ERROR(WriteCheckpoint(config, spec.dtype, spec.seed, tmp));
  }
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
