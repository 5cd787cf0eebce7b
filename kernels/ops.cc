#include "kernels/ops.h"

#include <algorithm>
#include <cmath>

#include "base/half.h"
#include "base/status.h"
#include "base/thread_pool.h"
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

void SiluMul(float* gate, const float* up, int64_t count) {
  // Elementwise: any split over the compute pool gives the same bits.
  ParallelFor(count, kMinParallelElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float g = gate[i];
      gate[i] = g / (1.0f + std::exp(-g)) * up[i];
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
