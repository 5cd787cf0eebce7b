// Deterministic random checkpoints for every family (`shardlm make-model`),
// from tiny test presets to the paper's shapes.
#ifndef SHARDLM_ENGINE_MAKE_MODEL_H_
#define SHARDLM_ENGINE_MAKE_MODEL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"
#include "proto/shardlm.pb.h"

namespace shardlm {

struct MakeModelOptions {
  std::string attention = "gqa";  // mha|mqa|gqa|gta|mla|gla
  std::string preset = "tiny";
  uint64_t seed = 0;
  DType dtype = DType::kF32;
  // Overrides applied on top of the preset (0 / false: keep the preset's).
  int64_t layers = 0;
  int64_t intermediate_size = 0;  // e.g. to match parameter counts across families
  int64_t sliding_window = 0;
  bool rope_interleave = false;
  bool tie_word_embeddings = false;
  bool no_biases = false;
};

// Names of the presets, for help and error messages.
std::vector<std::string> PresetNames();

// The config a preset gives for a family (before overrides).
absl::StatusOr<ModelConfig> PresetConfig(const std::string& preset, const std::string& attention);

// Writes config.json and model.safetensors into `out_dir` (created if needed).
// The same options always give the same bytes.
absl::Status MakeModel(const MakeModelOptions& options, const std::string& out_dir);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_MAKE_MODEL_H_
