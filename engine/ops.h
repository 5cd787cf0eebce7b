// Dense ops of the layer loop, each with a naive reference for tests.
#ifndef SHARDLM_ENGINE_OPS_H_
#define SHARDLM_ENGINE_OPS_H_

#include <cstdint>
#include <vector>

namespace shardlm {

// A linear layer's local shard: y[n, out] = x[n, in] · Wᵀ (+ b).
struct Linear {
  int64_t out = 0;
  int64_t in = 0;
  std::vector<float> w;  // [out, in]
  std::vector<float> b;  // [out], or empty when the layer has no bias
  int64_t bytes() const { return static_cast<int64_t>((w.size() + b.size()) * sizeof(float)); }
};

// y[n, out] = x[n, in] · Wᵀ + b. x rows are `x_stride` floats apart, y rows `y_stride`.
// Batch-invariant (engine/matmul.h): row i's result is bit-identical whatever else is
// in the batch, so a request's output does not depend on how it was batched.
void MatMul(const float* x, int64_t n, int64_t x_stride, const Linear& w, float* y,
            int64_t y_stride);
inline void MatMul(const float* x, int64_t n, const Linear& w, float* y) {
  MatMul(x, n, w.in, w, y, w.out);
}
// Reference: plain loops with double accumulation.
void MatMulNaive(const float* x, int64_t n, int64_t x_stride, const Linear& w, float* y,
                 int64_t y_stride);

// RMSNorm of `n` rows of `dim` floats, `stride` apart: y = γ ⊙ x / sqrt(mean(x²) + eps).
// In place is allowed (y == x).
void RmsNorm(const float* x, int64_t n, int64_t dim, int64_t stride, const float* gamma,
             double eps, float* y);
void RmsNormNaive(const float* x, int64_t n, int64_t dim, int64_t stride, const float* gamma,
                  double eps, float* y);

// gate[i] = silu(gate[i]) · up[i] for `count` values.
void SiluMul(float* gate, const float* up, int64_t count);
void SiluMulNaive(float* gate, const float* up, int64_t count);

// Limits OpenBLAS to `threads` threads (ranks usually share the cores).
void SetBlasThreads(int threads);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_OPS_H_
