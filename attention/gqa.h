// MHA, MQA and GQA (DESIGN §2.1): cache row [K: kv_l × d_h | V: kv_l × d_h]. MHA is
// h_kv = h_q, MQA h_kv = 1.
#ifndef SHARDLM_ATTENTION_GQA_H_
#define SHARDLM_ATTENTION_GQA_H_

#include <cstdint>
#include <span>

#include "attention/attention.h"
#include "attention/kv_cache.h"

namespace shardlm {

// One layer's weights on one rank. Split states (DESIGN §3) beside each; shapes are local.
struct GqaWeights final : AttentionWeights {
  Linear q_proj;                      // row-sharded by query head [hq_l · d_h, d]
  Linear k_proj, v_proj;              // row-sharded by KV head [kv_l · d_h, d]
  Linear o_proj;                      // col-sharded [d, hq_l · d_h]; bias on rank 0 only
  std::vector<float> q_norm, k_norm;  // replicated [d_h] (Qwen3's per-head norms), or empty
  std::vector<const Linear*> Linears() const override {
    return {&q_proj, &k_proj, &v_proj, &o_proj};
  }
  int64_t bytes() const override {
    return AttentionWeights::bytes() +
           static_cast<int64_t>((q_norm.size() + k_norm.size()) * sizeof(float));
  }
};
const AttentionFamily& GqaFamily();

// MHA, MQA, GQA. Local query head i reads local KV head i / (num_q_heads / num_kv_heads).
struct GqaShape {
  int64_t num_q_heads = 0;   // local
  int64_t num_kv_heads = 0;  // local
  int64_t head_dim = 0;
  float scale = 0.0f;
  int64_t window = 0;  // 0: full causal
};
// q:   [tokens, num_q_heads, head_dim], already rotated.
// row: [K: num_kv_heads × head_dim | V: num_kv_heads × head_dim], K rotated.
// out: [tokens, num_q_heads, head_dim].
void GqaAttention(const GqaShape& shape, const CacheView& cache, std::span<const QueryToken> tokens,
                  const float* q, float* out);
void GqaAttentionNaive(const GqaShape& shape, const CacheView& cache,
                       std::span<const QueryToken> tokens, const float* q, float* out);

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_GQA_H_
