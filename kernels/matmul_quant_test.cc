// Q8_0 / Q4_0: the formats (kernels/quant.h) and every quantized-matmul kernel against the
// naive reference of the contract, bit for bit (kernels/matmul.h).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "base/half.h"
#include "base/rng.h"
#include "base/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu.h"
#include "kernels/matmul.h"
#include "kernels/matmul_quant_internal.h"
#include "kernels/quant.h"

namespace shardlm {
namespace {

// out rows of `in` random weights quantized to `format`, as packed rows; also the file layout.
struct QuantWeights {
  std::vector<uint8_t> packed;
  std::vector<uint8_t> quants;
  std::vector<uint16_t> scales;
  std::vector<float> f32;  // the unquantized values
};
QuantWeights MakeWeights(DType format, int64_t out, int64_t in, uint64_t seed) {
  Rng rng(seed);
  QuantWeights w;
  w.f32 = rng.UniformVector(static_cast<size_t>(out * in), -1.0f, 1.0f);
  // Some blocks all zero, some with one big outlier: the edge cases of the scale.
  for (int64_t o = 0; o < out; ++o) {
    if (in >= 64 && o % 5 == 1) std::fill_n(w.f32.begin() + o * in + 32, 32, 0.0f);
    if (o % 7 == 2) w.f32[o * in] = -9.0f;
  }
  const int64_t qb = QuantBytes(format, in), row = WeightRowBytes(format, in);
  w.quants.resize(static_cast<size_t>(out * qb));
  w.scales.resize(static_cast<size_t>(out * in / 32));
  w.packed.assign(static_cast<size_t>(out * row), 0xcd);
  for (int64_t o = 0; o < out; ++o) {
    QuantizeRow(format, w.f32.data() + o * in, in, w.quants.data() + o * qb,
                w.scales.data() + o * in / 32);
    PackQuantRow(format, w.quants.data() + o * qb, w.scales.data() + o * in / 32, in,
                 w.packed.data() + o * row);
  }
  return w;
}

// The value of element k of the file layout.
float FileValue(DType format, const QuantWeights& w, int64_t in, int64_t o, int64_t k) {
  const float d = F16ToF32(w.scales[o * in / 32 + k / 32]);
  if (format == DType::kQ8_0) return static_cast<int8_t>(w.quants[o * in + k]) * d;
  const uint8_t pair = w.quants[o * in / 2 + (k / 32) * 16 + k % 16];
  const int q = (k % 32 < 16 ? pair & 0x0f : pair >> 4) - 8;
  return static_cast<float>(q) * d;
}

class QuantFormatTest : public testing::TestWithParam<DType> {};

TEST_P(QuantFormatTest, PackedRowsHoldTheFileValues) {
  const DType format = GetParam();
  for (int64_t in : {32, 64, 480, 512, 544, 1056, 2048}) {
    const QuantWeights w = MakeWeights(format, 3, in, 7 + in);
    std::vector<float> row(static_cast<size_t>(in));
    for (int64_t o = 0; o < 3; ++o) {
      DequantizeRow(format, w.packed.data() + o * WeightRowBytes(format, in), in, row.data());
      for (int64_t k = 0; k < in; ++k) {
        ASSERT_EQ(row[k], FileValue(format, w, in, o, k)) << "in " << in << " o " << o << " k " << k;
      }
    }
  }
}

TEST_P(QuantFormatTest, QuantizationErrorIsWithinHalfAStep) {
  const DType format = GetParam();
  const int64_t in = 1024;
  const QuantWeights w = MakeWeights(format, 4, in, 3);
  for (int64_t o = 0; o < 4; ++o) {
    for (int64_t k = 0; k < in; ++k) {
      const float d = std::fabs(F16ToF32(w.scales[o * in / 32 + k / 32]));
      // Half a step (Q4_0: a whole one at the clipped end, +8·d standing for 7·d), plus the
      // scale's f16 rounding over up to 127 steps.
      const float step = format == DType::kQ4_0 ? d : 0.5f * d;
      const float bound = step + 128.0f * d * 0x1p-11f + 1e-6f;
      ASSERT_LE(std::fabs(FileValue(format, w, in, o, k) - w.f32[o * in + k]), bound)
          << "o " << o << " k " << k;
    }
  }
}

TEST(QuantFormat, Q4_0UsesTheSignedExtremeAsMinusEight) {
  std::vector<float> x(32, 0.5f);
  x[3] = -2.0f;  // the largest magnitude: its quant is 0, i.e. −8·d with d = 0.25
  std::vector<uint8_t> q(16);
  uint16_t scale = 0;
  QuantizeRow(DType::kQ4_0, x.data(), 32, q.data(), &scale);
  EXPECT_EQ(F16ToF32(scale), 0.25f);
  EXPECT_EQ(q[3] & 0x0f, 0);
  EXPECT_EQ(q[0] & 0x0f, 10);  // 0.5 / 0.25 + 8
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantFormatTest, testing::Values(DType::kQ8_0, DType::kQ4_0),
                         [](const testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

struct KernelCase {
  QuantKernel kernel;
  DType format;
};
std::vector<KernelCase> AvailableCases() {
  std::vector<KernelCase> cases;
  for (QuantKernel k : {QuantKernel::kPortable, QuantKernel::kAvx2, QuantKernel::kAvx2Vnni,
                        QuantKernel::kAvx512Vnni}) {
    if (!QuantKernelAvailable(k)) continue;
    for (DType f : {DType::kQ8_0, DType::kQ4_0}) cases.push_back({k, f});
  }
  return cases;
}

class QuantMatMulTest : public testing::TestWithParam<KernelCase> {};

// Bit-exact against the naive reference over shapes with every kind of tail: in below one
// chunk, at chunk and K-block edges, out below and across the tile widths, n across the row
// blocks and super-blocks; strided x and y, with and without bias, several seeds.
TEST_P(QuantMatMulTest, MatchesTheNaiveContractBitForBit) {
  const auto [kernel, format] = GetParam();
  int cases = 0;
  for (uint64_t seed : {1, 2, 3}) {
    for (int64_t in : {32, 96, 512, 544, 1024, 2048, 2080, 4128}) {
      for (int64_t out : {1, 5, 7, 13, 24}) {
        for (int64_t n : {1, 3, 4, 5, 16, 33}) {
          if ((in > 1024 && n > 16) || (seed > 1 && n > 5)) continue;
          const QuantWeights w = MakeWeights(format, out, in, seed * 1000 + in + out);
          Rng rng(seed + 17 * n);
          const int64_t x_stride = in + (n % 2) * 3, y_stride = out + 2;
          std::vector<float> x(static_cast<size_t>(n * x_stride), std::nanf(""));
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t k = 0; k < in; ++k) x[i * x_stride + k] = rng.Normal() * (i % 3 == 0 ? 10.0f : 0.1f);
          }
          if (in >= 64) std::fill_n(x.begin() + 32, 32, 0.0f);  // an all-zero x block
          std::vector<float> bias = rng.UniformVector(static_cast<size_t>(out), -1.0f, 1.0f);
          const float* b = seed % 2 == 1 ? bias.data() : nullptr;
          std::vector<float> got(static_cast<size_t>(n * y_stride), -7.0f), want = got;
          SkinnyMatMulQuantWithKernel(kernel, x.data(), n, x_stride, format, w.packed.data(), out,
                                      in, b, got.data(), y_stride);
          SkinnyMatMulQuantNaive(x.data(), n, x_stride, format, w.packed.data(), out, in, b,
                                 want.data(), y_stride);
          for (size_t i = 0; i < got.size(); ++i) {
            uint32_t g, e;
            std::memcpy(&g, &got[i], 4);
            std::memcpy(&e, &want[i], 4);
            ASSERT_EQ(g, e) << "in " << in << " out " << out << " n " << n << " seed " << seed
                            << " at " << i << ": " << got[i] << " vs " << want[i];
          }
          ++cases;
        }
      }
    }
  }
  EXPECT_GT(cases, 100);
}

// A row's outputs do not depend on the batch around it (the contract, checked directly).
TEST_P(QuantMatMulTest, BatchInvariant) {
  const auto [kernel, format] = GetParam();
  const int64_t in = 1056, out = 29, n = 21;
  const QuantWeights w = MakeWeights(format, out, in, 11);
  Rng rng(5);
  const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -2.0f, 2.0f);
  std::vector<float> batch(static_cast<size_t>(n * out)), alone(static_cast<size_t>(out));
  SkinnyMatMulQuantWithKernel(kernel, x.data(), n, in, format, w.packed.data(), out, in, nullptr,
                              batch.data(), out);
  for (int64_t i = 0; i < n; ++i) {
    SkinnyMatMulQuantWithKernel(kernel, x.data() + i * in, 1, in, format, w.packed.data(), out, in,
                                nullptr, alone.data(), out);
    ASSERT_EQ(0, std::memcmp(alone.data(), batch.data() + i * out, alone.size() * 4)) << "row " << i;
  }
}

// Close to the exact product of the dequantized weights with the unquantized x: the only error
// is x's 8-bit rounding (relative ≤ 1/254 per element) and f32 sums.
TEST_P(QuantMatMulTest, CloseToTheDequantizedProduct) {
  const auto [kernel, format] = GetParam();
  const int64_t in = 2048, out = 16;
  const QuantWeights w = MakeWeights(format, out, in, 21);
  Rng rng(9);
  const std::vector<float> x = rng.UniformVector(static_cast<size_t>(in), -1.0f, 1.0f);
  std::vector<float> y(static_cast<size_t>(out)), row(static_cast<size_t>(in));
  SkinnyMatMulQuantWithKernel(kernel, x.data(), 1, in, format, w.packed.data(), out, in, nullptr,
                              y.data(), out);
  for (int64_t o = 0; o < out; ++o) {
    DequantizeRow(format, w.packed.data() + o * WeightRowBytes(format, in), in, row.data());
    double exact = 0, abs_sum = 0;
    for (int64_t k = 0; k < in; ++k) {
      exact += static_cast<double>(row[k]) * x[k];
      abs_sum += std::fabs(static_cast<double>(row[k]) * x[k]);
    }
    EXPECT_NEAR(y[o], exact, abs_sum / 254.0 + 1e-4) << o;
  }
}

// A non-finite x poisons its own row only; Q8_0 quants of −128 (legal in a file) are exact.
TEST_P(QuantMatMulTest, NonFiniteXAndExtremeQuants) {
  const auto [kernel, format] = GetParam();
  const int64_t in = 96, out = 7, n = 3;
  QuantWeights w = MakeWeights(format, out, in, 4);
  if (format == DType::kQ8_0) {
    std::fill_n(w.quants.begin(), in, static_cast<uint8_t>(0x80));  // row 0: all −128
    PackQuantRow(format, w.quants.data(), w.scales.data(), in, w.packed.data());
  }
  std::vector<float> x(static_cast<size_t>(n * in), 0.25f);
  x[in + 40] = std::numeric_limits<float>::infinity();
  std::vector<float> got(static_cast<size_t>(n * out)), want = got;
  SkinnyMatMulQuantWithKernel(kernel, x.data(), n, in, format, w.packed.data(), out, in, nullptr,
                              got.data(), out);
  SkinnyMatMulQuantNaive(x.data(), n, in, format, w.packed.data(), out, in, nullptr, want.data(), out);
  for (int64_t o = 0; o < out; ++o) {
    EXPECT_TRUE(std::isnan(got[out + o])) << o;
    EXPECT_EQ(got[o], want[o]) << o;
    EXPECT_EQ(got[2 * out + o], want[2 * out + o]) << o;
  }
  if (format == DType::kQ8_0) {
    // x = 0.25 everywhere quantizes to 127 with d = 0.25/127: row 0 is Σ −128·127·d·d_w.
    double expected = 0;
    for (int64_t b = 0; b < in / 32; ++b) expected += -128.0 * 0.25 * F16ToF32(w.scales[b]) * 32;
    EXPECT_NEAR(got[0], expected, 1e-5 * std::fabs(expected));
  }
}

// The SIMD x quantizers write the portable one's bytes: quants in the packed order, scales and
// aux values, zeros past the last block. Rows of every length up to three chunks, with zero
// blocks, blocks that round at exact halves (ties to even), a signed extreme, and non-finite
// values; the buffers start poisoned.
TEST(QuantMatMul, SimdXQuantizationIsThePortableOne) {
  using matmul_internal::QuantizeXRowAvx2;
  using matmul_internal::QuantizeXRowAvx512;
  using matmul_internal::QuantizeXRowPortable;
  using matmul_internal::QxRowBytes;
  struct Path {
    const char* name;
    bool available;
    void (*fn)(const float*, int64_t, DType, uint8_t*);
  };
  const Path paths[] = {{"avx2", Cpu().avx2_fma, &QuantizeXRowAvx2},
                        {"avx512", Cpu().avx512, &QuantizeXRowAvx512}};
  int ran = 0;
  for (const Path& path : paths) {
    if (!path.available) continue;
    ++ran;
    for (uint64_t seed : {1, 2, 3}) {
      Rng rng(seed);
      for (int64_t in : {32, 64, 480, 512, 544, 1024, 1056, 1536}) {
        std::vector<float> x = rng.UniformVector(static_cast<size_t>(in), -3.0f, 3.0f);
        const int64_t nb = in / 32;
        for (int64_t b = 0; b < nb; ++b) {
          float* xb = x.data() + b * 32;
          switch ((b + seed) % 6) {
            case 0:
              std::fill_n(xb, 32, 0.0f);
              break;
            case 1:  // amax 127: every x·id is x, so the halves are ties
              for (int k = 0; k < 32; ++k) xb[k] = static_cast<float>(k % 9) - 4.5f;
              xb[7] = -127.0f;
              break;
            case 2:
              xb[5] = -1e30f;
              break;
            case 3:
              if (seed == 2) xb[31] = std::numeric_limits<float>::quiet_NaN();
              break;
            case 4:
              if (seed == 3) xb[0] = -std::numeric_limits<float>::infinity();
              break;
            default:
              break;
          }
        }
        for (DType format : {DType::kQ8_0, DType::kQ4_0}) {
          const size_t bytes = static_cast<size_t>(QxRowBytes(in));
          std::vector<uint8_t> want(bytes, 0xcd), got(bytes, 0xab);
          QuantizeXRowPortable(x.data(), in, format, want.data());
          path.fn(x.data(), in, format, got.data());
          for (size_t i = 0; i < bytes; ++i) {
            ASSERT_EQ(got[i], want[i]) << path.name << " seed " << seed << " in " << in << " "
                                       << DTypeName(format) << " byte " << i;
          }
        }
      }
    }
  }
  if (ran == 0) GTEST_SKIP() << "no AVX2 or AVX-512 on this CPU";
}

// The threaded entry point splits rows and keeps the bits (the selected kernel).
TEST(QuantMatMul, ParallelKeepsTheBits) {
  for (DType format : {DType::kQ8_0, DType::kQ4_0}) {
    const int64_t in = 1024, out = 301, n = 6;
    const QuantWeights w = MakeWeights(format, out, in, 8);
    Rng rng(2);
    const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1.0f, 1.0f);
    std::vector<float> one(static_cast<size_t>(n * out)), two = one;
    SkinnyMatMul(x.data(), n, in, format, w.packed.data(), out, in, nullptr, one.data(), out);
    SetComputeThreads(2);
    SkinnyMatMulParallel(x.data(), n, in, format, w.packed.data(), out, in, nullptr, two.data(),
                         out);
    SetComputeThreads(1);
    EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * 4)) << DTypeName(format);
  }
}

// How far ahead W is prefetched (StreamPrefetch) changes no bit: both settings against the
// naive contract, with the prefetch targets crossing K blocks and tiles (in of 1, 2 and 3 K
// blocks; out with a partial last tile), at one and several row blocks.
TEST(QuantMatMul, StreamPrefetchKeepsTheBits) {
  const StreamPrefetch selected = SelectedStreamPrefetch();
  for (DType format : {DType::kQ8_0, DType::kQ4_0}) {
    for (int64_t in : {1024, 4096, 4128}) {
      const int64_t out = 27;
      const QuantWeights w = MakeWeights(format, out, in, static_cast<uint64_t>(in));
      for (int64_t n : {1, 4, 9}) {
        Rng rng(static_cast<uint64_t>(n));
        const std::vector<float> x = rng.UniformVector(static_cast<size_t>(n * in), -1.0f, 1.0f);
        std::vector<float> want(static_cast<size_t>(n * out));
        SkinnyMatMulQuantNaive(x.data(), n, in, format, w.packed.data(), out, in, nullptr,
                               want.data(), out);
        for (StreamPrefetch prefetch : {StreamPrefetch::kNear, StreamPrefetch::kFar}) {
          SetStreamPrefetch(prefetch);
          std::vector<float> got(want.size(), -7.0f);
          SkinnyMatMul(x.data(), n, in, format, w.packed.data(), out, in, nullptr, got.data(),
                       out);
          EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4))
              << DTypeName(format) << " in " << in << " n " << n << " prefetch "
              << StreamPrefetchName(prefetch);
        }
      }
    }
  }
  SetStreamPrefetch(selected);
}

INSTANTIATE_TEST_SUITE_P(Kernels, QuantMatMulTest, testing::ValuesIn(AvailableCases()),
                         [](const testing::TestParamInfo<KernelCase>& info) {
                           std::string name = std::string(QuantKernelName(info.param.kernel)) + "_" +
                                              DTypeName(info.param.format);
                           for (char& ch : name) {
                             if (ch == '+') ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace shardlm
