#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"
#include "attention/attention.h"
#include "attention/test_util.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

using attention_test::ExpectClose;
using attention_test::ExpectVaries;
using attention_test::GammaTilde;
using attention_test::GuardedBuffer;
using attention_test::kU;
using attention_test::Shuffle;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Softmax attention of scores s[lo, hi) over values v [n, dim] in double: writes the
// normalized output and returns the natural-log lse of the scores.
double Softmax(const std::vector<double>& s, const std::vector<float>& v, int64_t dim, int64_t lo,
               int64_t hi, std::vector<double>& out) {
  double m = -1e300;
  for (int64_t t = lo; t < hi; ++t) m = std::max(m, s[t]);
  double sum = 0.0;
  for (int64_t t = lo; t < hi; ++t) sum += std::exp(s[t] - m);
  out.assign(dim, 0.0);
  for (int64_t t = lo; t < hi; ++t) {
    for (int64_t c = 0; c < dim; ++c) out[c] += std::exp(s[t] - m) / sum * v[t * dim + c];
  }
  return m + std::log(sum);
}

// Split n scored values into P random non-empty parts, compute each part's
// (output, lse) in double and round them to float, merge, and compare with the
// unsplit result. Bound, with L = max |lse_i| and V = max |v|:
//   each rounded lse_i is off by u·L and lse_i − M adds u·2L, exp adds u relative:
//   every weight e^(lse_i − M) is off by ≤ u·(3L + 1) relative, the normalized ones
//   by twice that plus γ̃(P) for their sum; the rounded o_i add u·V, the weighted
//   sum γ̃(P)·V and the result's rounding u·V:
//     |out − o| ≤ V·(2u(3L + 1) + 2γ̃(P) + 2u);
//   lse = M + ln Σ: M off by u·L, the sum by γ̃(P) relative (absolute in ln), the
//   result rounded (u·(L + ln P)):  |lse − exact| ≤ u(2L + ln P + 1) + γ̃(P).
TEST(LseTest, MergeOfSplitEqualsUnsplit) {
  for (const int64_t dim : {1, 7, 64}) {
    for (const int64_t n : {1, 5, 100, 1000}) {
      for (const int64_t num_parts : {1, 2, 3, 7}) {
        if (num_parts > n) continue;
        for (const double spread : {1.0, 30.0}) {
          SCOPED_TRACE(
              absl::StrFormat("dim=%d n=%d parts=%d spread=%g", dim, n, num_parts, spread));
          Rng rng(static_cast<uint64_t>(dim * 1000 + n * 10 + num_parts), "lse");
          std::vector<double> s(n);
          for (double& x : s) x = rng.Uniform(-1, 1) * spread + 5.0;
          const std::vector<float> v = rng.UniformVector(n * dim, -1, 1);
          if (n * dim >= 2) ExpectVaries(v, -1, 1, "values");
          // num_parts − 1 distinct cut points in (0, n).
          std::vector<int64_t> cuts;
          for (int64_t c = 1; c < n; ++c) cuts.push_back(c);
          Shuffle(cuts, rng);
          cuts.resize(num_parts - 1);
          cuts.push_back(0);
          cuts.push_back(n);
          std::sort(cuts.begin(), cuts.end());

          std::vector<float> parts(num_parts * dim), lses(num_parts);
          std::vector<double> o;
          double lse_max = 0.0;
          for (int64_t p = 0; p < num_parts; ++p) {
            lses[p] = static_cast<float>(Softmax(s, v, dim, cuts[p], cuts[p + 1], o));
            lse_max = std::max(lse_max, double{std::fabs(lses[p])});
            for (int64_t c = 0; c < dim; ++c) parts[p * dim + c] = static_cast<float>(o[c]);
          }
          const double lse_exact = Softmax(s, v, dim, 0, n, o);
          std::vector<float> exact(o.begin(), o.end());

          GuardedBuffer out(dim);
          const float lse = MergeLse(parts, lses, dim, out.data());
          EXPECT_TRUE(out.GuardsIntact());
          const double v_max = 1.0;
          ExpectClose(out.body(), exact,
                      v_max * (2 * kU * (3 * lse_max + 1) + 2 * GammaTilde(num_parts) + 2 * kU),
                      "merged output");
          EXPECT_NEAR(lse, lse_exact,
                      kU * (2 * lse_max + std::log(num_parts) + 1) + GammaTilde(num_parts));
        }
      }
    }
  }
}

// Empty chunks (lse = −inf) carry no weight and their outputs are never read, so
// garbage there (NaN from 0/0) must not leak: the result equals the merge of the
// non-empty parts exactly.
TEST(LseTest, EmptyPartsAreIgnored) {
  const int64_t dim = 5;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Rng rng(7);
  const std::vector<float> a = rng.UniformVector(dim, -1, 1), b = rng.UniformVector(dim, -1, 1);
  std::vector<float> with_empty, without_empty;
  for (int64_t c = 0; c < dim; ++c) with_empty.push_back(nan);
  with_empty.insert(with_empty.end(), a.begin(), a.end());
  for (int64_t c = 0; c < dim; ++c) with_empty.push_back(nan);
  with_empty.insert(with_empty.end(), b.begin(), b.end());
  without_empty = a;
  without_empty.insert(without_empty.end(), b.begin(), b.end());
  const std::vector<float> lses_with = {kNegInf, 2.5f, kNegInf, 1.0f};
  const std::vector<float> lses_without = {2.5f, 1.0f};
  GuardedBuffer out_with(dim), out_without(dim);
  const float lse_with = MergeLse(with_empty, lses_with, dim, out_with.data());
  const float lse_without = MergeLse(without_empty, lses_without, dim, out_without.data());
  EXPECT_EQ(lse_with, lse_without);
  for (int64_t c = 0; c < dim; ++c) EXPECT_EQ(out_with.body()[c], out_without.body()[c]);
  EXPECT_TRUE(out_with.GuardsIntact());
}

// All parts empty: the merged range is empty too — zeros and lse = −inf, which
// again merges as empty one level up. No parts at all behaves the same.
TEST(LseTest, AllEmptyGivesZerosAndNegInf) {
  const std::vector<float> parts(6, std::numeric_limits<float>::quiet_NaN());
  const std::vector<float> lses = {kNegInf, kNegInf};
  GuardedBuffer out(3);
  EXPECT_EQ(MergeLse(parts, lses, 3, out.data()), kNegInf);
  for (const float x : out.body()) EXPECT_EQ(x, 0.0f);
  EXPECT_TRUE(out.GuardsIntact());
  GuardedBuffer none(3);
  EXPECT_EQ(MergeLse({}, {}, 3, none.data()), kNegInf);
  for (const float x : none.body()) EXPECT_EQ(x, 0.0f);
}

// One part is returned unchanged, exactly (weight e^0 = 1).
TEST(LseTest, SinglePartIsIdentity) {
  Rng rng(8);
  const std::vector<float> part = rng.UniformVector(9, -1, 1);
  const std::vector<float> lse = {-3.25f};
  GuardedBuffer out(9);
  EXPECT_EQ(MergeLse(part, lse, 9, out.data()), -3.25f);
  for (int64_t c = 0; c < 9; ++c) EXPECT_EQ(out.body()[c], part[c]);
}

// Large lses (long contexts with large scores) must not overflow: only their
// differences are exponentiated. Weights here are 1/4 and 3/4, lse = 1000 + ln 4.
TEST(LseTest, LargeLsesDoNotOverflow) {
  const std::vector<float> parts = {4.0f, -8.0f};  // dim 1
  const std::vector<float> lses = {1000.0f, 1000.0f + std::log(3.0f)};
  float out = 0.0f;
  const float lse = MergeLse(parts, lses, 1, &out);
  // Rounding of lses and lse at magnitude 1000: ~u·1000 per term.
  EXPECT_NEAR(lse, 1000.0 + std::log(4.0), 4 * kU * 1000);
  EXPECT_NEAR(out, 0.25 * 4 - 0.75 * 8, 16 * kU * 1000 * 8);
}

}  // namespace
}  // namespace shardlm
