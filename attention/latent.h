// MLA and GLA, latent attention (DESIGN §2.3): cache row [latents: kv_l × d_c (normalized) |
// k_rope: d_r]. MLA is GLA with one latent head; both run the same code.
#ifndef SHARDLM_ATTENTION_LATENT_H_
#define SHARDLM_ATTENTION_LATENT_H_

#include <cstdint>
#include <span>

#include "attention/attention.h"
#include "attention/kv_cache.h"

namespace shardlm {

// kv_b_proj of this rank's heads in the form the absorbed decode reads, in the checkpoint's
// dtype (16-bit weights stay 16-bit): two linears the shared matmul runs per head.
struct LatentUpProjection {
  Linear uk_t;  // [hq_l · d_c, d_n]: W_UK,iᵀ of each local head i (rows i·d_c … i·d_c + d_c − 1)
  Linear uv;  // [hq_l · d_v, d_c]: W_UV,i of each local head, with b_V when kv_b_proj has a bias
};
// From this rank's kv_b_proj rows [hq_l · (d_n + d_v), d_c] (per head W_UK, then W_UV). The
// bits of every weight are kept. b_K is dropped: softmax cancels it (see LatentAttention).
LatentUpProjection SplitKvB(const Linear& kv_b, int64_t nope_dim, int64_t v_head_dim);

// One layer's weights on one rank. Split states (DESIGN §3) beside each; shapes are local.
struct LatentWeights final : AttentionWeights {
  Linear q_proj;    // without q LoRA: row-sharded by query head [hq_l · (d_n + d_r), d]
  Linear q_a_proj;  // with q LoRA: replicated [q_lora_rank, d]
  std::vector<float> q_a_norm;   // replicated [q_lora_rank]
  Linear q_b_proj;               // row-sharded [hq_l · (d_n + d_r), q_lora_rank]
  Linear kv_a_proj;              // own latent rows + RoPE key rows [kv_l · d_c + d_r, d]
  std::vector<float> kv_a_norm;  // own chunks [kv_l · d_c], empty if absent
  LatentUpProjection kv_b;       // kv_b_proj, row-sharded by query head, split for decode
  Linear o_proj;                 // col-sharded [d, hq_l · d_v]; bias on rank 0 only
  std::vector<const Linear*> Linears() const override {
    return {&q_proj, &q_a_proj, &q_b_proj, &kv_a_proj, &kv_b.uk_t, &kv_b.uv, &o_proj};
  }
  int64_t bytes() const override;
};
const AttentionFamily& LatentFamily();

// MLA / GLA (DESIGN §2.3); MLA is one latent head. Local query head i reads local
// latent head i / (num_q_heads / num_latent_heads).
struct LatentShape {
  int64_t num_q_heads = 0;       // local
  int64_t num_latent_heads = 0;  // local h_c
  int64_t latent_dim = 0;        // d_c
  int64_t nope_dim = 0;          // d_n
  int64_t rope_dim = 0;          // d_r
  int64_t v_head_dim = 0;        // d_v
  float scale = 0.0f;
  int64_t window = 0;
};
// q:      [tokens, num_q_heads, nope_dim + rope_dim]; the rope part rotated.
// row:    [latents: num_latent_heads × latent_dim (normalized) | k_rope: rope_dim (rotated)].
// out:    [tokens, num_q_heads, v_head_dim].
// The fast path uses the absorbed form (q̃ = W_UKᵀ q_nope, values are latents, then W_UV),
// with kv_b_proj split as LatentUpProjection, through the shared matmul.
void LatentAttention(const LatentShape& shape, const CacheView& cache,
                     std::span<const QueryToken> tokens, const float* q,
                     const LatentUpProjection& up, float* out);
// The naive one materializes every head's keys and values from kv_b_proj as the checkpoint
// holds it: kv_b [num_q_heads, nope_dim + v_head_dim, latent_dim], per head W_UK (nope_dim
// rows) then W_UV (v_head_dim rows); kv_b_bias [num_q_heads, nope_dim + v_head_dim] or nullptr.
void LatentAttentionNaive(const LatentShape& shape, const CacheView& cache,
                          std::span<const QueryToken> tokens, const float* q, const float* kv_b,
                          const float* kv_b_bias, float* out);

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_LATENT_H_
