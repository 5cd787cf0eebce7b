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
namespace {

// 16 lanes per zmm; R·C accumulators + C weights + 1 x ≤ 32 registers. K tail: zero-masked
// loads (which never touch memory past the row end), so the tail lanes see fma(0, 0, a) = a
// and the active lanes the same FMA as a full step.
struct Avx512 {
  static constexpr int kLanes = 16;

  template <int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX512 static void Tile(const TileArgs& t) {
    const float* const x = t.x;
    const float* const w = t.w;
    const int64_t xs = t.x_stride, ws = t.w_stride, len = t.len, pf = t.prefetch_offset;
    float* const acc = t.acc;
    __m512 a[kR][kC];
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) a[r][c] = _mm512_load_ps(acc + (r * kCStride + c) * kLanes);
    }
    int turn = t.prefetch_phase + 1;
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) {
      if (--turn == 0) {
        turn = t.prefetch_period;
        if (pf != 0) {
#pragma GCC unroll 8
          for (int c = 0; c < kC; ++c) {
            _mm_prefetch(reinterpret_cast<const char*>(w + c * ws + k + pf), _MM_HINT_T0);
          }
        }
      }
      // The empty asm statements keep each loaded vector in a register: without them GCC
      // folds the loads into the FMAs and loads every x (or w) vector C (or R) times, which
      // makes the kernel load-bound at under half the FMA rate.
      __m512 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        wv[c] = _mm512_loadu_ps(w + c * ws + k);
        asm("" : "+v"(wv[c]));
      }
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        __m512 xv = _mm512_loadu_ps(x + r * xs + k);
        asm("" : "+v"(xv));
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm512_fmadd_ps(xv, wv[c], a[r][c]);
      }
    }
    if (k < len) {
      const __mmask16 m = static_cast<__mmask16>((1u << (len - k)) - 1);
      __m512 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) wv[c] = _mm512_maskz_loadu_ps(m, w + c * ws + k);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + r * xs + k);
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

// 8 lanes per ymm; R·C accumulators + C weights + 1 x ≤ 16 registers. K tail:
// _mm256_maskload_ps, which zeroes (and does not fault on) the masked lanes.
struct Avx2Fma {
  static constexpr int kLanes = 8;

  template <int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX2 static void Tile(const TileArgs& t) {
    const float* const x = t.x;
    const float* const w = t.w;
    const int64_t xs = t.x_stride, ws = t.w_stride, len = t.len, pf = t.prefetch_offset;
    float* const acc = t.acc;
    __m256 a[kR][kC];
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) a[r][c] = _mm256_load_ps(acc + (r * kCStride + c) * kLanes);
    }
    int turn = t.prefetch_phase + 1;
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) {
      // A turn covers one 64-byte line per row: every other 8-float step.
      if ((k & 15) == 0 && --turn == 0) {
        turn = t.prefetch_period;
        if (pf != 0) {
#pragma GCC unroll 8
          for (int c = 0; c < kC; ++c) {
            _mm_prefetch(reinterpret_cast<const char*>(w + c * ws + k + pf), _MM_HINT_T0);
          }
        }
      }
      __m256 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        wv[c] = _mm256_loadu_ps(w + c * ws + k);
        asm("" : "+x"(wv[c]));
      }
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        __m256 xv = _mm256_loadu_ps(x + r * xs + k);
        asm("" : "+x"(xv));
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm256_fmadd_ps(xv, wv[c], a[r][c]);
      }
    }
    if (k < len) {
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(len - k)),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      __m256 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) wv[c] = _mm256_maskload_ps(w + c * ws + k, m);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m256 xv = _mm256_maskload_ps(x + r * xs + k, m);
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
  Drive<Avx512, 4, 6>(x, n, x_stride, w, out, in, bias, y, y_stride);
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
void SkinnyAvx2Fma(const float*, int64_t, int64_t, const float*, int64_t, int64_t, const float*,
                   float*, int64_t) {}
bool CpuHasAvx512() { return false; }
bool CpuHasAvx2Fma() { return false; }
}  // namespace shardlm::matmul_internal

#endif
