#include "engine/matmul.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
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
  static void Tile(const TileArgs& t) {
    const float* const x = t.x;
    const float* const w = t.w;
    const int64_t xs = t.x_stride, ws = t.w_stride, len = t.len, pf = t.prefetch_offset;
    float a[kR][kC][kLanes];
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        std::copy_n(t.acc + (r * kCStride + c) * kLanes, kLanes, a[r][c]);
      }
    }
    int turn = t.prefetch_phase + 1;
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) {
      if (--turn == 0) {
        turn = t.prefetch_period;
        if (pf != 0) {
          for (int c = 0; c < kC; ++c) __builtin_prefetch(w + c * ws + k + pf);
        }
      }
      for (int r = 0; r < kR; ++r) {
        for (int c = 0; c < kC; ++c) {
          for (int j = 0; j < kLanes; ++j) a[r][c][j] += x[r * xs + k + j] * w[c * ws + k + j];
        }
      }
    }
    // Tail: lanes j < len - k take one more term; the others are left as they are (which is
    // what adding a 0·0 term would give). Same code in every tile.
    const int tail = static_cast<int>(len - k);
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        for (int j = 0; j < tail; ++j) a[r][c][j] += x[r * xs + k + j] * w[c * ws + k + j];
      }
    }
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        std::copy_n(a[r][c], kLanes, t.acc + (r * kCStride + c) * kLanes);
      }
    }
  }
};

}  // namespace

float* Scratch(int64_t floats) {
  struct AlignedDelete {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local std::unique_ptr<float[], AlignedDelete> buffer;
  thread_local int64_t capacity = 0;
  if (floats > capacity) {
    buffer.reset(static_cast<float*>(
        ::operator new[](static_cast<size_t>(floats) * sizeof(float), std::align_val_t{64})));
    capacity = floats;
  }
  return buffer.get();
}

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

void SkinnyMatMulReserve(int64_t max_n, int64_t max_in) {
  CHECK_GE(max_n, 0);
  CHECK_GE(max_in, 0);
  using matmul_internal::kKBlock;
  matmul_internal::Scratch(max_n * ((max_in + kKBlock - 1) / kKBlock) * kKBlock);
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
