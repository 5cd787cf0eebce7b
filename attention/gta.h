// GTA, grouped-tied attention (DESIGN §2.2): cache row [tied: kv_l × d_h | k_rope: d_r]; the
// tied state serves as value (all channels) and as the key's first d_h − d_r channels.
#ifndef SHARDLM_ATTENTION_GTA_H_
#define SHARDLM_ATTENTION_GTA_H_

#include <cstdint>
#include <span>

#include "attention/attention.h"
#include "attention/kv_cache.h"

namespace shardlm {

// One layer's weights on one rank. Split states (DESIGN §3) beside each; shapes are local.
struct GtaWeights final : AttentionWeights {
  Linear q_proj;       // row-sharded by query head [hq_l · d_h, d]
  Linear kv_proj;      // the tied state, row-sharded by KV head [kv_l · d_h, d]
  Linear k_rope_proj;  // the shared RoPE key, replicated [d_r, d]
  Linear o_proj;       // col-sharded [d, hq_l · d_h]; bias on rank 0 only
  std::vector<const Linear*> Linears() const override {
    return {&q_proj, &kv_proj, &k_rope_proj, &o_proj};
  }
};
const AttentionFamily& GtaFamily();

// GTA (DESIGN §2.2). Key of head i in group j: [kv_j[0 : d_h − d_r] | k_rope];
// value: kv_j (all d_h channels).
struct GtaShape {
  int64_t num_q_heads = 0;   // local
  int64_t num_kv_heads = 0;  // local tied states
  int64_t head_dim = 0;      // d_h
  int64_t rope_dim = 0;      // d_r
  float scale = 0.0f;
  int64_t window = 0;
};
// q:   [tokens, num_q_heads, head_dim]; its last rope_dim channels rotated.
// row: [tied: num_kv_heads × head_dim | k_rope: rope_dim (rotated)].
// out: [tokens, num_q_heads, head_dim].
void GtaAttention(const GtaShape& shape, const CacheView& cache, std::span<const QueryToken> tokens,
                  const float* q, float* out);
void GtaAttentionNaive(const GtaShape& shape, const CacheView& cache,
                       std::span<const QueryToken> tokens, const float* q, float* out);

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_GTA_H_
