// Test-only helpers for attention/*_test.cc: paged caches with shuffled pages,
// guarded output buffers, input-variation checks, and the derived error bounds.
#ifndef SHARDLM_ATTENTION_TEST_UTIL_H_
#define SHARDLM_ATTENTION_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "attention/decode_core.h"
#include "attention/kv_cache.h"
#include "base/status.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm::attention_test {

// ---------------------------------------------------------------------------
// Error bounds.
//
// u = 2^-24 is the fp32 unit roundoff. For an n-term fp32 sum the worst-case
// relative error is γ_n = n·u/(1 − n·u), reached only by adversarial rounding.
// For data like ours the rounding errors act as independent zero-mean terms and
// grow like sqrt(n): Higham & Mary (SIAM J. Sci. Comput. 2019) bound the error by
// γ̃(n) = λ·sqrt(n)·u with probability ≥ 1 − 2n·exp(−λ²(1−u)²/2); λ = 8 makes a
// false failure less likely than ~1e-11 per element. References compute in double,
// so their own error (~1e-16 relative) is negligible next to these bounds.
inline constexpr double kU = 0x1p-24;
inline constexpr double kLambda = 8.0;

inline double GammaTilde(int64_t n) {
  return kLambda * std::sqrt(static_cast<double>(std::max<int64_t>(n, 1))) * kU;
}

// Error of one fp32 score scale·Σ_{i<m} a_i b_i, relative to S ≥ scale·Σ_i |a_i b_i|:
// the dot (γ̃(m)), the addition of its two parts when a family splits it (u), then
// the scale (u).
inline double ScoreError(int64_t m, double s_abs) { return (GammaTilde(m) + 2 * kU) * s_abs; }

// Bound on |fast − exact| for one element of o = Σ_t softmax(s)_t·v_t over n
// positions, where every score is computed with absolute error ≤ score_err,
// s_abs ≥ scale·Σ_i |a_i b_i| for every score, and v_max ≥ |v_t|. Derivation:
//  (a) subtracting the max and exp add ≤ 2u·s_abs to each exponent and kExpUlps·u
//      relative to each numerator (decode_kernels.h: the vectorized exp);
//  (b) shifting every exponent by at most δ = score_err + 2u·s_abs moves each
//      weight p_t by a factor within e^(±2δ) (numerator and denominator move), so
//      the weights are off by ≤ (2δ + u)·p_t to first order;
//  (c) chunk merging takes ln of each chunk's sum and exp of lse_i − M, which adds
//      ≤ 2u·(s_abs + ln n + 1) to each exponent and so 2× that to the weights;
//  (d) the sum of the numerators carries relative error γ̃(n); online softmax
//      rescales the running sums and outputs together by the same factor
//      e^(m_old − m_new) once per block (its exp error cancels in their ratio),
//      each rescale rounding both by u: γ̃(n/kBlock + 1) on each, twice that on the
//      weights;
//  (e) since Σ p_t = 1, weights off by relative ε move o by ≤ ε·v_max; the weighted
//      sum of values adds γ̃(n)·v_max, the final fp32 rounding (fast and reference
//      each) u·v_max.
inline double AttentionTolerance(int64_t n, double score_err, double s_abs, double v_max) {
  const double delta = score_err + 2 * kU * s_abs;
  const double merge = 2 * kU * (s_abs + std::log(static_cast<double>(n)) + 1);
  const double rescale = 2 * GammaTilde(n / attention_internal::kBlock + 1);
  const double weight_rel =
      2 * delta + attention_internal::kExpUlps * kU + 2 * merge + GammaTilde(n) + rescale;
  return v_max * (weight_rel + GammaTilde(n) + 2 * kU);
}

// ---------------------------------------------------------------------------
// Inputs.

// Fisher–Yates with the seeded generator, so failures reproduce.
template <typename T>
void Shuffle(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.NextU64() % i]);
}

// Fails the test unless `x` (n ≥ 2) looks like a draw from uniform [lo, hi): at
// least half its values distinct and, for n ≥ 16, its spread over half the range.
// A generator returning one constant (or a few) would hide transposed indices.
inline void ExpectVaries(std::span<const float> x, float lo, float hi, const std::string& what) {
  ASSERT_GE(x.size(), 2u) << what;
  std::vector<float> sorted(x.begin(), x.end());
  std::sort(sorted.begin(), sorted.end());
  const size_t distinct = std::unique(sorted.begin(), sorted.end()) - sorted.begin();
  EXPECT_GE(distinct * 2, x.size()) << what << ": too few distinct values";
  if (x.size() >= 16) {
    EXPECT_GT(sorted[distinct - 1] - sorted[0], 0.5f * (hi - lo)) << what << ": spread too small";
  }
}

// A pool holding the rows of several sequences in shuffled, non-contiguous pages
// (plus two spare pages). Rows 0..len−1 of sequence s are uniform in [lo, hi);
// every other float of the pool — page tails past a sequence's last row and the
// spare pages — is NaN, so a kernel reading a row it was not given returns NaN.
class TestCache {
 public:
  TestCache(int64_t row_floats, int64_t page_size, const std::vector<int64_t>& seq_lens, Rng& rng,
            float lo = -1.0f, float hi = 1.0f)
      : row_floats_(row_floats), page_size_(page_size), seq_lens_(seq_lens) {
    int64_t pages = 2;
    for (const int64_t len : seq_lens) pages += (len + page_size - 1) / page_size;
    num_pages_ = pages;
    std::vector<int32_t> ids(static_cast<size_t>(pages));
    for (int64_t i = 0; i < pages; ++i) ids[i] = static_cast<int32_t>(i);
    Shuffle(ids, rng);
    pool_.assign(static_cast<size_t>(pages * page_size * row_floats),
                 std::numeric_limits<float>::quiet_NaN());
    size_t next = 0;
    for (const int64_t len : seq_lens) {
      std::vector<int32_t> table;
      for (int64_t b = 0; b < (len + page_size - 1) / page_size; ++b) table.push_back(ids[next++]);
      tables_.push_back(std::move(table));
    }
    for (size_t s = 0; s < seq_lens.size(); ++s) {
      for (int64_t pos = 0; pos < seq_lens[s]; ++pos) {
        float* row = Row(s, pos);
        for (int64_t i = 0; i < row_floats; ++i) row[i] = rng.Uniform(lo, hi);
      }
    }
  }

  CacheView view() { return CacheView::F32(pool_.data(), num_pages_, page_size_, row_floats_); }
  std::span<const int32_t> table(size_t s) const { return tables_[s]; }
  float* Row(size_t s, int64_t pos) { return view().Row(tables_[s], pos); }
  const std::vector<float>& pool() const { return pool_; }
  int64_t row_floats() const { return row_floats_; }
  int64_t page_size() const { return page_size_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t seq_len(size_t s) const { return seq_lens_[s]; }

  // Largest |value| over the written rows, restricted to floats [begin, end) of a row.
  float MaxAbs(int64_t begin, int64_t end) {
    float m = 0.0f;
    for (size_t s = 0; s < seq_lens_.size(); ++s) {
      for (int64_t pos = 0; pos < seq_lens_[s]; ++pos) {
        const float* row = Row(s, pos);
        for (int64_t i = begin; i < end; ++i) m = std::max(m, std::fabs(row[i]));
      }
    }
    return m;
  }

  // The written rows of sequence s at positions [0, n), concatenated.
  std::vector<float> Rows(size_t s, int64_t n) {
    std::vector<float> out;
    for (int64_t pos = 0; pos < n; ++pos) {
      const float* row = Row(s, pos);
      out.insert(out.end(), row, row + row_floats_);
    }
    return out;
  }

 private:
  int64_t row_floats_;
  int64_t page_size_;
  int64_t num_pages_ = 0;
  std::vector<int64_t> seq_lens_;
  std::vector<float> pool_;  // [num_pages, page_size, row_floats]
  std::vector<std::vector<int32_t>> tables_;
};

// A TestCache's pool stored in `dtype` (kv_cache.h: KvRowFormat, with one int8 scale per
// entry of `segments`), same pages and block tables. The rows the TestCache never wrote are
// NaN there and decode to NaN here, so a kernel reading a row it was not given still
// returns NaN. A kernel's result on this view is checked against its naive reference on the
// same view, which decodes every value exactly (in double).
class NarrowCache {
 public:
  NarrowCache(const TestCache& src, KvDType dtype, const std::vector<int64_t>& segments)
      : src_(src), format_(KvRowFormat::Make(dtype, segments)) {
    EXPECT_EQ(format_.elems, src.row_floats());
    const int64_t rows = static_cast<int64_t>(src.pool().size()) / src.row_floats();
    pool_.resize(static_cast<size_t>(rows * format_.bytes));
    for (int64_t r = 0; r < rows; ++r) {
      format_.Store(src.pool().data() + r * src.row_floats(), pool_.data() + r * format_.bytes);
    }
  }
  CacheView view() {
    return {pool_.data(), src_.num_pages(), src_.page_size(), src_.row_floats(), format_.bytes,
            &format_};
  }
  const std::vector<unsigned char>& pool() const { return pool_; }

 private:
  const TestCache& src_;
  KvRowFormat format_;
  std::vector<unsigned char> pool_;
};

// Bound of a narrow cache's result against the naive reference over the same decoded values,
// from the f32 bound of the source rows: decoded values are at most (1 + 2^-8)·max|x| (bf16
// rounding; int8's q·s ≤ max|x| up to one rounding), and the int8 kernels round each s·q and
// each softmax weight times s once more (one more u per product in the scores and in the
// values, against the ≥ 2u the f32 bound already carries per term): 1.5× covers both.
inline constexpr double kNarrowBoundFactor = 1.5;

// A ragged, prefill-style batch over a TestCache built with seq_lens
// {ctx, ctx/3 + 1, 1}: sequence 0 is queried at several positions (last, second
// to last, first, middle), the others at their last row, in shuffled order.
inline std::vector<int64_t> RaggedSeqLens(int64_t ctx) { return {ctx, ctx / 3 + 1, 1}; }
inline std::vector<QueryToken> RaggedTokens(const TestCache& cache, Rng& rng) {
  const int64_t ctx = cache.seq_len(0);
  std::vector<std::pair<size_t, int64_t>> picks = {{0, ctx - 1}, {0, 0}, {0, ctx / 2}};
  if (ctx >= 2) picks.push_back({0, ctx - 2});
  for (size_t s = 1; s < 3; ++s) picks.push_back({s, cache.seq_len(s) - 1});
  Shuffle(picks, rng);
  std::vector<QueryToken> tokens;
  for (const auto& [s, pos] : picks) tokens.push_back({cache.table(s), pos});
  return tokens;
}

// Largest Σ_i |x_i| over `count` vectors of `len` floats that start `stride` apart.
inline double MaxL1(const float* x, int64_t count, int64_t stride, int64_t len) {
  double m = 0.0;
  for (int64_t v = 0; v < count; ++v) {
    double sum = 0.0;
    for (int64_t i = 0; i < len; ++i) sum += std::fabs(x[v * stride + i]);
    m = std::max(m, sum);
  }
  return m;
}

// Largest number of positions any token of the batch attends to.
inline int64_t MaxRange(std::span<const QueryToken> tokens, int64_t window) {
  int64_t n = 1;
  for (const QueryToken& t : tokens) n = std::max(n, t.pos - t.Lo(window) + 1);
  return n;
}

// Switches a test back to the best decode kernels when it ends (also on an
// early return), after it has run some with SetDecodeIsa(kPortable).
struct RestoreDecodeIsa {
  RestoreDecodeIsa() = default;
  RestoreDecodeIsa(const RestoreDecodeIsa&) = delete;
  RestoreDecodeIsa& operator=(const RestoreDecodeIsa&) = delete;
  ~RestoreDecodeIsa() { attention_internal::SetDecodeIsa(BestIsa()); }
};

// ---------------------------------------------------------------------------
// Outputs.

// An output buffer with kGuard sentinel floats on each side. The body starts as
// NaN, so an element the kernel fails to write shows up in the comparison, and
// the guards catch writes past either end (the classic sharding bug).
class GuardedBuffer {
 public:
  static constexpr int64_t kGuard = 32;
  static constexpr float kSentinel = -12345.678f;

  explicit GuardedBuffer(int64_t n) : n_(n), data_(static_cast<size_t>(n + 2 * kGuard)) {
    std::fill(data_.begin(), data_.end(), kSentinel);
    std::fill_n(data(), n, std::numeric_limits<float>::quiet_NaN());
  }
  float* data() { return data_.data() + kGuard; }
  std::span<const float> body() const { return {data_.data() + kGuard, static_cast<size_t>(n_)}; }
  bool GuardsIntact() const {
    for (int64_t i = 0; i < kGuard; ++i) {
      if (data_[i] != kSentinel || data_[kGuard + n_ + i] != kSentinel) return false;
    }
    return true;
  }

 private:
  int64_t n_;
  std::vector<float> data_;
};

// Expects every element of `actual` finite and within `tol` of `expected`;
// returns the worst |actual − expected| / tol (so a sweep can report how much of
// the bound it used).
inline double ExpectClose(std::span<const float> actual, std::span<const float> expected,
                          double tol, const std::string& what) {
  EXPECT_EQ(actual.size(), expected.size()) << what;
  double worst = 0.0;
  size_t worst_i = 0;
  int64_t bad = 0;
  for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    const double err = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    if (!std::isfinite(actual[i]) || !std::isfinite(expected[i]) || !(err <= tol)) {
      if (bad++ == 0) {
        ADD_FAILURE() << absl::StrFormat("%s: element %d: %.9g vs %.9g (err %.3g, tol %.3g)", what,
                                         i, actual[i], expected[i], err, tol);
      }
    }
    if (err / tol > worst) {
      worst = err / tol;
      worst_i = i;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": elements out of tolerance; worst at " << worst_i;
  return worst;
}

// True when the pool's bytes are unchanged (NaNs compare by bit pattern).
inline bool SameBytes(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace shardlm::attention_test

#endif  // SHARDLM_ATTENTION_TEST_UTIL_H_
