#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/attention.h"
#include "base/status.h"

namespace shardlm {

// A part with lse = −inf covers no keys (an empty chunk): its weight is 0 and its
// output is not read at all, so it may hold anything, e.g. the NaN of 0/0. When
// every part is empty the merged range is empty too: out is all zeros and the
// result is −inf, which merges as empty again one level up. `out` must not alias
// `parts`. The largest lse sets M, so every weight e^(lse_i − M) is in (0, 1] and
// the sum is in [1, num_parts]: no overflow for any finite lses.
float MergeLse(std::span<const float> parts, std::span<const float> lses, int64_t dim, float* out) {
  const int64_t num_parts = static_cast<int64_t>(lses.size());
  CHECK_GE(dim, 0);
  CHECK_EQ(static_cast<int64_t>(parts.size()), num_parts * dim);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  float m = kNegInf;
  for (const float lse : lses) m = std::max(m, lse);
  std::fill_n(out, dim, 0.0f);
  if (m == kNegInf) return kNegInf;

  float sum = 0.0f;
  for (int64_t i = 0; i < num_parts; ++i) {
    if (lses[i] == kNegInf) continue;
    const float w = std::exp(lses[i] - m);
    sum += w;
    const float* o = parts.data() + i * dim;
    for (int64_t k = 0; k < dim; ++k) out[k] += w * o[k];
  }
  const float inv = 1.0f / sum;
  for (int64_t k = 0; k < dim; ++k) out[k] *= inv;
  return m + std::log(sum);
}

}  // namespace shardlm
