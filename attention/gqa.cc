// MHA, MQA and GQA (DESIGN §2.1) over the paged cache.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/decode_core.h"
#include "base/status.h"

namespace shardlm {
namespace {

void CheckShape(const GqaShape& shape, const CacheView& cache) {
  CHECK_GT(shape.num_kv_heads, 0);
  CHECK_GT(shape.head_dim, 0);
  CHECK_MSG(shape.num_q_heads > 0 && shape.num_q_heads % shape.num_kv_heads == 0, "num_q_heads ",
            shape.num_q_heads, " must be a positive multiple of num_kv_heads ", shape.num_kv_heads);
  CHECK_GE(shape.window, 0);
  // row: [K: num_kv_heads × head_dim | V: num_kv_heads × head_dim]
  CHECK_EQ(cache.row_floats, 2 * shape.num_kv_heads * shape.head_dim);
}

}  // namespace

// All KV heads in one pass: each K/V row is read once for every query head
// (group j of g = h_q / h_kv heads reads K_j and V_j), see DecodeAttention.
void GqaAttention(const GqaShape& shape, const CacheView& cache, std::span<const QueryToken> tokens,
                  const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  const attention_internal::RowLayout layout{.groups = h_kv,
                                             .a_off = 0,
                                             .a_len = d,
                                             .a_step = d,
                                             .v_off = h_kv * d,
                                             .v_len = d,
                                             .v_step = d};
  const attention_internal::DecodeQueries queries{
      .g = h_q / h_kv, .qa = q, .qa_token = h_q * d, .qa_head = d};
  attention_internal::DecodeAttention(cache, tokens, shape.window, layout, shape.scale, queries,
                                      out, h_q * d, d);
}

// Reference: per token and query head, materialize all scores in double, softmax
// with the max subtracted, then the weighted sum of values.
void GqaAttentionNaive(const GqaShape& shape, const CacheView& cache,
                       std::span<const QueryToken> tokens, const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    const QueryToken& token = tokens[ti];
    attention_internal::CheckToken(cache, token);
    const int64_t lo = token.Lo(shape.window);
    const int64_t n = token.pos - lo + 1;
    for (int64_t i = 0; i < h_q; ++i) {
      const int64_t j = i / (h_q / h_kv);
      const float* qi = q + (static_cast<int64_t>(ti) * h_q + i) * d;
      std::vector<double> scores(static_cast<size_t>(n));
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const float* k = cache.Row(token.block_table, lo + t) + j * d;
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qi[c]) * k[c];
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
        const float* v = cache.Row(token.block_table, lo + t) + (h_kv + j) * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += scores[t] / sum * v[c];
      }
      float* oi = out + (static_cast<int64_t>(ti) * h_q + i) * d;
      for (int64_t c = 0; c < d; ++c) oi[c] = static_cast<float>(acc[c]);
    }
  }
}

}  // namespace shardlm
