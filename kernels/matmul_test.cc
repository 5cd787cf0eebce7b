#include "kernels/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "base/avx512_reduce.h"
#include "base/half.h"
#include "base/rng.h"
#include "base/thread_pool.h"
#include "kernels/matmul_internal.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

constexpr float kGuard = -12345.0f;  // sentinel around outputs: catches out-of-range writes
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int64_t kPad = 16;  // guard floats before and after every buffer

// A buffer of `size` floats framed by kPad `fill` values on each side; data() skips the front
// guard. Inputs are framed with NaN (a kernel reading outside its rows poisons its result),
// outputs with kGuard (a kernel writing outside its rows changes a guard).
struct Framed {
  Framed(int64_t size, float fill) : buf(static_cast<size_t>(size + 2 * kPad), fill) {}
  float* data() { return buf.data() + kPad; }
  const float* data() const { return buf.data() + kPad; }
  bool GuardsIntact(float fill) const {
    auto same = [fill](float v) { return std::isnan(fill) ? std::isnan(v) : v == fill; };
    return std::all_of(buf.begin(), buf.begin() + kPad, same) &&
           std::all_of(buf.end() - kPad, buf.end(), same);
  }
  std::vector<float> buf;
};

// x: [n, in] with row stride x_stride, the (x_stride - in) padding floats of each row NaN.
Framed StridedRows(Rng& rng, int64_t n, int64_t in, int64_t x_stride, float lo, float hi,
                   bool integers = false) {
  Framed x(n * x_stride, kNaN);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < in; ++k) {
      const float v = rng.Uniform(lo, hi);
      x.data()[i * x_stride + k] = integers ? std::floor(v) : v;
    }
  }
  return x;
}

struct PathName {
  std::string operator()(const testing::TestParamInfo<Isa>& info) const {
    switch (info.param) {
      case Isa::kPortable:
        return "Portable";
      case Isa::kAvx2Fma:
        return "Avx2Fma";
      case Isa::kAvx512:
        return "Avx512";
    }
    return "Unknown";
  }
};

class SkinnyMatMulTest : public testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!IsaAvailable(GetParam())) {
      GTEST_SKIP() << IsaName(GetParam()) << " not supported by this CPU";
    }
  }
  void Run(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out, int64_t in,
           const float* bias, float* y, int64_t y_stride) const {
    SkinnyMatMulWithIsa(GetParam(), x, n, x_stride, w, out, in, bias, y, y_stride);
  }
};

INSTANTIATE_TEST_SUITE_P(AllPaths, SkinnyMatMulTest,
                         testing::Values(Isa::kPortable, Isa::kAvx2Fma,
                                         Isa::kAvx512),
                         PathName());

// Error bound for one output, from Higham's dot-product analysis with u = eps/2 and
// γ_m = m·u / (1 − m·u):
//  * fast path: each of the L partial sums adds ⌈in/L⌉ terms (one rounding per FMA, or two with
//    a separately rounded product), the lane tree adds log2(L) roundings, the bias add one more:
//    m = ⌈in/L⌉ + log2(L) + 2 roundings on any path, so |fast − exact| ≤ γ_m · S with
//    S = |b| + Σ_k |x_k·w_k|;
//  * reference: double accumulation, error ≤ (in + 1)·2⁻⁵³·S, then one rounding to float,
//    ≤ u·(|exact| + that) ≤ u·S·(1 + tiny).
// Hence |fast − ref| ≤ (γ_m + u + (in + 2)·2⁻⁵³) · S. S is computed from the actual inputs, so
// the bound scales with `in` and the input magnitudes as it should.
double Tolerance(int64_t in, int lanes, double abs_sum) {
  const double u = std::numeric_limits<float>::epsilon() / 2.0;
  const double m = static_cast<double>((in + lanes - 1) / lanes) + std::log2(lanes) + 2.0;
  const double gamma = m * u / (1.0 - m * u);
  return (gamma + u + (in + 2) * std::ldexp(1.0, -53)) * abs_sum;
}

// The AVX-512 kernel reduces 16 accumulators at once with shuffles; it must do the adds of the
// scalar tree (ReduceLanes) exactly. Values of mixed sign and magnitude (2^-40 … 2^40) make
// every other order of the adds round differently; special values must propagate as there.
TEST(SkinnyMatMulPaths, VectorLaneReductionIsTheScalarTree) {
  if (!Cpu().avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  for (uint64_t seed : {1, 2, 3, 4}) {
    Rng rng(seed);
    for (int64_t count : {4, 16, 20, 32, 44, 192}) {
      alignas(64) static float acc[192 * 16];
      for (int64_t i = 0; i < count * 16; ++i) {
        acc[i] = std::ldexp(rng.Uniform(-1.0f, 1.0f), static_cast<int>(rng.Uniform(-40, 40)));
      }
      if (seed == 4) {
        acc[5] = std::numeric_limits<float>::infinity();
        acc[16 * 7 + 3] = std::numeric_limits<float>::quiet_NaN();
        acc[16 * 9 + 1] = -0.0f;
      }
      std::vector<float> fast(static_cast<size_t>(count) + 1, -12345.0f), ref(fast);
      matmul_internal::ReduceSumsAvx512(acc, count, fast.data());
      matmul_internal::ReduceEach<16>(acc, count, ref.data());
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(std::memcmp(&fast[i], &ref[i], sizeof(float)), 0)
            << "seed " << seed << " accumulator " << i << ": " << fast[i] << " vs " << ref[i];
      }
      ASSERT_EQ(fast[count], -12345.0f);  // nothing past the last sum
    }
  }
}

// The AVX2 kernels' trees, eight at a time, over 8 lanes (float kernels) and 16 (quantized),
// with a scalar remainder: the scalar tree's bits, including infinities, NaNs and signed zeros.
TEST(SkinnyMatMulPaths, Avx2LaneReductionIsTheScalarTree) {
  if (!Cpu().avx2_fma) GTEST_SKIP() << "no AVX2 on this CPU";
  for (uint64_t seed : {1, 2, 3, 4}) {
    Rng rng(seed);
    for (int64_t count : {1, 3, 4, 7, 8, 9, 12, 16, 21, 64, 67}) {
      // + 1: unaligned rows; at least 3 accumulators' room for the special values below.
      std::vector<float> acc(static_cast<size_t>(std::max<int64_t>(count, 3)) * 16 + 1);
      for (float& a : acc) {
        a = std::ldexp(rng.Uniform(-1.0f, 1.0f), static_cast<int>(rng.Uniform(-40, 40)));
      }
      if (seed == 4) {
        acc[6] = std::numeric_limits<float>::infinity();
        acc[16 * 2 + 3] = std::numeric_limits<float>::quiet_NaN();
        acc[8 * 5 + 1] = -0.0f;
      }
      for (int lanes : {8, 16}) {
        const float* a = acc.data() + seed % 2;
        std::vector<float> fast(static_cast<size_t>(count) + 1, -12345.0f), ref(fast);
        if (lanes == 8) {
          matmul_internal::ReduceSumsAvx2<8>(a, count, fast.data());
          matmul_internal::ReduceEach<8>(a, count, ref.data());
        } else {
          matmul_internal::ReduceSumsAvx2<16>(a, count, fast.data());
          matmul_internal::ReduceEach<16>(a, count, ref.data());
        }
        for (int64_t i = 0; i < count; ++i) {
          ASSERT_EQ(std::memcmp(&fast[i], &ref[i], sizeof(float)), 0)
              << "seed " << seed << ", " << lanes << " lanes, accumulator " << i << ": " << fast[i]
              << " vs " << ref[i];
        }
        ASSERT_EQ(fast[count], -12345.0f);  // nothing past the last sum
      }
    }
  }
}

#if defined(__x86_64__)
// base/avx512_reduce.h's trees of 4 and 16 vectors (sums and maxima), stored: [16 | 4] sums,
// then [16 | 4] maxima.
__attribute__((target("avx512f"))) void ReduceTrees(const float* acc, float* out) {
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_ps(acc + 16 * i);
  const __m512 w[4] = {v[0], v[1], v[2], v[3]};
  _mm512_storeu_ps(out, ReduceAdd16x16(v));
  _mm512_storeu_ps(out + 16, ReduceAdd4x16(w));
  _mm512_storeu_ps(out + 32, ReduceMax16x16(v));
  _mm512_storeu_ps(out + 48, ReduceMax4x16(w));
}

// The 4-vector tree sums as the 16-vector one and the scalar tree do, bit for bit, and both
// maxima are the largest lane (the decode softmax reduces 4 or 16 heads' blocks at once).
TEST(SkinnyMatMulPaths, FourAndSixteenVectorTreesAreTheScalarTree) {
  if (!Cpu().avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  for (uint64_t seed : {1, 2, 3}) {
    Rng rng(seed);
    alignas(64) float acc[256];
    for (float& x : acc) {
      x = std::ldexp(rng.Uniform(-1.0f, 1.0f), static_cast<int>(rng.Uniform(-40, 40)));
    }
    float out[64], ref[16];
    ReduceTrees(acc, out);
    matmul_internal::ReduceEach<16>(acc, 16, ref);
    for (int i = 0; i < 16; ++i) {
      ASSERT_EQ(std::memcmp(&out[i], &ref[i], sizeof(float)), 0) << "seed " << seed << " " << i;
      ASSERT_EQ(out[32 + i], *std::max_element(acc + 16 * i, acc + 16 * i + 16));
      if (i < 4) {
        ASSERT_EQ(std::memcmp(&out[16 + i], &ref[i], sizeof(float)), 0) << "seed " << seed;
        ASSERT_EQ(out[48 + i], out[32 + i]);
      }
    }
  }
}
#endif

TEST(SkinnyMatMulPaths, SelectedPathIsAvailableAndNamed) {
  const std::vector<Isa> paths = AvailableIsas();
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.front(), Isa::kPortable);
  EXPECT_TRUE(IsaAvailable(SelectedMatMulIsa()));
  EXPECT_STREQ(MatMulIsaName(), IsaName(SelectedMatMulIsa()));
  // Dispatch picks the widest available path.
  EXPECT_EQ(SelectedMatMulIsa(), paths.back());
  std::string names;
  for (Isa p : paths) names += std::string(" ") + IsaName(p);
  std::printf("available paths:%s; selected: %s\n", names.c_str(), MatMulIsaName());
}

// Every shape against the double-precision reference, strided x and y, bias and no bias.
TEST_P(SkinnyMatMulTest, MatchesNaiveOnOddShapes) {
  const int lanes = MatMulLanes(GetParam());
  for (uint64_t seed : {1, 2}) {
    for (int64_t n : {1, 2, 3, 5, 8, 13, 17, 64}) {
      for (int64_t in : {1, 3, 8, 15, 16, 17, 63, 64, 257, 1000}) {
        for (int64_t out : {1, 2, 5, 8, 31, 64, 100}) {
          for (bool has_bias : {false, true}) {
            Rng rng(seed * 1000003 + static_cast<uint64_t>(n * 10007 + in * 101 + out));
            const int64_t x_stride = in + 3, y_stride = out + 2;  // strided rows
            const Framed x = StridedRows(rng, n, in, x_stride, -2.0f, 2.0f);
            Framed w(out * in, kNaN), bias(out, kNaN);
            for (int64_t j = 0; j < out * in; ++j) w.data()[j] = rng.Uniform(-1.0f, 1.0f);
            for (int64_t o = 0; o < out; ++o) bias.data()[o] = rng.Uniform(-1.0f, 1.0f);
            const float* b = has_bias ? bias.data() : nullptr;

            Framed fast(n * y_stride, kGuard), ref(n * y_stride, kGuard);
            Run(x.data(), n, x_stride, w.data(), out, in, b, fast.data(), y_stride);
            SkinnyMatMulNaive(x.data(), n, x_stride, w.data(), out, in, b, ref.data(), y_stride);

            SCOPED_TRACE(testing::Message() << "seed " << seed << " n " << n << " in " << in
                                            << " out " << out << " bias " << has_bias);
            ASSERT_TRUE(fast.GuardsIntact(kGuard)) << "write before or after y";
            float lo = std::numeric_limits<float>::infinity(), hi = -lo;
            for (int64_t i = 0; i < n; ++i) {
              for (int64_t o = 0; o < y_stride; ++o) {
                const float got = fast.data()[i * y_stride + o];
                if (o >= out) {
                  ASSERT_EQ(got, kGuard) << "write between y rows at " << i << "," << o;
                  continue;
                }
                double abs_sum = has_bias ? std::fabs(b[o]) : 0.0;
                for (int64_t k = 0; k < in; ++k) {
                  abs_sum += std::fabs(static_cast<double>(x.data()[i * x_stride + k]) *
                                       w.data()[o * in + k]);
                }
                const float want = ref.data()[i * y_stride + o];
                ASSERT_TRUE(std::isfinite(got)) << "read outside x or w at " << i << "," << o;
                ASSERT_NEAR(got, want, Tolerance(in, lanes, abs_sum)) << "at " << i << "," << o;
                lo = std::min(lo, want);
                hi = std::max(hi, want);
              }
            }
            if (n * out > 1) {
              EXPECT_LT(lo, hi) << "inputs do not vary";
            }
          }
        }
      }
    }
  }
}

// Rows spanning several K blocks of the kernel (and a power-of-two row length, the case the x
// repacking exists for), against the reference.
TEST_P(SkinnyMatMulTest, LongRowsMatchNaive) {
  const int lanes = MatMulLanes(GetParam());
  for (int64_t in : {2048, 4099}) {
    for (int64_t n : {1, 6, 17}) {
      const int64_t out = 13;
      Rng rng(static_cast<uint64_t>(in * 100 + n));
      const Framed x = StridedRows(rng, n, in, in, -2.0f, 2.0f);
      Framed w(out * in, kNaN);
      for (int64_t j = 0; j < out * in; ++j) w.data()[j] = rng.Uniform(-1.0f, 1.0f);
      std::vector<float> fast(static_cast<size_t>(n * out)), ref(fast.size());
      Run(x.data(), n, in, w.data(), out, in, nullptr, fast.data(), out);
      SkinnyMatMulNaive(x.data(), n, in, w.data(), out, in, nullptr, ref.data(), out);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t o = 0; o < out; ++o) {
          double abs_sum = 0.0;
          for (int64_t k = 0; k < in; ++k) {
            abs_sum += std::fabs(static_cast<double>(x.data()[i * in + k]) * w.data()[o * in + k]);
          }
          ASSERT_NEAR(fast[i * out + o], ref[i * out + o], Tolerance(in, lanes, abs_sum))
              << "in " << in << " n " << n << " at " << i << "," << o;
        }
      }
    }
  }
}

// Small-integer inputs make every partial sum exact in f32 (|y| ≤ 1000·4·4 + 4 < 2²⁴), so any
// order of summation gives the exact result: a dropped or doubled term of any size shows up
// as an exact mismatch, not a tolerance question.
TEST_P(SkinnyMatMulTest, ExactOnSmallIntegers) {
  for (int64_t n : {1, 3, 8, 17}) {
    for (int64_t in : {1, 15, 16, 17, 257, 1000}) {
      for (int64_t out : {1, 5, 31, 64}) {
        Rng rng(static_cast<uint64_t>(n * 7919 + in * 31 + out));
        const Framed x = StridedRows(rng, n, in, in + 1, -4.0f, 5.0f, /*integers=*/true);
        Framed w(out * in, kNaN), bias(out, kNaN);
        for (int64_t j = 0; j < out * in; ++j) w.data()[j] = std::floor(rng.Uniform(-4.0f, 5.0f));
        for (int64_t o = 0; o < out; ++o) bias.data()[o] = std::floor(rng.Uniform(-4.0f, 5.0f));
        std::vector<float> fast(static_cast<size_t>(n * out)), ref(fast.size());
        Run(x.data(), n, in + 1, w.data(), out, in, bias.data(), fast.data(), out);
        SkinnyMatMulNaive(x.data(), n, in + 1, w.data(), out, in, bias.data(), ref.data(), out);
        ASSERT_EQ(fast, ref) << "n " << n << " in " << in << " out " << out;
        if (ref.size() > 1) {
          EXPECT_GT(std::set<float>(ref.begin(), ref.end()).size(), 1u) << "inputs do not vary";
        }
      }
    }
  }
}

// The core contract: y[i][o] is bit-identical whatever batch row i is computed in.
TEST_P(SkinnyMatMulTest, BatchInvariant) {
  constexpr int64_t kRows = 17;
  struct Shape {
    int64_t in, out;
  };
  for (const Shape s : {Shape{1, 3}, Shape{15, 5}, Shape{64, 8}, Shape{257, 37}, Shape{1000, 100},
                        Shape{1029, 19}, Shape{4096, 13}}) {
    for (bool has_bias : {false, true}) {
      const int64_t in = s.in, out = s.out;
      SCOPED_TRACE(testing::Message() << "in " << in << " out " << out << " bias " << has_bias);
      Rng rng(static_cast<uint64_t>(in * 1000 + out * 2 + has_bias));
      const std::vector<float> w = rng.UniformVector(static_cast<size_t>(out * in), -1.0f, 1.0f);
      const std::vector<float> bias_v = rng.UniformVector(static_cast<size_t>(out), -1.0f, 1.0f);
      const float* b = has_bias ? bias_v.data() : nullptr;
      // Rows of realistic magnitude and sign, so sums cancel and low bits matter.
      std::vector<float> x(static_cast<size_t>(kRows * in));
      for (float& v : x) v = rng.Normal();

      std::vector<float> all(static_cast<size_t>(kRows * out));
      Run(x.data(), kRows, in, w.data(), out, in, b, all.data(), out);
      std::set<float> distinct(all.begin(), all.end());
      ASSERT_GT(distinct.size(), all.size() / 2) << "inputs do not vary";
      auto row = [&](int64_t i) { return all.data() + i * out; };

      // Each row alone, from a buffer shifted by one float (different alignment).
      for (int64_t i = 0; i < kRows; ++i) {
        std::vector<float> xi(static_cast<size_t>(in + 1)), yi(static_cast<size_t>(out));
        std::copy_n(x.data() + i * in, in, xi.data() + 1);
        Run(xi.data() + 1, 1, in, w.data(), out, in, b, yi.data(), out);
        ASSERT_EQ(std::memcmp(yi.data(), row(i), out * sizeof(float)), 0)
            << "row " << i << " alone";
      }

      // Shuffled sub-batches of 1..9 requested rows, placed at random positions among 0..4
      // filler rows, with random strides.
      for (int round = 0; round < 6; ++round) {
        std::vector<int64_t> order(kRows);
        std::iota(order.begin(), order.end(), 0);
        for (int64_t j = kRows - 1; j > 0; --j) {
          std::swap(order[j], order[rng.NextU64() % static_cast<uint64_t>(j + 1)]);
        }
        for (size_t next = 0; next < order.size();) {
          const int64_t take =
              std::min<int64_t>(1 + rng.NextU64() % 9, static_cast<int64_t>(order.size() - next));
          const int64_t fillers = rng.NextU64() % 5, n = take + fillers;
          const int64_t x_stride = in + rng.NextU64() % 7, y_stride = out + rng.NextU64() % 5;
          // slot[j] = index into x of the row at batch position j, or -1 for a filler.
          std::vector<int64_t> slot(static_cast<size_t>(n), -1);
          std::copy_n(order.begin() + next, take, slot.begin());
          for (int64_t j = n - 1; j > 0; --j) {
            std::swap(slot[j], slot[rng.NextU64() % static_cast<uint64_t>(j + 1)]);
          }
          std::vector<float> xb(static_cast<size_t>(n * x_stride));
          for (int64_t j = 0; j < n; ++j) {
            for (int64_t k = 0; k < in; ++k) {
              xb[j * x_stride + k] = slot[j] >= 0 ? x[slot[j] * in + k] : rng.Normal();
            }
          }
          std::vector<float> yb(static_cast<size_t>(n * y_stride));
          Run(xb.data(), n, x_stride, w.data(), out, in, b, yb.data(), y_stride);
          for (int64_t j = 0; j < n; ++j) {
            if (slot[j] < 0) continue;
            ASSERT_EQ(std::memcmp(yb.data() + j * y_stride, row(slot[j]), out * sizeof(float)), 0)
                << "row " << slot[j] << " at position " << j << " of a batch of " << n;
          }
          next += static_cast<size_t>(take);
        }
      }
    }
  }
}

// Prefill-sized n is computed in row panels (64 rows at in = 8193); every row still has the
// bits it has alone.
TEST_P(SkinnyMatMulTest, RowPanelsKeepRowBits) {
  const int64_t n = 150, in = 8193, out = 7;
  Rng rng(99);
  const std::vector<float> w = rng.UniformVector(static_cast<size_t>(out * in), -1.0f, 1.0f);
  const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1.0f, 1.0f);
  const std::vector<float> bias = rng.UniformVector(static_cast<size_t>(out), -1.0f, 1.0f);
  std::vector<float> all(static_cast<size_t>(n * out)), one(static_cast<size_t>(out));
  Run(x.data(), n, in, w.data(), out, in, bias.data(), all.data(), out);
  for (int64_t i = 0; i < n; ++i) {
    Run(x.data() + i * in, 1, in, w.data(), out, in, bias.data(), one.data(), out);
    ASSERT_EQ(std::memcmp(one.data(), all.data() + i * out, out * sizeof(float)), 0) << "row " << i;
  }
}

// A NaN in one x row poisons that row's outputs only, and the other rows keep their bits.
TEST_P(SkinnyMatMulTest, NaNStaysInItsRow) {
  const int64_t n = 6, in = 100, out = 9, bad = 4;
  Rng rng(77);
  const std::vector<float> w = rng.UniformVector(static_cast<size_t>(out * in), -1.0f, 1.0f);
  std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1.0f, 1.0f);
  std::vector<float> clean(static_cast<size_t>(n * out)), poisoned(clean.size());
  Run(x.data(), n, in, w.data(), out, in, nullptr, clean.data(), out);
  x[bad * in + 37] = kNaN;
  Run(x.data(), n, in, w.data(), out, in, nullptr, poisoned.data(), out);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      const float v = poisoned[i * out + o];
      if (i == bad) {
        EXPECT_TRUE(std::isnan(v)) << o;
      } else {
        EXPECT_EQ(std::memcmp(&v, &clean[i * out + o], sizeof(float)), 0) << i << "," << o;
      }
    }
  }
}

// Degenerate sizes: n = 0 and out = 0 write nothing; in = 0 gives the bias (or zeros).
TEST_P(SkinnyMatMulTest, EmptyDimensions) {
  const float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, bias[2] = {0.5f, -2.0f};
  float y[4] = {kGuard, kGuard, kGuard, kGuard};
  Run(x, 0, 2, w, 2, 2, bias, y, 2);
  Run(x, 2, 2, w, 0, 2, bias, y, 2);
  for (float v : y) EXPECT_EQ(v, kGuard);
  Run(x, 2, 2, w, 2, 0, bias, y, 2);
  EXPECT_EQ(y[0], 0.5f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[2], 0.5f);
  EXPECT_EQ(y[3], -2.0f);
  Run(x, 2, 2, w, 2, 0, nullptr, y, 2);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

// 16-bit weights: `count` random bit patterns of `type` and their exact f32 values. Values are
// uniform in ±1 with some ±0 and, for f16, some subnormals (|w| < 2⁻¹⁴), so every case of the
// widening instructions is exercised.
struct Weights16 {
  std::vector<uint16_t> bits;
  std::vector<float> widened;
};
Weights16 RandomWeights16(Rng& rng, DType type, int64_t count) {
  Weights16 w;
  for (int64_t j = 0; j < count; ++j) {
    float v = rng.Uniform(-1.0f, 1.0f);
    const uint64_t kind = rng.NextU64() % 16;
    if (kind == 0) v = 0.0f;
    if (kind == 1) v = -0.0f;
    if (kind == 2) v *= 1e-6f;  // f16 subnormal; bf16 normal
    const uint16_t h = type == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
    w.bits.push_back(h);
    w.widened.push_back(type == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h));
  }
  return w;
}

class SkinnyMatMul16Test
    : public testing::TestWithParam<std::tuple<Isa, DType>> {
 protected:
  void SetUp() override {
    if (!IsaAvailable(path())) {
      GTEST_SKIP() << IsaName(path()) << " not supported by this CPU";
    }
  }
  Isa path() const { return std::get<0>(GetParam()); }
  DType type() const { return std::get<1>(GetParam()); }
};

INSTANTIATE_TEST_SUITE_P(
    AllPaths, SkinnyMatMul16Test,
    testing::Combine(testing::Values(Isa::kPortable, Isa::kAvx2Fma,
                                     Isa::kAvx512),
                     testing::Values(DType::kBF16, DType::kF16)),
    [](const testing::TestParamInfo<std::tuple<Isa, DType>>& info) {
      return PathName()(testing::TestParamInfo<Isa>(std::get<0>(info.param), 0)) + "_" +
             DTypeName(std::get<1>(info.param));
    });

// Every 16-bit pattern but the NaNs, as a [count, 1] W times x = 1: each output is its weight
// widened (1·w + 0 partial sums is exact), so the kernels' widening of every value, subnormals
// and infinities included, matches base/half.h.
TEST_P(SkinnyMatMul16Test, WidensEveryValueExactly) {
  std::vector<uint16_t> bits;
  std::vector<float> want;
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float v = type() == DType::kBF16 ? Bf16ToF32(static_cast<uint16_t>(h))
                                                : F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(v)) continue;
    bits.push_back(static_cast<uint16_t>(h));
    want.push_back(v);
  }
  const int64_t out = static_cast<int64_t>(bits.size());
  const float one = 1.0f;
  std::vector<float> y(bits.size());
  SkinnyMatMulWithIsa(path(), &one, 1, 1, type(), bits.data(), out, 1, nullptr, y.data(), out);
  for (int64_t o = 0; o < out; ++o) {
    ASSERT_EQ(y[o], want[o]) << "pattern 0x" << std::hex << bits[o];
  }
}

// The 16-bit contract: y is bit-identical to the same path's f32 call on the widened W, for
// odd shapes (K tails of every length, partial row and column tiles), every n from 1 to 40 on
// the smaller shapes, strided x (NaN padding) and y (guards between and around rows).
TEST_P(SkinnyMatMul16Test, BitIdenticalToWidenedF32) {
  const int64_t sizes[] = {1, 5, 17, 33, 517, 1031};
  for (uint64_t seed : {1, 2, 3}) {
    for (int64_t out : sizes) {
      for (int64_t in : sizes) {
        // Every n up to 40 where that is cheap; on the big shapes the n around tile edges.
        std::vector<int64_t> ns;
        if (out * in <= 33 * 1031) {
          for (int64_t n = 1; n <= 40; ++n) ns.push_back(n);
        } else {
          ns = {1, 2, 3, 4, 5, 7, 16, 17, 33, 40};
        }
        Rng rng(seed * 7777 + static_cast<uint64_t>(out * 1013 + in));
        const Weights16 w = RandomWeights16(rng, type(), out * in);
        const std::vector<float> bias = rng.UniformVector(static_cast<size_t>(out), -1, 1);
        const int64_t x_stride = in + 1, y_stride = out + 2;
        const Framed x = StridedRows(rng, 40, in, x_stride, -2.0f, 2.0f);
        for (int64_t n : ns) {
          SCOPED_TRACE(testing::Message() << "seed " << seed << " n " << n << " in " << in
                                          << " out " << out);
          const float* b = n % 2 == 0 ? bias.data() : nullptr;
          Framed y16(n * y_stride, kGuard), y32(n * y_stride, kGuard);
          SkinnyMatMulWithIsa(path(), x.data(), n, x_stride, type(), w.bits.data(), out, in, b,
                               y16.data(), y_stride);
          SkinnyMatMulWithIsa(path(), x.data(), n, x_stride, w.widened.data(), out, in, b,
                               y32.data(), y_stride);
          ASSERT_TRUE(y16.GuardsIntact(kGuard)) << "write before or after y";
          // Guards between rows included: both buffers started as kGuard.
          ASSERT_EQ(std::memcmp(y16.buf.data(), y32.buf.data(), y16.buf.size() * sizeof(float)),
                    0);
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t o = out; o < y_stride; ++o) {
              ASSERT_EQ(y16.data()[i * y_stride + o], kGuard) << "write between y rows";
            }
          }
        }
      }
    }
  }
}

// Against the double-precision reference on the widened weights, with the tolerance derived
// above (widening is exact, so it is the f32 bound with S taken over the widened W).
TEST_P(SkinnyMatMul16Test, MatchesNaive) {
  const int lanes = MatMulLanes(path());
  for (uint64_t seed : {1, 2}) {
    for (int64_t n : {1, 4, 17, 40}) {
      for (int64_t in : {1, 17, 517, 1031}) {
        for (int64_t out : {1, 5, 33}) {
          Rng rng(seed * 31 + static_cast<uint64_t>(n * 10007 + in * 101 + out));
          const Weights16 w = RandomWeights16(rng, type(), out * in);
          const std::vector<float> bias = rng.UniformVector(static_cast<size_t>(out), -1, 1);
          const Framed x = StridedRows(rng, n, in, in, -2.0f, 2.0f);
          std::vector<float> fast(static_cast<size_t>(n * out)), ref(fast.size());
          SkinnyMatMulWithIsa(path(), x.data(), n, in, type(), w.bits.data(), out, in,
                               bias.data(), fast.data(), out);
          SkinnyMatMulNaive(x.data(), n, in, type(), w.bits.data(), out, in, bias.data(),
                            ref.data(), out);
          SCOPED_TRACE(testing::Message() << "seed " << seed << " n " << n << " in " << in
                                          << " out " << out);
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t o = 0; o < out; ++o) {
              double abs_sum = std::fabs(bias[o]);
              for (int64_t k = 0; k < in; ++k) {
                abs_sum += std::fabs(static_cast<double>(x.data()[i * in + k]) *
                                     w.widened[o * in + k]);
              }
              ASSERT_NEAR(fast[i * out + o], ref[i * out + o], Tolerance(in, lanes, abs_sum))
                  << "at " << i << "," << o;
            }
          }
          // (A lone weight may be ±0, and then every row is just the bias.)
          const bool all_zero = std::all_of(w.widened.begin(), w.widened.end(),
                                            [](float v) { return v == 0.0f; });
          if (n * out > 1 && !all_zero) {
            EXPECT_GT(std::set<float>(ref.begin(), ref.end()).size(), 1u) << "inputs do not vary";
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Bf16Math::kDot: x rounded to bf16, vdpbf16ps pairs into 16 f32 lanes.

class Bf16DotTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!Bf16MathAvailable(Bf16Math::kDot)) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  }
  void TearDown() override { SetBf16Math(Bf16Math::kExact); }
};

// x as the kernel sees it: rounded to bf16 to nearest even, |x| < 2^-126 flushed to ±0.
float RoundXToBf16(float v) {
  if (std::fpclassify(v) == FP_SUBNORMAL) return std::copysign(0.0f, v);
  return Bf16ToF32(F32ToBf16(v));
}

// Against double accumulation of the same products (x rounded as the kernel rounds it, W
// widened): each lane adds ⌈in/32⌉ steps of two products (bf16 × bf16 is exact in f32, so at
// most two roundings a step), then the 16-lane tree and the bias, so m = 2⌈in/32⌉ + 6 in
// Tolerance's γ_m; plus 2^-126 per step for results the instruction flushes to zero.
TEST_F(Bf16DotTest, MatchesReferenceOnOddShapes) {
  const double u = std::numeric_limits<float>::epsilon() / 2.0;
  for (uint64_t seed : {1, 2, 3}) {
    for (int64_t n : {1, 2, 4, 5, 16, 17, 33}) {
      for (int64_t in : {1, 2, 15, 31, 32, 33, 63, 511, 512, 513, 1000, 1061}) {
        for (int64_t out : {1, 5, 6, 7, 13, 50}) {
          for (bool has_bias : {false, true}) {
            Rng rng(seed * 1000003 + static_cast<uint64_t>(n * 10007 + in * 101 + out));
            const int64_t x_stride = in + 3, y_stride = out + 2;
            Framed x = StridedRows(rng, n, in, x_stride, -2.0f, 2.0f);
            // Some tiny x, which the conversion flushes, and exact zeros.
            for (int64_t k = 0; k < in; k += 7) x.data()[k] = k % 2 ? 1e-39f : 0.0f;
            const Weights16 w = RandomWeights16(rng, DType::kBF16, out * in);
            const std::vector<float> bias = rng.UniformVector(static_cast<size_t>(out), -1, 1);
            const float* b = has_bias ? bias.data() : nullptr;

            Framed got(n * y_stride, kGuard);
            SkinnyMatMulBf16Dot(x.data(), n, x_stride, w.bits.data(), out, in, b, got.data(),
                                y_stride);
            SCOPED_TRACE(testing::Message() << "seed " << seed << " n " << n << " in " << in
                                            << " out " << out << " bias " << has_bias);
            ASSERT_TRUE(got.GuardsIntact(kGuard)) << "write before or after y";
            const double steps = static_cast<double>((in + 31) / 32);
            const double m = 2 * steps + 6;
            const double gamma = m * u / (1 - m * u);
            for (int64_t i = 0; i < n; ++i) {
              for (int64_t o = 0; o < y_stride; ++o) {
                const float v = got.data()[i * y_stride + o];
                if (o >= out) {
                  ASSERT_EQ(v, kGuard) << "write between y rows at " << i << "," << o;
                  continue;
                }
                double want = has_bias ? b[o] : 0.0, abs_sum = has_bias ? std::fabs(b[o]) : 0.0;
                for (int64_t k = 0; k < in; ++k) {
                  const double p = static_cast<double>(RoundXToBf16(x.data()[i * x_stride + k])) *
                                   w.widened[o * in + k];
                  want += p;
                  abs_sum += std::fabs(p);
                }
                const double tol = (gamma + u) * abs_sum + steps * std::ldexp(1.0, -125);
                ASSERT_NEAR(v, want, tol) << "at " << i << "," << o;
              }
            }
          }
        }
      }
    }
  }
}

// The rounding of x is the point of the mode: the result is near the exact path's, at bf16's
// precision, and not equal to it.
TEST_F(Bf16DotTest, CloseToExactPathAtBf16Precision) {
  const int64_t n = 8, in = 4096, out = 64;
  Rng rng(5);
  const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1, 1);
  const Weights16 w = RandomWeights16(rng, DType::kBF16, out * in);
  std::vector<float> dot(static_cast<size_t>(n * out)), exact(dot.size());
  SkinnyMatMulBf16Dot(x.data(), n, in, w.bits.data(), out, in, nullptr, dot.data(), out);
  SkinnyMatMul(x.data(), n, in, DType::kBF16, w.bits.data(), out, in, nullptr, exact.data(),
               out);
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      double abs_sum = 0;
      for (int64_t k = 0; k < in; ++k) abs_sum += std::fabs(x[i * in + k] * w.widened[o * in + k]);
      const size_t j = static_cast<size_t>(i * out + o);
      // Each x moves by at most 2^-9 of itself.
      ASSERT_NEAR(dot[j], exact[j], std::ldexp(abs_sum, -8)) << i << "," << o;
      differ += dot[j] != exact[j];
    }
  }
  EXPECT_GT(differ, n * out / 2) << "the dot kernel is not rounding x";
}

// Batch invariance as on the exact paths: a row's outputs do not depend on n, on its position,
// on the strides or on the buffer's alignment; also across the row panels of a prefill call.
TEST_F(Bf16DotTest, BatchInvariant) {
  for (const int64_t in : {33, 1000, 4097}) {
    const int64_t out = 19, rows = 70;
    Rng rng(static_cast<uint64_t>(in));
    const Weights16 w = RandomWeights16(rng, DType::kBF16, out * in);
    std::vector<float> x(static_cast<size_t>(rows * in));
    for (float& v : x) v = rng.Normal();
    std::vector<float> all(static_cast<size_t>(rows * out));
    SkinnyMatMulBf16Dot(x.data(), rows, in, w.bits.data(), out, in, nullptr, all.data(), out);
    ASSERT_GT(std::set<float>(all.begin(), all.end()).size(), all.size() / 2);
    for (int64_t start : {0, 3, 17, 64}) {
      for (int64_t n : {1, 2, 5, 6}) {
        const int64_t x_stride = in + 1 + n % 3, y_stride = out + n;
        std::vector<float> xb(static_cast<size_t>(n * x_stride + 1));
        for (int64_t j = 0; j < n; ++j) {
          std::copy_n(x.data() + (start + j) * in, in, xb.data() + 1 + j * x_stride);
        }
        std::vector<float> yb(static_cast<size_t>(n * y_stride));
        SkinnyMatMulBf16Dot(xb.data() + 1, n, x_stride, w.bits.data(), out, in, nullptr, yb.data(),
                            y_stride);
        for (int64_t j = 0; j < n; ++j) {
          ASSERT_EQ(std::memcmp(yb.data() + j * y_stride, all.data() + (start + j) * out,
                                out * sizeof(float)),
                    0)
              << "in " << in << " row " << start + j << " in a batch of " << n;
        }
      }
    }
  }
}

// The mode switch: SkinnyMatMul and SkinnyMatMulParallel take the dot kernel for BF16 weights
// only; F32 and F16 calls keep their bits; SkinnyMatMulWithIsa stays exact.
TEST_F(Bf16DotTest, ModeRoutesBf16WeightsOnly) {
  const int64_t n = 9, in = 777, out = 300;
  Rng rng(8);
  const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1, 1);
  const Weights16 wb = RandomWeights16(rng, DType::kBF16, out * in);
  const Weights16 wh = RandomWeights16(rng, DType::kF16, out * in);
  auto call = [&](DType type, const void* w) {
    std::vector<float> y(static_cast<size_t>(n * out));
    SkinnyMatMul(x.data(), n, in, type, w, out, in, nullptr, y.data(), out);
    return y;
  };
  const std::vector<float> f32 = call(DType::kF32, wb.widened.data());
  const std::vector<float> f16 = call(DType::kF16, wh.bits.data());
  const std::vector<float> bf16 = call(DType::kBF16, wb.bits.data());
  std::vector<float> dot(bf16.size());
  SkinnyMatMulBf16Dot(x.data(), n, in, wb.bits.data(), out, in, nullptr, dot.data(), out);
  ASSERT_NE(dot, bf16);

  EXPECT_STREQ(Bf16MathName(SelectedBf16Math()), "exact");
  SetBf16Math(Bf16Math::kDot);
  EXPECT_STREQ(Bf16MathName(SelectedBf16Math()), "dot");
  EXPECT_EQ(call(DType::kBF16, wb.bits.data()), dot);
  EXPECT_EQ(call(DType::kF32, wb.widened.data()), f32);
  EXPECT_EQ(call(DType::kF16, wh.bits.data()), f16);
  std::vector<float> path(bf16.size());
  SkinnyMatMulWithIsa(SelectedMatMulIsa(), x.data(), n, in, DType::kBF16, wb.bits.data(),
                       out, in, nullptr, path.data(), out);
  EXPECT_EQ(path, bf16);
  for (int threads : {2, 3}) {
    SetComputeThreads(threads);
    std::vector<float> y(dot.size());
    SkinnyMatMulParallel(x.data(), n, in, DType::kBF16, wb.bits.data(), out, in, nullptr,
                         y.data(), out);
    EXPECT_EQ(y, dot) << threads << " threads";
  }
  SetComputeThreads(1);
}

// How far ahead W is prefetched (StreamPrefetch) changes no bit: both settings give the same
// y, with the prefetch targets crossing K blocks and tiles (the last one partial), at one and
// several row blocks. (Q8_0 and Q4_0: matmul_quant_test.cc, against the naive contract.)
TEST(SkinnyMatMulPaths, StreamPrefetchKeepsTheBits) {
  const StreamPrefetch selected = SelectedStreamPrefetch();
  for (DType type : {DType::kF32, DType::kBF16}) {
    for (int64_t in : {300, 1024, 1600}) {
      const int64_t out = 27;
      Rng rng(static_cast<uint64_t>(in) + static_cast<uint64_t>(type));
      const Weights16 w16 = RandomWeights16(rng, DType::kBF16, out * in);
      const void* w = type == DType::kF32 ? static_cast<const void*>(w16.widened.data())
                                           : w16.bits.data();
      for (int64_t n : {1, 4, 9}) {
        const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1.0f, 1.0f);
        std::vector<float> near(static_cast<size_t>(n * out), kGuard), far = near;
        SetStreamPrefetch(StreamPrefetch::kNear);
        SkinnyMatMul(x.data(), n, in, type, w, out, in, nullptr, near.data(), out);
        SetStreamPrefetch(StreamPrefetch::kFar);
        SkinnyMatMul(x.data(), n, in, type, w, out, in, nullptr, far.data(), out);
        ASSERT_EQ(std::count(near.begin(), near.end(), kGuard), 0);
        EXPECT_EQ(0, std::memcmp(near.data(), far.data(), near.size() * 4))
            << DTypeName(type) << " in " << in << " n " << n;
      }
    }
  }
  SetStreamPrefetch(selected);
}

// SkinnyMatMulParallel splits the outputs over the compute pool; every thread count gives the
// single-threaded bits, for every weight type, with partial tiles at the range ends and guards
// around and between the y rows.
TEST(SkinnyMatMulParallel, BitIdenticalAtAnyThreadCount) {
  struct Shape {
    int64_t out, in;
  };
  for (DType type : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const Shape s : {Shape{1, 70000}, Shape{49, 1031}, Shape{517, 517}, Shape{1031, 129},
                          Shape{4099, 17}, Shape{5, 33}}) {
      Rng rng(static_cast<uint64_t>(s.out * 31 + s.in) + static_cast<uint64_t>(type));
      const Weights16 w16 = RandomWeights16(rng, type == DType::kF16 ? type : DType::kBF16,
                                            s.out * s.in);
      const void* w = type == DType::kF32 ? static_cast<const void*>(w16.widened.data())
                                               : w16.bits.data();
      const std::vector<float> bias = rng.UniformVector(static_cast<size_t>(s.out), -1, 1);
      for (int64_t n : {1, 5, 40}) {
        const int64_t x_stride = s.in + 1, y_stride = s.out + 3;
        const Framed x = StridedRows(rng, n, s.in, x_stride, -2.0f, 2.0f);
        Framed want(n * y_stride, kGuard);
        SkinnyMatMul(x.data(), n, x_stride, type, w, s.out, s.in, bias.data(), want.data(),
                     y_stride);
        for (int threads : {1, 2, 3}) {
          SetComputeThreads(threads);
          SkinnyMatMulReserve(n, s.in);
          Framed got(n * y_stride, kGuard);
          SkinnyMatMulParallel(x.data(), n, x_stride, type, w, s.out, s.in, bias.data(),
                               got.data(), y_stride);
          ASSERT_EQ(std::memcmp(got.buf.data(), want.buf.data(), got.buf.size() * sizeof(float)),
                    0)
              << DTypeName(type) << " out " << s.out << " in " << s.in << " n " << n
              << " threads " << threads;
        }
      }
    }
  }
  SetComputeThreads(1);
}

}  // namespace
}  // namespace shardlm
