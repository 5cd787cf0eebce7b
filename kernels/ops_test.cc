#include "kernels/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <vector>

#include "base/half.h"
#include "base/rng.h"
#include "base/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu.h"

namespace shardlm {
namespace {

constexpr float kEps = std::numeric_limits<float>::epsilon();
constexpr float kGuard = -12345.0f;  // sentinel around outputs: catches out-of-range writes

Linear RandomLinear(Rng& rng, int64_t out, int64_t in, bool bias) {
  Linear w;
  w.out = out;
  w.in = in;
  const std::vector<float> values = rng.UniformVector(static_cast<size_t>(out * in), -1.0f, 1.0f);
  w.w.assign(values.begin(), values.end());
  if (bias) w.b = rng.UniformVector(static_cast<size_t>(out), -1.0f, 1.0f);
  return w;
}

TEST(OpsTest, MatMulMatchesNaiveOnOddShapes) {
  for (uint64_t seed : {1, 2, 3}) {
    for (int64_t n : {1, 2, 5, 16}) {
      for (int64_t in : {1, 7, 64, 131}) {
        for (int64_t out : {1, 3, 33, 128}) {
          for (bool bias : {false, true}) {
            Rng rng(seed * 1000 + n * 100 + in + out);
            const Linear w = RandomLinear(rng, out, in, bias);
            const int64_t x_stride = in + 3, y_stride = out + 2;  // strided rows
            std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * x_stride), -1, 1);
            std::vector<float> fast(static_cast<size_t>(n * y_stride + 1), kGuard);
            std::vector<float> ref(fast.size(), kGuard);
            ApplyLinear(x.data(), n, x_stride, w, fast.data(), y_stride);
            ApplyLinearNaive(x.data(), n, x_stride, w, ref.data(), y_stride);
            // |x|,|w| <= 1: the f32 sum of in products has error <= in·eps·Σ|x·w| <= in²·eps;
            // use the standard sqrt(in)-scaled bound with margin 4 on the max |term| sum.
            const float tol = 4.0f * kEps * in * std::sqrt(static_cast<float>(in)) + 4 * kEps;
            float spread = 0.0f;
            for (int64_t i = 0; i < n; ++i) {
              for (int64_t o = 0; o < y_stride; ++o) {
                const size_t k = static_cast<size_t>(i * y_stride + o);
                if (o >= out) {
                  ASSERT_EQ(fast[k], kGuard) << "write outside the output row";
                  continue;
                }
                ASSERT_NEAR(fast[k], ref[k], tol) << n << "x" << in << "->" << out;
                spread = std::max(spread, std::fabs(ref[k] - ref[0]));
              }
            }
            ASSERT_EQ(fast.back(), kGuard);
            if (n * out > 1) {
              EXPECT_GT(spread, 0.0f) << "inputs do not vary";
            }
          }
        }
      }
    }
  }
}

// A 16-bit Linear gives the bits of the f32 Linear holding its widened weights, reports its
// real size, and matches the naive reference.
TEST(OpsTest, SixteenBitLinearMatchesWidenedF32) {
  for (DType type : {DType::kBF16, DType::kF16}) {
    for (int64_t out : {1, 33, 130}) {
      for (int64_t in : {5, 64, 517}) {
        Rng rng(static_cast<uint64_t>(out * 1000 + in) + (type == DType::kF16));
        const Linear f32 = RandomLinear(rng, out, in, /*bias=*/true);
        Linear half;
        half.out = out;
        half.in = in;
        half.dtype = type;
        half.b = f32.b;
        Linear widened = half;
        for (float v : f32.w) {
          const uint16_t h = type == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
          half.w16.push_back(h);
          widened.w.push_back(type == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h));
        }
        widened.dtype = DType::kF32;
        EXPECT_EQ(half.bytes(), out * in * 2 + out * 4);
        EXPECT_EQ(widened.bytes(), out * in * 4 + out * 4);
        const int64_t n = 7;
        const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1, 1);
        std::vector<float> y16(static_cast<size_t>(n * out + 1), kGuard), y32(y16), ref(y16);
        ApplyLinear(x.data(), n, half, y16.data());
        ApplyLinear(x.data(), n, widened, y32.data());
        ApplyLinearNaive(x.data(), n, in, half, ref.data(), out);
        ASSERT_EQ(y16, y32) << DTypeName(type) << " " << out << "x" << in;
        // The embedding lookup widens one row: exactly the widened f32 row.
        for (int64_t o : {int64_t{0}, out - 1}) {
          std::vector<float> row(static_cast<size_t>(in + 1), kGuard), row32(row);
          half.WidenRow(o, row.data());
          widened.WidenRow(o, row32.data());
          ASSERT_EQ(row, row32);
          ASSERT_EQ(row.back(), kGuard);
          ASSERT_TRUE(std::equal(row.begin(), row.end() - 1, widened.w.begin() + o * in));
        }
        ASSERT_EQ(y16.back(), kGuard);
        for (size_t j = 0; j + 1 < y16.size(); ++j) {
          // |x|, |w| ≤ 1, |b| ≤ 1: the bound of the f32 test above.
          ASSERT_NEAR(y16[j], ref[j], 4.0f * kEps * in * std::sqrt(static_cast<float>(in)) + 4 * kEps);
        }
      }
    }
  }
}

TEST(OpsTest, RmsNormAndSiluMatchNaive) {
  for (uint64_t seed : {4, 5}) {
    for (int64_t dim : {1, 2, 7, 64, 257}) {
      Rng rng(seed + dim);
      const int64_t n = 3, stride = dim + 1;
      std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * stride), -3, 3);
      std::vector<float> gamma = rng.UniformVector(static_cast<size_t>(dim), 0.5f, 1.5f);
      std::vector<float> fast(x.size(), kGuard), ref(x.size(), kGuard);
      RmsNorm(x.data(), n, dim, stride, gamma.data(), 1e-5, fast.data());
      RmsNormNaive(x.data(), n, dim, stride, gamma.data(), 1e-5, ref.data());
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t k = 0; k < stride; ++k) {
          const size_t j = static_cast<size_t>(i * stride + k);
          if (k == dim) {
            EXPECT_EQ(fast[j], kGuard);
            continue;
          }
          // Relative error of a sum of dim squares plus a sqrt and two products.
          EXPECT_NEAR(fast[j], ref[j], (dim + 4) * kEps * std::fabs(ref[j]) + kEps) << dim;
        }
      }
      // In place gives the same as out of place.
      std::vector<float> in_place = x;
      RmsNorm(in_place.data(), n, dim, stride, gamma.data(), 1e-5, in_place.data());
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t k = 0; k < dim; ++k) {
          EXPECT_EQ(in_place[i * stride + k], fast[i * stride + k]);
        }
      }

      std::vector<float> g = rng.UniformVector(static_cast<size_t>(dim), -8, 8);
      std::vector<float> u = rng.UniformVector(static_cast<size_t>(dim), -2, 2);
      std::vector<float> g_ref = g;
      SiluMul(g.data(), u.data(), dim);
      SiluMulNaive(g_ref.data(), u.data(), dim);
      for (int64_t k = 0; k < dim; ++k) EXPECT_NEAR(g[k], g_ref[k], 8 * kEps * (1 + std::fabs(g_ref[k])));
    }
  }
}

// SiluExp against exp in double: within 2 ulp of the rounded exp wherever that is a normal
// float, within one subnormal step where it underflows, and ±inf and NaN as exp gives them.
TEST(OpsTest, SiluExpIsWithinTwoUlpOfExp) {
  const float denorm = std::numeric_limits<float>::denorm_min();
  int checked = 0;
  for (float x = -104.0f; x <= 89.0f; x += 0.0137f) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x)));
    const float got = SiluExp(x);
    if (std::isinf(want)) {
      ASSERT_TRUE(std::isinf(got) && got > 0) << x;
    } else if (want < std::numeric_limits<float>::min()) {
      ASSERT_NEAR(got, want, denorm) << x;
    } else {
      const float ulp = std::nextafter(want, INFINITY) - want;
      ASSERT_NEAR(got, want, 2 * ulp) << x;
    }
    ++checked;
  }
  EXPECT_GT(checked, 14000);
  // Round numbers, the ends of the clamp and beyond.
  for (float x : {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 10.0f, -10.0f, 88.0f, 88.7f, -87.0f, -103.0f}) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x)));
    EXPECT_NEAR(SiluExp(x), want, 2 * (std::nextafter(want, INFINITY) - want) + denorm) << x;
  }
  EXPECT_EQ(SiluExp(0.0f), 1.0f);
  EXPECT_EQ(SiluExp(INFINITY), INFINITY);
  EXPECT_EQ(SiluExp(200.0f), INFINITY);
  EXPECT_EQ(SiluExp(-INFINITY), 0.0f);
  EXPECT_EQ(SiluExp(-200.0f), 0.0f);
  EXPECT_TRUE(std::isnan(SiluExp(NAN)));
}

// SiluExp's last step, y·2^k as two exact-or-once-rounded products, is ldexp's value bit for
// bit: against the same formula with ldexp, over the whole clamped range and densely where the
// result underflows to subnormals or overflows.
TEST(OpsTest, SiluExpScalesAsLdexpDoes) {
  const auto with_ldexp = [](float x) {
    x = std::min(std::max(x, -104.0f), 88.8f);
    const float k = std::nearbyint(x * 1.44269504088896341f);
    float r = std::fma(k, -0.693359375f, x);
    r = std::fma(k, 2.12194440e-4f, r);
    const float kp[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
    float p = kp[0];
    for (int i = 1; i < 6; ++i) p = std::fma(p, r, kp[i]);
    const float y = std::fma(p, r * r, r) + 1.0f;
    return std::ldexp(y, static_cast<int>(k));
  };
  int checked = 0;
  const auto check = [&](float x) {
    const float got = SiluExp(x), want = with_ldexp(x);
    ASSERT_EQ(std::memcmp(&got, &want, sizeof(float)), 0) << x << ": " << got << " vs " << want;
    ++checked;
  };
  for (float x = -110.0f; x <= 95.0f; x += 0.00731f) check(x);
  for (float x = -104.0f; x <= -85.0f; x = std::nextafter(x, 0.0f) + 1e-5f) check(x);
  for (float x = 88.0f; x <= 88.8f; x += 1e-5f) check(x);
  EXPECT_GT(checked, 1000000);
}

// Values for the SiLU tests: ordinary ones, large ones (exp over- and underflows) and the
// non-finite ones.
std::vector<float> SiluInputs(Rng& rng, int64_t count) {
  std::vector<float> g = rng.UniformVector(static_cast<size_t>(count), -12, 12);
  const float special[] = {0.0f, -0.0f, 95.0f, -95.0f, 150.0f, -150.0f, 1e30f, -1e30f,
                           INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f};
  for (size_t i = 0; i < g.size(); i += 7) g[i] = special[(i / 7) % std::size(special)];
  return g;
}

// SiluMul's SIMD paths that this CPU runs (ops.h), by name.
struct SiluPath {
  const char* name;
  void (*fn)(float*, const float*, int64_t);
};
std::vector<SiluPath> SimdSiluPaths() {
  std::vector<SiluPath> paths;
  if (Cpu().avx512) paths.push_back({"avx512", &SiluMulAvx512});
  if (Cpu().avx2_fma) paths.push_back({"avx2", &SiluMulAvx2});
  return paths;
}

// The AVX-512 and AVX2 paths give the portable path's bits at every length (their masked
// tails included), and all follow SiluMulNaive.
TEST(OpsTest, SiluMulPathsGiveTheSameBitsAndFollowNaive) {
  for (int64_t count : {0, 1, 5, 15, 16, 17, 31, 33, 64, 100, 1000}) {
    Rng rng(300 + count);
    const std::vector<float> g = SiluInputs(rng, count);
    const std::vector<float> u = rng.UniformVector(static_cast<size_t>(count), -2, 2);
    std::vector<float> portable = g, ref = g;
    portable.push_back(kGuard);
    SiluMulPortable(portable.data(), u.data(), count);
    SiluMulNaive(ref.data(), u.data(), count);
    for (int64_t i = 0; i < count; ++i) {
      const float want = ref[i], got = portable[i];
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(got)) << g[i];
      } else if (std::isinf(want)) {
        EXPECT_EQ(got, want) << g[i] << " · " << u[i];
      } else {
        EXPECT_NEAR(got, want, 8 * kEps * (1 + std::fabs(want))) << g[i] << " · " << u[i];
      }
    }
    EXPECT_EQ(portable[count], kGuard);
    for (const SiluPath& path : SimdSiluPaths()) {
      std::vector<float> fast = g;
      fast.push_back(kGuard);
      path.fn(fast.data(), u.data(), count);
      for (int64_t i = 0; i <= count; ++i) {
        if (std::isnan(portable[i])) {
          EXPECT_TRUE(std::isnan(fast[i])) << path.name << " " << i;
        } else {
          EXPECT_EQ(std::bit_cast<uint32_t>(fast[i]), std::bit_cast<uint32_t>(portable[i]))
              << path.name << " element " << i << " of " << count << ": " << g[i];
        }
      }
    }
  }
}

// Densely where exp(−g) is subnormal or overflows (SiluExp's two-product scaling), and across
// [−20, 20]: the SIMD paths give the portable path's bits.
TEST(OpsTest, SiluMulPathsAgreeWhereExpUnderflowsAndOverflows) {
  std::vector<float> g;
  for (float v = 80.0f; v < 106.0f; v += 0.00037f) g.push_back(v);
  for (float v = -91.0f; v < -85.0f; v += 0.00041f) g.push_back(v);
  for (float v = -20.0f; v < 20.0f; v += 0.0013f) g.push_back(v);
  const int64_t count = static_cast<int64_t>(g.size());
  const std::vector<float> u(g.size(), 1.5f);
  std::vector<float> portable = g;
  SiluMulPortable(portable.data(), u.data(), count);
  for (const SiluPath& path : SimdSiluPaths()) {
    std::vector<float> fast = g;
    path.fn(fast.data(), u.data(), count);
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(fast[i]), std::bit_cast<uint32_t>(portable[i]))
          << path.name << " g " << g[i];
    }
  }
}

// RmsNorm and SiluMul split their rows or elements over the compute pool once there are
// enough of them: every thread count gives the bits of one thread, at sizes below, at and
// across the split threshold (and in place for RmsNorm).
TEST(OpsTest, RmsNormAndSiluKeepBitsAtAnyThreadCount) {
  struct Shape {
    int64_t n, dim;
  };
  for (const Shape& shape : {Shape{1, 64}, Shape{3, 2048}, Shape{16, 1024}, Shape{17, 4095}}) {
    Rng rng(11 + shape.n);
    const int64_t n = shape.n, dim = shape.dim, stride = dim + 3;
    const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * stride), -3, 3);
    const std::vector<float> gamma = rng.UniformVector(static_cast<size_t>(dim), 0.5f, 1.5f);
    const std::vector<float> g0 = rng.UniformVector(static_cast<size_t>(n * dim), -8, 8);
    const std::vector<float> u = rng.UniformVector(static_cast<size_t>(n * dim), -2, 2);
    std::vector<float> norm_one, silu_one;
    for (const int threads : {1, 2, 3}) {
      SetComputeThreads(threads);
      std::vector<float> norm(x.size(), kGuard);
      RmsNorm(x.data(), n, dim, stride, gamma.data(), 1e-5, norm.data());
      std::vector<float> in_place = x;
      RmsNorm(in_place.data(), n, dim, stride, gamma.data(), 1e-5, in_place.data());
      std::vector<float> silu = g0;
      SiluMul(silu.data(), u.data(), n * dim);
      if (threads == 1) {
        norm_one = norm;
        silu_one = silu;
      }
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t k = 0; k < stride; ++k) {
          const size_t j = static_cast<size_t>(i * stride + k);
          ASSERT_EQ(norm[j], norm_one[j]) << threads << " threads, row " << i << ", " << k;
          if (k < dim) {
            ASSERT_EQ(in_place[j], norm_one[j]) << threads << " threads";
          }
        }
      }
      ASSERT_EQ(silu, silu_one) << threads << " threads, " << n << " × " << dim;
    }
  }
  SetComputeThreads(1);
}

}  // namespace
}  // namespace shardlm
