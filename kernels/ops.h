// Dense ops of the layer loop, each with a naive reference for tests.
#ifndef SHARDLM_KERNELS_OPS_H_
#define SHARDLM_KERNELS_OPS_H_

#include <cstdint>
#include <vector>

#include "base/weight_alloc.h"
#include "kernels/matmul.h"

namespace shardlm {

// A linear layer's local shard: y[n, out] = x[n, in] · Wᵀ (+ b).
// W is kept in the checkpoint's format: f32 in `w`, bf16/f16 bit patterns in `w16` (decode
// is bound by reading W, so 16-bit weights are widened in registers, not in memory), or Q8_0 /
// Q4_0 packed rows in `wq` (kernels/quant.h). Exactly one of the three is non-empty, as `dtype`
// says. The bias is always f32.
struct Linear {
  int64_t out = 0;
  int64_t in = 0;
  DType dtype = DType::kF32;
  // In cache-line-aligned, huge-page-advised buffers (base/weight_alloc.h).
  WeightVector<float> w;        // [out, in] when dtype == kF32, else empty
  WeightVector<uint16_t> w16;   // [out, in] when dtype is kBF16 or kF16, else empty
  WeightVector<uint8_t> wq;     // out packed rows when dtype is kQ8_0 or kQ4_0, else empty
  std::vector<float> b;       // [out], or empty when the layer has no bias

  // The stored weights, as SkinnyMatMul takes them with `dtype`.
  const void* data() const {
    if (dtype == DType::kF32) return w.data();
    return IsBlockQuantized(dtype) ? static_cast<const void*>(wq.data()) : w16.data();
  }
  // Row o of the stored weights (WeightRowBytes(dtype, in) bytes).
  const void* row_data(int64_t o) const {
    return static_cast<const char*>(data()) + o * WeightRowBytes(dtype, in);
  }
  // W[o][k] widened (or dequantized) to f32, for references and tests.
  float Weight(int64_t o, int64_t k) const;
  // Row o widened (or dequantized) to f32 into row[0, in): an embedding lookup.
  void WidenRow(int64_t o, float* row) const;
  // Resident bytes: what a decode step reads.
  int64_t bytes() const {
    return static_cast<int64_t>(w.size() * sizeof(float) + w16.size() * sizeof(uint16_t) +
                                wq.size() + b.size() * sizeof(float));
  }
};

// y[n, out] = x[n, in] · Wᵀ + b. x rows are `x_stride` floats apart, y rows `y_stride`.
// Batch-invariant (kernels/matmul.h): row i's result is bit-identical whatever else is
// in the batch, so a request's output does not depend on how it was batched. The outputs are
// split over the compute pool (SkinnyMatMulParallel), with the same bits at any --threads.
void ApplyLinear(const float* x, int64_t n, int64_t x_stride, const Linear& w, float* y,
            int64_t y_stride);
inline void ApplyLinear(const float* x, int64_t n, const Linear& w, float* y) {
  ApplyLinear(x, n, w.in, w, y, w.out);
}
// Reference: plain loops with double accumulation.
void ApplyLinearNaive(const float* x, int64_t n, int64_t x_stride, const Linear& w, float* y,
                 int64_t y_stride);

// RMSNorm of `n` rows of `dim` floats, `stride` apart: y = γ ⊙ x / sqrt(mean(x²) + eps).
// Rows are split over the compute pool when there are enough of them (same bits).
// In place is allowed (y == x).
void RmsNorm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* gamma,
             double eps, float* y);
void RmsNormNaive(const float* x, int64_t n, int64_t dim, int64_t stride, const float* gamma,
                  double eps, float* y);

// gate[i] = silu(gate[i]) · up[i] for `count` values, split over the compute pool when
// there are enough (same bits).
// silu(g) = g / (1 + exp(−g)) with exp as SiluExp below, in f32.
void SiluMul(float* gate, const float* up, int64_t count);
void SiluMulNaive(float* gate, const float* up, int64_t count);  // in double, with std::exp

// SiluMul's parts, for tests: its f32 exp (about 1 ulp from std::exp; ±inf and NaN as exp
// gives them), and its three paths, which give the same bits. SiluMulAvx512 only when
// Cpu().avx512, SiluMulAvx2 only when Cpu().avx2_fma.
float SiluExp(float x);
void SiluMulPortable(float* gate, const float* up, int64_t count);
void SiluMulAvx512(float* gate, const float* up, int64_t count);
void SiluMulAvx2(float* gate, const float* up, int64_t count);

}  // namespace shardlm

#endif  // SHARDLM_KERNELS_OPS_H_
