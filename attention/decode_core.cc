#include "attention/decode_core.h"

#include <cmath>
#include <vector>

#include "attention/attention.h"

namespace shardlm::attention_internal {
namespace {

// Per-thread scratch of GroupAttention. It grows to the largest group × range
// seen and is then reused, so steady-state decode does not allocate.
struct Scratch {
  std::vector<float> scores;    // [g, kChunk]: scores, then softmax numerators
  std::vector<float> parts;     // [g, num_chunks, v_len]: per-chunk normalized outputs
  std::vector<float> lses;      // [g, num_chunks]: per-chunk log-sum-exp of the scores
  std::vector<float> inv_sums;  // [g]: 1 / Σ numerators of the current chunk

  void Reserve(int64_t g, int64_t num_chunks, int64_t v_len) {
    Grow(scores, g * kChunk);
    Grow(inv_sums, g);
    if (num_chunks > 1) {
      Grow(parts, g * num_chunks * v_len);
      Grow(lses, g * num_chunks);
    }
  }
  static void Grow(std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  }
};

// How many rows ahead the score pass prefetches: enough to cover memory latency
// with a group's dot products (~100 ns per row), within the current page only.
constexpr int64_t kPrefetchRows = 2;

void Prefetch(const float* p, int64_t n) {
  constexpr int64_t kLineFloats = 64 / sizeof(float);
  for (int64_t i = 0; i < n; i += kLineFloats) __builtin_prefetch(p + i);
}

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

void GroupAttention(const CacheView& cache, const QueryToken& token, int64_t window,
                    const RowLayout& layout, float scale, const GroupQuery& query, float* out,
                    int64_t out_stride) {
  const int64_t g = query.g;
  const int64_t lo = token.Lo(window);
  const int64_t hi = token.pos;
  const int64_t num_chunks = (hi - lo + kChunk) / kChunk;  // ≥ 1: the range holds pos
  const int64_t v_len = layout.v_len;
  const int64_t row_floats = cache.row_floats;
  Scratch& scratch = ThreadScratch();
  scratch.Reserve(g, num_chunks, v_len);
  float* scores = scratch.scores.data();

  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t c_lo = lo + c * kChunk;
    const int64_t c_hi = std::min(hi, c_lo + kChunk - 1);
    const int64_t len = c_hi - c_lo + 1;

    // Scores of all g heads; each key row is fetched once for the group. Rows sit
    // row_floats apart (kilobytes), too far for the hardware prefetcher, so the key
    // and value lines of a row a few ahead are prefetched explicitly; the value pass
    // below then finds them in L2.
    ForEachRun(cache, token.block_table, c_lo, c_hi, [&](const float* row, int64_t t0, int64_t n) {
      for (int64_t i = 0; i < n; ++i, row += row_floats) {
        if (i + kPrefetchRows < n) {
          const float* ahead = row + kPrefetchRows * row_floats;
          Prefetch(ahead + layout.a_off, layout.a_len);
          Prefetch(ahead + layout.b_off, layout.b_len);
          Prefetch(ahead + layout.v_off, layout.v_len);
        }
        const int64_t idx = t0 - c_lo + i;
        for (int64_t h = 0; h < g; ++h) {
          float s = Dot(query.qa + h * query.qa_stride, row + layout.a_off, layout.a_len);
          if (layout.b_len > 0) {
            s += Dot(query.qb + h * query.qb_stride, row + layout.b_off, layout.b_len);
          }
          scores[h * kChunk + idx] = scale * s;
        }
      }
    });

    // Softmax numerators with the chunk's max subtracted, so exp never overflows
    // and the largest term is exactly 1 (the sum is ≥ 1, its log finite).
    float* lse_out = scratch.lses.data() + c;  // only used when num_chunks > 1
    float* inv = scratch.inv_sums.data();
    for (int64_t h = 0; h < g; ++h) {
      float* s = scores + h * kChunk;
      float m = s[0];
      for (int64_t i = 1; i < len; ++i) m = std::max(m, s[i]);
      float sum = 0.0f;
      for (int64_t i = 0; i < len; ++i) {
        s[i] = std::exp(s[i] - m);
        sum += s[i];
      }
      inv[h] = 1.0f / sum;
      if (num_chunks > 1) lse_out[h * num_chunks] = m + std::log(sum);
    }

    // Weighted values, accumulated straight into the destination: `out` when the
    // range is one chunk, else this chunk's slot of the partials.
    auto dest = [&](int64_t h) {
      return num_chunks == 1 ? out + h * out_stride
                             : scratch.parts.data() + (h * num_chunks + c) * v_len;
    };
    for (int64_t h = 0; h < g; ++h) std::fill_n(dest(h), v_len, 0.0f);
    ForEachRun(cache, token.block_table, c_lo, c_hi, [&](const float* row, int64_t t0, int64_t n) {
      for (int64_t h = 0; h < g; ++h) {
        AddWeightedRows(scores + h * kChunk + (t0 - c_lo), row + layout.v_off, row_floats, n, v_len,
                        dest(h));
      }
    });
    for (int64_t h = 0; h < g; ++h) {
      float* d = dest(h);
      for (int64_t i = 0; i < v_len; ++i) d[i] *= inv[h];
    }
  }

  if (num_chunks > 1) {
    for (int64_t h = 0; h < g; ++h) {
      const float* parts = scratch.parts.data() + h * num_chunks * v_len;
      const float* lses = scratch.lses.data() + h * num_chunks;
      MergeLse(std::span<const float>(parts, static_cast<size_t>(num_chunks * v_len)),
               std::span<const float>(lses, static_cast<size_t>(num_chunks)), v_len,
               out + h * out_stride);
    }
  }
}

}  // namespace shardlm::attention_internal
