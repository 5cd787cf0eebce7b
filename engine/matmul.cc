#include "engine/matmul.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "base/status.h"
#include "engine/matmul_internal.h"

namespace shardlm {
namespace matmul_internal {
namespace {

// Plain C++ with the structure of the SIMD kernels: 16 partial sums per (i, o), each a rounded
// product followed by an add. The library is compiled with -ffp-contract=off so the compiler
// cannot fuse x·w + a into an FMA in some instantiations and not in others; auto-vectorizing
// the lane loops is harmless (lanes are independent, nothing is reassociated).
struct Portable {
  static constexpr int kLanes = 16;

  template <int kR, int kC, int kCStride>
  static void Tile(const float* x, int64_t x_stride, const float* w, int64_t w_stride,
                   int64_t k_begin, int64_t k_end, float* acc) {
    float a[kR][kC][kLanes];
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        std::copy_n(acc + (r * kCStride + c) * kLanes, kLanes, a[r][c]);
      }
    }
    int64_t k = k_begin;
    for (; k + kLanes <= k_end; k += kLanes) {
      for (int r = 0; r < kR; ++r) {
        for (int c = 0; c < kC; ++c) {
          for (int j = 0; j < kLanes; ++j) a[r][c][j] += x[r * x_stride + k + j] * w[c * w_stride + k + j];
        }
      }
    }
    // Tail: lanes j < k_end - k take one more term; the others are left as they are (which is
    // what adding a 0·0 term would give). Same code in every tile.
    const int tail = static_cast<int>(k_end - k);
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        for (int j = 0; j < tail; ++j) a[r][c][j] += x[r * x_stride + k + j] * w[c * w_stride + k + j];
      }
    }
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        std::copy_n(a[r][c], kLanes, acc + (r * kCStride + c) * kLanes);
      }
    }
  }
};

}  // namespace

void SkinnyPortable(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                    int64_t in, const float* bias, float* y, int64_t y_stride) {
  Drive<Portable, 4, 4>(x, n, x_stride, w, out, in, bias, y, y_stride);
}

}  // namespace matmul_internal

namespace {

MatMulPath DetectBestPath() {
  if (matmul_internal::CpuHasAvx512()) return MatMulPath::kAvx512;
  if (matmul_internal::CpuHasAvx2Fma()) return MatMulPath::kAvx2Fma;
  return MatMulPath::kPortable;
}

}  // namespace

const char* MatMulPathName(MatMulPath path) {
  switch (path) {
    case MatMulPath::kPortable:
      return "portable";
    case MatMulPath::kAvx2Fma:
      return "avx2+fma";
    case MatMulPath::kAvx512:
      return "avx512";
  }
  return "unknown";
}

const char* MatMulPathName() { return MatMulPathName(SelectedMatMulPath()); }

MatMulPath SelectedMatMulPath() {
  static const MatMulPath path = DetectBestPath();
  return path;
}

bool MatMulPathAvailable(MatMulPath path) {
  switch (path) {
    case MatMulPath::kPortable:
      return true;
    case MatMulPath::kAvx2Fma:
      return matmul_internal::CpuHasAvx2Fma();
    case MatMulPath::kAvx512:
      return matmul_internal::CpuHasAvx512();
  }
  return false;
}

std::vector<MatMulPath> AvailableMatMulPaths() {
  std::vector<MatMulPath> paths;
  for (MatMulPath p : {MatMulPath::kPortable, MatMulPath::kAvx2Fma, MatMulPath::kAvx512}) {
    if (MatMulPathAvailable(p)) paths.push_back(p);
  }
  return paths;
}

int MatMulPathLanes(MatMulPath path) { return path == MatMulPath::kAvx2Fma ? 8 : 16; }

void SkinnyMatMulWithPath(MatMulPath path, const float* x, int64_t n, int64_t x_stride,
                          const float* w, int64_t out, int64_t in, const float* bias, float* y,
                          int64_t y_stride) {
  CHECK_GE(n, 0);
  CHECK_GE(out, 0);
  CHECK_GE(in, 0);
  if (n == 0 || out == 0) return;
  CHECK(y != nullptr);
  if (n > 1) {
    CHECK_GE(x_stride, in);
    CHECK_GE(y_stride, out);
  }
  if (in == 0) {  // empty sum: the bias, or zeros
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t o = 0; o < out; ++o) y[i * y_stride + o] = bias != nullptr ? bias[o] : 0.0f;
    }
    return;
  }
  CHECK(x != nullptr && w != nullptr);
  CHECK_MSG(MatMulPathAvailable(path), MatMulPathName(path), " is not supported by this CPU");
  switch (path) {
    case MatMulPath::kPortable:
      matmul_internal::SkinnyPortable(x, n, x_stride, w, out, in, bias, y, y_stride);
      return;
    case MatMulPath::kAvx2Fma:
      matmul_internal::SkinnyAvx2Fma(x, n, x_stride, w, out, in, bias, y, y_stride);
      return;
    case MatMulPath::kAvx512:
      matmul_internal::SkinnyAvx512(x, n, x_stride, w, out, in, bias, y, y_stride);
      return;
  }
}

void SkinnyMatMul(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                  int64_t in, const float* bias, float* y, int64_t y_stride) {
  SkinnyMatMulWithPath(SelectedMatMulPath(), x, n, x_stride, w, out, in, bias, y, y_stride);
}

void SkinnyMatMulNaive(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                       int64_t in, const float* bias, float* y, int64_t y_stride) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias != nullptr ? bias[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) {
        acc += static_cast<double>(x[i * x_stride + k]) * w[o * in + k];
      }
      y[i * y_stride + o] = static_cast<float>(acc);
    }
  }
}

}  // namespace shardlm
