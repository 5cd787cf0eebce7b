// The attention half of a layer on one rank: projections, RoPE, cache writes,
// the family's attention kernel and this rank's partial o_proj. One
// implementation file per family (attention_{gqa,gta,latent}.cc).
#ifndef SHARDLM_ENGINE_ATTENTION_BLOCK_H_
#define SHARDLM_ENGINE_ATTENTION_BLOCK_H_

#include <memory>
#include <span>

#include "attention/kv_cache.h"
#include "engine/weights.h"
#include "shard/shard.h"

namespace shardlm {

class AttentionBlock {
 public:
  static std::unique_ptr<AttentionBlock> Create(const ModelDims& dims, const ShardPlan& plan);
  virtual ~AttentionBlock() = default;

  // xn: [n, d] normalized inputs of the batch's tokens. Writes each token's
  // cache row (at its position), then attends, and writes this rank's partial
  // sum of o_proj into out [n, d] (the caller all-reduces it).
  virtual void Forward(const AttentionWeights& w, const float* xn,
                       std::span<const QueryToken> tokens, const CacheView& cache, float* out) = 0;
};

// Grow-only scratch buffer: the step loop reuses it instead of allocating.
inline float* Scratch(std::vector<float>& buffer, int64_t floats) {
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(static_cast<size_t>(floats));
  return buffer.data();
}

std::unique_ptr<AttentionBlock> MakeGqaBlock(const ModelDims& dims, const ShardPlan& plan);
std::unique_ptr<AttentionBlock> MakeGtaBlock(const ModelDims& dims, const ShardPlan& plan);
std::unique_ptr<AttentionBlock> MakeLatentBlock(const ModelDims& dims, const ShardPlan& plan);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_ATTENTION_BLOCK_H_
