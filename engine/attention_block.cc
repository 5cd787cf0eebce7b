#include "engine/attention_block.h"

namespace shardlm {

std::unique_ptr<AttentionBlock> AttentionBlock::Create(const ModelDims& dims, const ShardPlan& plan) {
  if (IsLatent(dims.type)) return MakeLatentBlock(dims, plan);
  if (dims.type == AttentionType::kGta) return MakeGtaBlock(dims, plan);
  return MakeGqaBlock(dims, plan);
}

}  // namespace shardlm
