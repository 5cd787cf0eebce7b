// MLA and GLA, latent attention (DESIGN §2.3), over the paged cache. MLA is the
// case of one latent head; both run the same code.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/decode_core.h"
#include "base/status.h"
#include "base/thread_pool.h"

namespace shardlm {
namespace {

// Query tokens per tile of the fast path: W_UK and W_UV of a head are read once per
// tile rather than once per token (a decode batch reuses them from cache).
constexpr int64_t kTokenTile = 16;

void CheckShape(const LatentShape& shape, const CacheView& cache, const float* kv_b) {
  CHECK_GT(shape.num_latent_heads, 0);
  CHECK_MSG(shape.num_q_heads > 0 && shape.num_q_heads % shape.num_latent_heads == 0,
            "num_q_heads ", shape.num_q_heads, " must be a positive multiple of num_latent_heads ",
            shape.num_latent_heads);
  CHECK_GT(shape.latent_dim, 0);
  CHECK_GE(shape.nope_dim, 0);
  CHECK_GE(shape.rope_dim, 0);
  CHECK_GT(shape.v_head_dim, 0);
  CHECK_GE(shape.window, 0);
  CHECK(kv_b != nullptr);
  // row: [latents: num_latent_heads × latent_dim | k_rope: rope_dim]
  CHECK_EQ(cache.row_floats, shape.num_latent_heads * shape.latent_dim + shape.rope_dim);
}

// Per-thread scratch of the fast path, grown to the largest shape seen.
struct LatentScratch {
  std::vector<float> q_abs;  // [kTokenTile, h_q, d_c]: q̃_i = W_UK,iᵀ q_nope,i
  std::vector<float> o_lat;  // [kTokenTile, h_q, d_c]: ō_i = Σ_t softmax_t c_j,t
};

}  // namespace

// Absorbed form (DESIGN §2.3), per tile of tokens:
//   1. q̃_i = W_UK,iᵀ q_nope,i (d_c floats per head);
//   2. DecodeAttention over all latent heads at once: head i of group j scores
//      scale·(q̃_i·c_j,t + q_rope,i·k_rope,t) and takes the latents c_j,t as
//      values, so each latent row is fetched once for all heads;
//   3. o_i = W_UV,i ō_i + b_V,i.
// The W_UK bias b_K is not applied: it adds scale·(q_nope,i·b_K,i) to every score
// of head i, a constant over positions, which softmax cancels. The W_UV bias is
// added in step 3 (the softmax weights sum to 1, so Σ_t p_t (W c_t + b) = W ō + b).
void LatentAttention(const LatentShape& shape, const CacheView& cache,
                     std::span<const QueryToken> tokens, const float* q, const float* kv_b,
                     const float* kv_b_bias, float* out) {
  CheckShape(shape, cache, kv_b);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_c = shape.num_latent_heads;
  const int64_t d_c = shape.latent_dim;
  const int64_t d_n = shape.nope_dim;
  const int64_t d_r = shape.rope_dim;
  const int64_t d_v = shape.v_head_dim;
  const int64_t g = h_q / h_c;
  const int64_t dq = d_n + d_r;   // q row per head
  const int64_t dkv = d_n + d_v;  // kv_b rows per head

  thread_local LatentScratch scratch;
  const size_t scratch_floats = static_cast<size_t>(kTokenTile * h_q * d_c);
  if (scratch.q_abs.size() < scratch_floats) {
    scratch.q_abs.resize(scratch_floats);
    scratch.o_lat.resize(scratch_floats);
  }
  float* q_abs = scratch.q_abs.data();
  float* o_lat = scratch.o_lat.data();

  const int64_t num_tokens = static_cast<int64_t>(tokens.size());
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenTile) {
    const int64_t nt = std::min(kTokenTile, num_tokens - t0);

    // 1. q̃_i = W_UK,iᵀ q_nope,i = Σ_n q_nope,i[n] · (row n of W_UK,i, [d_n, d_c]).
    //    Heads are independent work items for the compute threads.
    ParallelFor(h_q, 1, [&](int64_t head_begin, int64_t head_end) {
      for (int64_t i = head_begin; i < head_end; ++i) {
        const float* w_uk = kv_b + i * dkv * d_c;
        for (int64_t tt = 0; tt < nt; ++tt) {
          const float* q_nope = q + ((t0 + tt) * h_q + i) * dq;
          float* qa = q_abs + (tt * h_q + i) * d_c;
          std::fill_n(qa, d_c, 0.0f);
          attention_internal::AddWeightedRows(q_nope, w_uk, d_c, d_n, d_c, qa);
        }
      }
    });

    // 2. Attention over the latents of the tile's tokens, all latent heads in one
    //    pass; group j's values are its latents c_j.
    const attention_internal::RowLayout layout{.groups = h_c,
                                               .a_off = 0,
                                               .a_len = d_c,
                                               .a_step = d_c,
                                               .b_off = h_c * d_c,
                                               .b_len = d_r,
                                               .b_step = 0,
                                               .v_off = 0,
                                               .v_len = d_c,
                                               .v_step = d_c};
    const attention_internal::DecodeQueries queries{.g = g,
                                                    .qa = q_abs,
                                                    .qa_token = h_q * d_c,
                                                    .qa_head = d_c,
                                                    .qb = q + t0 * h_q * dq + d_n,
                                                    .qb_token = h_q * dq,
                                                    .qb_head = dq};
    attention_internal::DecodeAttention(cache, tokens.subspan(t0, nt), shape.window, layout,
                                        shape.scale, queries, o_lat, h_q * d_c, d_c);

    // 3. o_i = W_UV,i ō_i + b_V,i; W_UV,i is [d_v, d_c].
    ParallelFor(h_q, 1, [&](int64_t head_begin, int64_t head_end) {
      for (int64_t i = head_begin; i < head_end; ++i) {
        const float* w_uv = kv_b + (i * dkv + d_n) * d_c;
        const float* b_v = kv_b_bias != nullptr ? kv_b_bias + i * dkv + d_n : nullptr;
        for (int64_t tt = 0; tt < nt; ++tt) {
          const float* ol = o_lat + (tt * h_q + i) * d_c;
          float* o = out + ((t0 + tt) * h_q + i) * d_v;
          for (int64_t v = 0; v < d_v; ++v) {
            o[v] = attention_internal::Dot(w_uv + v * d_c, ol, d_c) +
                   (b_v != nullptr ? b_v[v] : 0.0f);
          }
        }
      }
    });
  }
}

// Reference, the prefill math: per token, head and position materialize
// k_i = [W_UK,i c_j + b_K,i | k_rope] and v_i = W_UV,i c_j + b_V,i, then plain
// softmax attention, all in double. b_K is applied here, so a test that varies it
// checks that the fast path may drop it.
void LatentAttentionNaive(const LatentShape& shape, const CacheView& cache,
                          std::span<const QueryToken> tokens, const float* q, const float* kv_b,
                          const float* kv_b_bias, float* out) {
  CheckShape(shape, cache, kv_b);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_c = shape.num_latent_heads;
  const int64_t d_c = shape.latent_dim;
  const int64_t d_n = shape.nope_dim;
  const int64_t d_r = shape.rope_dim;
  const int64_t d_v = shape.v_head_dim;
  const int64_t dq = d_n + d_r;
  const int64_t dkv = d_n + d_v;
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    const QueryToken& token = tokens[ti];
    attention_internal::CheckToken(cache, token);
    const int64_t lo = token.Lo(shape.window);
    const int64_t n = token.pos - lo + 1;
    for (int64_t i = 0; i < h_q; ++i) {
      const int64_t j = i / (h_q / h_c);
      const float* qi = q + (static_cast<int64_t>(ti) * h_q + i) * dq;
      const float* w = kv_b + i * dkv * d_c;  // [d_n + d_v, d_c]: W_UK rows, then W_UV rows
      const float* b = kv_b_bias != nullptr ? kv_b_bias + i * dkv : nullptr;
      std::vector<double> scores(static_cast<size_t>(n));
      std::vector<double> values(static_cast<size_t>(n * d_v));  // [n, d_v]
      std::vector<double> key(static_cast<size_t>(dq));
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const float* row = cache.Row(token.block_table, lo + t);
        const float* c = row + j * d_c;
        for (int64_t r = 0; r < dkv; ++r) {
          double x = b != nullptr ? b[r] : 0.0;
          for (int64_t k = 0; k < d_c; ++k) x += static_cast<double>(w[r * d_c + k]) * c[k];
          if (r < d_n) {
            key[r] = x;
          } else {
            values[t * d_v + (r - d_n)] = x;
          }
        }
        for (int64_t k = 0; k < d_r; ++k) key[d_n + k] = row[h_c * d_c + k];
        double dot = 0.0;
        for (int64_t k = 0; k < dq; ++k) dot += qi[k] * key[k];
        scores[t] = static_cast<double>(shape.scale) * dot;
        max_score = std::max(max_score, scores[t]);
      }
      double sum = 0.0;
      for (double& s : scores) {
        s = std::exp(s - max_score);
        sum += s;
      }
      float* oi = out + (static_cast<int64_t>(ti) * h_q + i) * d_v;
      for (int64_t v = 0; v < d_v; ++v) {
        double acc = 0.0;
        for (int64_t t = 0; t < n; ++t) acc += scores[t] / sum * values[t * d_v + v];
        oi[v] = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace shardlm
