// config.json → ModelConfig proto → validated ModelDims (DESIGN §2, §6).
#ifndef SHARDLM_ENGINE_CONFIG_H_
#define SHARDLM_ENGINE_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "proto/shardlm.pb.h"
#include "shard/dims.h"

namespace shardlm {

// Parses config.json text. Unknown HF keys are ignored; `eos_token_id` may be an
// int or a list. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json, const std::string& source);
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& model_dir);
// Copies a model directory's tokenizer files (tokenizer.json, tokenizer_config.json,
// generation_config.json; those present) into `out_dir`, as `convert` and `quantize` do.
absl::Status CopyTokenizerFiles(const std::string& model_dir, const std::string& out_dir);

// Fills defaults and checks every relation between the numbers (head counts,
// dims, family-specific keys). Errors name the key and the value.
absl::StatusOr<ModelDims> ResolveDims(const ModelConfig& config, const std::string& source);

// config.json text for a config (HF key names; `eos_token_id` as an int or list).
std::string ModelConfigToJson(const ModelConfig& config);

// Stable 64-bit fingerprint of the resolved dims (for the start-up handshake).
uint64_t DimsFingerprint(const ModelDims& dims);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_CONFIG_H_
