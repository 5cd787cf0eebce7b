// AVX-512 and AVX2+FMA micro-kernels for engine/matmul.h.
//
// Each kernel is compiled with a function-level target attribute, not the global -march, so
// the binary runs on any x86-64 and uses these only when CPUID says so. Only intrinsics and
// plain arithmetic appear inside the attributed functions: an inline std:: function compiled
// here with AVX-512 enabled could otherwise be picked by the linker for generic callers.
#include <cstdint>

#include "engine/matmul_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define SHARDLM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SHARDLM_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace shardlm::matmul_internal {
int64_t g_pf = 0;
int64_t g_kb = 512;
int g_shape = 0;
namespace {
constexpr bool kPin = true;
constexpr bool kPinX = true;

// 16 lanes per zmm. K tail: zero-masked loads (which never touch memory past the row end), so
// the tail lanes see fma(0, 0, acc) = acc and the active lanes the same FMA as a full step.
struct Avx512 {
  static constexpr int kLanes = 16;

  template <int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX512 static void Tile(const float* x, int64_t x_stride, const float* w,
                                         int64_t w_stride, int64_t k_begin, int64_t k_end,
                                         float* acc) {
    __m512 a[kR][kC];
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) a[r][c] = _mm512_load_ps(acc + (r * kCStride + c) * kLanes);
    }
    int64_t k = k_begin;
    for (; k + kLanes <= k_end; k += kLanes) {
      __m512 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        wv[c] = _mm512_loadu_ps(w + c * w_stride + k);
        if (kPin) asm("" : "+v"(wv[c]));
        if (g_pf > 0) _mm_prefetch(reinterpret_cast<const char*>(w + c * w_stride + k + g_pf), _MM_HINT_T0);
      }
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        __m512 xv = _mm512_loadu_ps(x + r * x_stride + k);
        if (kPinX) asm("" : "+v"(xv));
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm512_fmadd_ps(xv, wv[c], a[r][c]);
      }
    }
    if (k < k_end) {
      const __mmask16 m = static_cast<__mmask16>((1u << (k_end - k)) - 1);
      __m512 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) wv[c] = _mm512_maskz_loadu_ps(m, w + c * w_stride + k);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + r * x_stride + k);
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm512_fmadd_ps(xv, wv[c], a[r][c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) _mm512_store_ps(acc + (r * kCStride + c) * kLanes, a[r][c]);
    }
  }
};

// 8 lanes per ymm; 16 ymm registers bound the tile (R·C accumulators + C weights + 1 x).
// K tail: _mm256_maskload_ps, which zeroes (and does not fault on) the masked lanes.
struct Avx2Fma {
  static constexpr int kLanes = 8;

  template <int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX2 static void Tile(const float* x, int64_t x_stride, const float* w,
                                       int64_t w_stride, int64_t k_begin, int64_t k_end,
                                       float* acc) {
    __m256 a[kR][kC];
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) a[r][c] = _mm256_load_ps(acc + (r * kCStride + c) * kLanes);
    }
    int64_t k = k_begin;
    for (; k + kLanes <= k_end; k += kLanes) {
      __m256 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) wv[c] = _mm256_loadu_ps(w + c * w_stride + k);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m256 xv = _mm256_loadu_ps(x + r * x_stride + k);
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm256_fmadd_ps(xv, wv[c], a[r][c]);
      }
    }
    if (k < k_end) {
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k_end - k)),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      __m256 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) wv[c] = _mm256_maskload_ps(w + c * w_stride + k, m);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m256 xv = _mm256_maskload_ps(x + r * x_stride + k, m);
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm256_fmadd_ps(xv, wv[c], a[r][c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) _mm256_store_ps(acc + (r * kCStride + c) * kLanes, a[r][c]);
    }
  }
};

}  // namespace

void SkinnyAvx512(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                  int64_t in, const float* bias, float* y, int64_t y_stride) {
  switch (g_shape) {
    case 0: Drive<Avx512, 4, 4>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 1: Drive<Avx512, 1, 8>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 2: Drive<Avx512, 4, 6>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 3: Drive<Avx512, 8, 3>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 4: Drive<Avx512, 2, 8>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 5: Drive<Avx512, 1, 4>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 6: Drive<Avx512, 2, 4>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 7: Drive<Avx512, 4, 5>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
    case 8: Drive<Avx512, 1, 16>(x, n, x_stride, w, out, in, bias, y, y_stride); break;
  }
}

void SkinnyAvx2Fma(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                   int64_t in, const float* bias, float* y, int64_t y_stride) {
  Drive<Avx2Fma, 2, 4>(x, n, x_stride, w, out, in, bias, y, y_stride);
}

bool CpuHasAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

bool CpuHasAvx2Fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace shardlm::matmul_internal

#else  // not x86: only the portable path exists.

namespace shardlm::matmul_internal {
void SkinnyAvx512(const float*, int64_t, int64_t, const float*, int64_t, int64_t, const float*,
                  float*, int64_t) {}
void SkinnyAvx2Fma(const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                   const float*, float*, int64_t) {}
bool CpuHasAvx512() { return false; }
bool CpuHasAvx2Fma() { return false; }
}  // namespace shardlm::matmul_internal

#endif
