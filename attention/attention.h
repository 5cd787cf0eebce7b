// Decode/prefill attention kernels over the paged cache, one file per family,
// each with a naive reference of the same signature. The engine projects,
// rotates and writes the new rows into the cache first; a kernel then computes,
// for every query token, softmax(scale · q·k) · v over positions [Lo, pos].
// All shapes are this rank's local shard. Outputs are fully overwritten.
// The fast kernels split work over the per-rank compute pool (base/thread_pool.h)
// and give the same bits at any thread count, page size, page placement and
// batch composition: a query's result depends only on its own context.
#ifndef SHARDLM_ATTENTION_ATTENTION_H_
#define SHARDLM_ATTENTION_ATTENTION_H_

#include <cstdint>
#include <span>

#include "attention/kv_cache.h"

namespace shardlm {

// MHA, MQA, GQA. Local query head i reads local KV head i / (num_q_heads / num_kv_heads).
struct GqaShape {
  int64_t num_q_heads = 0;   // local
  int64_t num_kv_heads = 0;  // local
  int64_t head_dim = 0;
  float scale = 0.0f;
  int64_t window = 0;        // 0: full causal
};
// q:   [tokens, num_q_heads, head_dim], already rotated.
// row: [K: num_kv_heads × head_dim | V: num_kv_heads × head_dim], K rotated.
// out: [tokens, num_q_heads, head_dim].
void GqaAttention(const GqaShape& shape, const CacheView& cache, std::span<const QueryToken> tokens,
                  const float* q, float* out);
void GqaAttentionNaive(const GqaShape& shape, const CacheView& cache,
                       std::span<const QueryToken> tokens, const float* q, float* out);

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
// kv_b:   this rank's rows of kv_b_proj, [num_q_heads, nope_dim + v_head_dim, latent_dim]:
//         per head W_UK (nope_dim rows) then W_UV (v_head_dim rows).
// kv_b_bias: [num_q_heads, nope_dim + v_head_dim] or nullptr.
// out:    [tokens, num_q_heads, v_head_dim].
// The fast path uses the absorbed form (q̃ = W_UKᵀ q_nope, values are latents,
// then W_UV); the naive one materializes every head's keys and values.
void LatentAttention(const LatentShape& shape, const CacheView& cache,
                     std::span<const QueryToken> tokens, const float* q, const float* kv_b,
                     const float* kv_b_bias, float* out);
void LatentAttentionNaive(const LatentShape& shape, const CacheView& cache,
                          std::span<const QueryToken> tokens, const float* q, const float* kv_b,
                          const float* kv_b_bias, float* out);

// Log-sum-exp merge of partial attention results over disjoint key ranges
// (natural log): lse = M + ln Σ e^(lse_i − M), o = Σ e^(lse_i − lse) o_i.
// parts: [num_parts, dim] outputs, lses: [num_parts]; writes out [dim], returns lse.
float MergeLse(std::span<const float> parts, std::span<const float> lses, int64_t dim, float* out);

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_ATTENTION_H_
