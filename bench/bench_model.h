// Models for `shardlm bench --preset`: make-model's deterministic random
// checkpoints, written once into a cache directory and reused, optionally with
// the MLP width changed so that every family has the same parameter count
// (the paper's "parameter-matched" comparison, DESIGN §8).
#ifndef SHARDLM_BENCH_BENCH_MODEL_H_
#define SHARDLM_BENCH_BENCH_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"
#include "proto/shardlm.pb.h"
#include "shard/dims.h"

namespace shardlm {

struct BenchModelSpec {
  std::string preset = "paper-m";
  std::string attention = "gqa";
  int64_t layers = 0;        // 0: the preset's
  int64_t intermediate = 0;  // 0: the preset's MLP width
  DType dtype = DType::kF32;
  uint64_t seed = 0;
};

// The config the spec describes (preset, then the layer and MLP overrides).
absl::StatusOr<ModelConfig> BenchModelConfig(const BenchModelSpec& spec);

// Parameters of the main tensors of a model (CheckpointTensors; biases, which
// the paper presets have only on GTA's RoPE key, are not counted).
int64_t MainParameters(const ModelDims& dims);

// The MLP width that makes `spec`'s model have as many parameters as the same
// preset (same layer count) with attention `reference`, to within half an MLP
// column (3·d parameters per layer). Derived from CheckpointTensors, not from
// a hand formula, so it follows the engine's tensor list.
absl::StatusOr<int64_t> MatchedIntermediate(const BenchModelSpec& spec,
                                            const std::string& reference);

// Directory name of the spec under a cache root, e.g.
// "paper-m-gla-L4-I2635-F32-s0".
std::string BenchModelName(const BenchModelSpec& spec);

// Returns `cache_root`/BenchModelName(spec), writing the checkpoint first if it
// is not there. Written into a temporary directory and renamed, so concurrent
// benches and interrupted runs never see half a checkpoint. Call on one rank.
absl::StatusOr<std::string> EnsureBenchModel(const BenchModelSpec& spec,
                                             const std::string& cache_root);

}  // namespace shardlm

#endif  // SHARDLM_BENCH_BENCH_MODEL_H_
