// GTA, grouped-tied attention (DESIGN §2.2), over the paged cache.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/decode_core.h"
#include "base/status.h"

namespace shardlm {
namespace {

void CheckShape(const GtaShape& shape, const CacheView& cache) {
  CHECK_GT(shape.num_kv_heads, 0);
  CHECK_GT(shape.head_dim, 0);
  CHECK_MSG(shape.num_q_heads > 0 && shape.num_q_heads % shape.num_kv_heads == 0, "num_q_heads ",
            shape.num_q_heads, " must be a positive multiple of num_kv_heads ", shape.num_kv_heads);
  CHECK_MSG(shape.rope_dim >= 0 && shape.rope_dim <= shape.head_dim, "rope_dim ", shape.rope_dim,
            " must be in [0, head_dim ", shape.head_dim, "]");
  CHECK_GE(shape.window, 0);
  // row: [tied: num_kv_heads × head_dim | k_rope: rope_dim]
  CHECK_EQ(cache.row_floats, shape.num_kv_heads * shape.head_dim + shape.rope_dim);
}

}  // namespace

// All tied states in one pass (see DecodeAttention). A score of group j is
// q_nope·tied_j[0 : d_h − d_r] + q_rope·k_rope and the value is tied_j itself, so
// the tied state is fetched once and serves as both key and value (the second
// touch hits L1 within a block).
void GtaAttention(const GtaShape& shape, const CacheView& cache, std::span<const QueryToken> tokens,
                  const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  const int64_t d_nope = d - shape.rope_dim;
  const attention_internal::RowLayout layout{.groups = h_kv,
                                             .a_off = 0,
                                             .a_len = d_nope,
                                             .a_step = d,
                                             .b_off = h_kv * d,
                                             .b_len = shape.rope_dim,
                                             .b_step = 0,
                                             .v_off = 0,
                                             .v_len = d,
                                             .v_step = d};
  const attention_internal::DecodeQueries queries{.g = h_q / h_kv,
                                                  .qa = q,
                                                  .qa_token = h_q * d,
                                                  .qa_head = d,
                                                  .qb = q + d_nope,
                                                  .qb_token = h_q * d,
                                                  .qb_head = d};
  attention_internal::DecodeAttention(cache, tokens, shape.window, layout, shape.scale, queries,
                                      out, h_q * d, d);
}

// Reference: per token, query head and position, build the key
// k = [tied_j[0 : d_h − d_r] | k_rope] and value v = tied_j explicitly, then plain
// softmax attention in double.
void GtaAttentionNaive(const GtaShape& shape, const CacheView& cache,
                       std::span<const QueryToken> tokens, const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  const int64_t d_nope = d - shape.rope_dim;
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    const QueryToken& token = tokens[ti];
    attention_internal::CheckToken(cache, token);
    const int64_t lo = token.Lo(shape.window);
    const int64_t n = token.pos - lo + 1;
    for (int64_t i = 0; i < h_q; ++i) {
      const int64_t j = i / (h_q / h_kv);
      const float* qi = q + (static_cast<int64_t>(ti) * h_q + i) * d;
      std::vector<double> scores(static_cast<size_t>(n));
      std::vector<float> key(static_cast<size_t>(d));
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const float* row = cache.Row(token.block_table, lo + t);
        std::copy_n(row + j * d, d_nope, key.begin());
        std::copy_n(row + h_kv * d, shape.rope_dim, key.begin() + d_nope);
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qi[c]) * key[c];
        scores[t] = static_cast<double>(shape.scale) * dot;
        max_score = std::max(max_score, scores[t]);
      }
      double sum = 0.0;
      for (double& s : scores) {
        s = std::exp(s - max_score);
        sum += s;
      }
      std::vector<double> acc(static_cast<size_t>(d), 0.0);
      for (int64_t t = 0; t < n; ++t) {
        const float* v = cache.Row(token.block_table, lo + t) + j * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += scores[t] / sum * v[c];
      }
      float* oi = out + (static_cast<int64_t>(ti) * h_q + i) * d;
      for (int64_t c = 0; c < d; ++c) oi[c] = static_cast<float>(acc[c]);
    }
  }
}

}  // namespace shardlm
