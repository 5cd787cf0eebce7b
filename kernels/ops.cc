#include "kernels/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "base/half.h"
#include "base/status.h"
#include "base/thread_pool.h"
#include "kernels/cpu.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"

namespace shardlm {

float Linear::Weight(int64_t o, int64_t k) const {
  if (IsBlockQuantized(dtype)) {
    const auto* packed = static_cast<const uint8_t*>(row_data(o));
    return static_cast<float>(QuantAt(dtype, packed, in, k)) *
           F16ToF32(ScaleAt(packed, dtype, in, k / kQuantBlock));
  }
  return ElementToF32(dtype, data(), o * in + k);
}

void Linear::WidenRow(int64_t o, float* row) const {
  CHECK(o >= 0 && o < out);
  if (IsBlockQuantized(dtype)) {
    DequantizeRow(dtype, static_cast<const uint8_t*>(row_data(o)), in, row);
    return;
  }
  if (dtype == DType::kF32) {
    std::copy_n(w.data() + o * in, in, row);
    return;
  }
  for (int64_t k = 0; k < in; ++k) row[k] = ElementToF32(dtype, w16.data(), o * in + k);
}

void ApplyLinear(const float* x, int64_t n, int64_t x_stride, const Linear& w, float* y,
                 int64_t y_stride) {
  if (IsBlockQuantized(w.dtype)) {
    CHECK_EQ(static_cast<int64_t>(w.wq.size()), w.out * WeightRowBytes(w.dtype, w.in));
    CHECK(w.w.empty() && w.w16.empty());
  } else {
    const bool f32 = w.dtype == DType::kF32;
    CHECK_EQ(static_cast<int64_t>(f32 ? w.w.size() : w.w16.size()), w.out * w.in);
    CHECK(f32 ? w.w16.empty() : w.w.empty());
    CHECK(w.wq.empty());
  }
  CHECK(w.b.empty() || static_cast<int64_t>(w.b.size()) == w.out);
  // The batch-invariant kernel: a row's result never depends on the rest of the batch, nor
  // on the number of compute threads the outputs are split over.
  SkinnyMatMulParallel(x, n, x_stride, w.dtype, w.data(), w.out, w.in,
                       w.b.empty() ? nullptr : w.b.data(), y, y_stride);
}

void ApplyLinearNaive(const float* x, int64_t n, int64_t x_stride, const Linear& w, float* y,
                      int64_t y_stride) {
  SkinnyMatMulNaive(x, n, x_stride, w.dtype, w.data(), w.out, w.in,
                    w.b.empty() ? nullptr : w.b.data(), y, y_stride);
}

// Elements below which an elementwise op runs on the calling thread: waking the pool costs a
// few microseconds, about what this many elements of RmsNorm or SiluMul take.
constexpr int64_t kMinParallelElements = 8192;

void RmsNorm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* gamma, double eps,
             float* y) {
  // Rows are independent, so splitting them over the compute pool changes no bit.
  const int64_t min_rows = std::max<int64_t>(1, kMinParallelElements / std::max<int64_t>(dim, 1));
  ParallelFor(n, min_rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = x + i * stride;
      float* yi = y + i * stride;
      float sum_sq = 0.0f;
      for (int64_t k = 0; k < dim; ++k) sum_sq += xi[k] * xi[k];
      const float inv = static_cast<float>(1.0 / std::sqrt(sum_sq / dim + eps));
      for (int64_t k = 0; k < dim; ++k) yi[k] = gamma[k] * (xi[k] * inv);
    }
  });
}

void RmsNormNaive(const float* x, int64_t n, int64_t dim, int64_t stride, const float* gamma,
                  double eps, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    double sum_sq = 0.0;
    for (int64_t k = 0; k < dim; ++k)
      sum_sq += static_cast<double>(x[i * stride + k]) * x[i * stride + k];
    const double inv = 1.0 / std::sqrt(sum_sq / dim + eps);
    for (int64_t k = 0; k < dim; ++k) {
      y[i * stride + k] = static_cast<float>(gamma[k] * (x[i * stride + k] * inv));
    }
  }
}

// SiluExp: exp(x) in f32 as Cephes' expf computes it, the same operations in the scalar and
// the AVX-512 forms, so both give the same bits (kernels/ops_test.cc). x is clamped to
// [-104, 88.8] (NaN passes), k = x·log2(e) rounded to nearest even, r = x − k·ln 2 in two
// FMAs (ln 2 split into an exact high part and a low part), exp(r) ≈ 1 + r + r²·P(r) with a
// degree-5 P in Horner's form by FMAs, and the result is scaled by 2^k (exactly, or rounded
// once where it underflows; inf past 88.72). About 1 ulp from exp over the range.
namespace silu_exp {
constexpr float kLo = -104.0f, kHi = 88.8f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
}  // namespace silu_exp

float SiluExp(float x) {
  using namespace silu_exp;
  x = std::min(std::max(x, kLo), kHi);  // a NaN x stays NaN
  const float k = std::nearbyint(x * kLog2e);
  float r = std::fma(k, -kLn2Hi, x);
  r = std::fma(k, -kLn2Lo, r);
  float p = kP[0];
  for (int i = 1; i < 6; ++i) p = std::fma(p, r, kP[i]);
  const float y = std::fma(p, r * r, r) + 1.0f;
  if (std::isnan(k)) return k;
  // y·2^k as ldexp gives it, without its library call (which took three quarters of SiLU's
  // time where no AVX-512 kernel runs): k ∈ [−150, 128] is split into halves k1 ≤ k2, both
  // powers normal floats; y·2^k1 is exact (y ∈ [0.7, 1.5], so it is normal), and the second
  // product rounds once, to the correctly rounded y·2^k, or overflows, as ldexp does.
  const int ki = static_cast<int>(k), k1 = ki >> 1, k2 = ki - k1;
  return y * std::bit_cast<float>(static_cast<uint32_t>(k1 + 127) << 23) *
         std::bit_cast<float>(static_cast<uint32_t>(k2 + 127) << 23);
}

void SiluMulPortable(float* gate, const float* up, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + SiluExp(-g)) * up[i];
  }
}

#if defined(__x86_64__)
// GCC 12's unmasked AVX-512 intrinsics pass an "undefined" source vector that trips
// -Wmaybe-uninitialized once inlined (as in matmul_quant_x86.cc).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// 16 at a time; the last < 16 with masked loads and stores, so every element gets the same
// operations wherever it falls.
__attribute__((target("avx512f"))) void SiluMulAvx512(float* gate, const float* up,
                                                      int64_t count) {
  using namespace silu_exp;
  const __m512 lo = _mm512_set1_ps(kLo), hi = _mm512_set1_ps(kHi);
  const __m512 one = _mm512_set1_ps(1.0f), log2e = _mm512_set1_ps(kLog2e);
  const __m512 neg_ln2_hi = _mm512_set1_ps(-kLn2Hi), neg_ln2_lo = _mm512_set1_ps(-kLn2Lo);
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t i = 0; i < count; i += 16) {
    const int64_t m = std::min<int64_t>(16, count - i);
    const __mmask16 mask = static_cast<__mmask16>((1u << m) - 1);
    const __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(mask, up + i);
    // max/min return their second operand when either is NaN: a NaN −g passes.
    // The sign flip as an integer xor: _mm512_xor_ps needs AVX512DQ, which this target lacks.
    const __m512 neg_g =
        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(g), _mm512_castps_si512(sign)));
    const __m512 x = _mm512_min_ps(hi, _mm512_max_ps(lo, neg_g));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(k, neg_ln2_hi, x);
    r = _mm512_fmadd_ps(k, neg_ln2_lo, r);
    __m512 p = _mm512_set1_ps(kP[0]);
    for (int j = 1; j < 6; ++j) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP[j]));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), one);
    const __m512 e = _mm512_scalef_ps(y, k);
    _mm512_mask_storeu_ps(gate + i, mask,
                          _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u));
  }
}
#pragma GCC diagnostic pop

// 8 at a time, SiluExp's operations (its 2^k as its two products); the last < 8 with masked
// loads and stores.
__attribute__((target("avx2,fma"))) void SiluMulAvx2(float* gate, const float* up, int64_t count) {
  using namespace silu_exp;
  const __m256 lo = _mm256_set1_ps(kLo), hi = _mm256_set1_ps(kHi);
  const __m256 one = _mm256_set1_ps(1.0f), log2e = _mm256_set1_ps(kLog2e);
  const __m256 neg_ln2_hi = _mm256_set1_ps(-kLn2Hi), neg_ln2_lo = _mm256_set1_ps(-kLn2Lo);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t i = 0; i < count; i += 8) {
    const __m256i mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(static_cast<int>(std::min<int64_t>(8, count - i))), lane);
    const __m256 g = _mm256_maskload_ps(gate + i, mask);
    const __m256 u = _mm256_maskload_ps(up + i, mask);
    // max/min return their second operand when either is NaN: a NaN −g passes.
    const __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_xor_ps(g, sign)));
    const __m256 k =
        _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(k, neg_ln2_hi, x);
    r = _mm256_fmadd_ps(k, neg_ln2_lo, r);
    __m256 p = _mm256_set1_ps(kP[0]);
    for (int j = 1; j < 6; ++j) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP[j]));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), one);
    // k ∈ [−150, 128] (a NaN k gives garbage powers, but y is NaN then): k1 = ⌊k/2⌋, k2 = k − k1.
    const __m256i ki = _mm256_cvtps_epi32(k);
    const __m256i k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
    const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
    const __m256 e = _mm256_mul_ps(_mm256_mul_ps(y, f1), f2);
    _mm256_maskstore_ps(gate + i, mask, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u));
  }
}
#else
void SiluMulAvx512(float* gate, const float* up, int64_t count) {
  SiluMulPortable(gate, up, count);
}
void SiluMulAvx2(float* gate, const float* up, int64_t count) { SiluMulPortable(gate, up, count); }
#endif

void SiluMul(float* gate, const float* up, int64_t count) {
  // Elementwise: any split over the compute pool gives the same bits, and every path gives
  // the same bits. With libm's expf in a scalar loop it took about 5% of a Q8_0 prefill.
  const bool avx512 = Cpu().avx512, avx2 = Cpu().avx2_fma;
  ParallelFor(count, kMinParallelElements, [&](int64_t begin, int64_t end) {
    if (avx512) {
      SiluMulAvx512(gate + begin, up + begin, end - begin);
    } else if (avx2) {
      SiluMulAvx2(gate + begin, up + begin, end - begin);
    } else {
      SiluMulPortable(gate + begin, up + begin, end - begin);
    }
  });
}

void SiluMulNaive(float* gate, const float* up, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const double g = gate[i];
    gate[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

}  // namespace shardlm
