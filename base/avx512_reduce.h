// Lane sums of 16 AVX-512 vectors at once, for kernels that reduce many dot-product
// accumulators (kernels/matmul_x86.cc, attention/decode_kernels_x86.cc).
//
// Each sum is the fixed pairwise tree those kernels use one vector at a time: lane j +=
// lane j + half for half = 8, 4, 2, 1. The shuffles only pair lanes across registers, and
// x + y = y + x exactly, so the results are bit-identical to the one-vector tree (tested in
// kernels/matmul_test.cc against matmul_internal::ReduceLanes).
//
// Only for code compiled with (or called from functions with) the AVX-512F target.
#ifndef SHARDLM_BASE_AVX512_REDUCE_H_
#define SHARDLM_BASE_AVX512_REDUCE_H_

#if defined(__x86_64__)
#include <immintrin.h>

namespace shardlm {

// Element i of the result is the tree sum of v[i]'s 16 lanes.
__attribute__((target("avx512f"))) inline __m512 ReduceAdd16x16(const __m512 (&v)[16]) {
  constexpr __mmask16 kAll = 0xffff;  // zero-masking forms: GCC 12's plain ones warn
  // half = 8: v[2p], v[2p + 1] → [lanes 0..7 of the tree of 2p | of 2p + 1].
  __m512 b[8];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p) {
    b[p] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, v[2 * p], v[2 * p + 1], 0x44),
                         _mm512_maskz_shuffle_f32x4(kAll, v[2 * p], v[2 * p + 1], 0xee));
  }
  // half = 4: 128-bit lane k of c[q] holds the 4 partial sums of vector 4q + k.
  __m512 c[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    c[q] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, b[2 * q], b[2 * q + 1], 0x88),
                         _mm512_maskz_shuffle_f32x4(kAll, b[2 * q], b[2 * q + 1], 0xdd));
  }
  // half = 2: 128-bit lane k of d[s] holds 2 partial sums of vectors 8s + k and 8s + 4 + k.
  __m512 d[2];
#pragma GCC unroll 2
  for (int s = 0; s < 2; ++s) {
    d[s] = _mm512_add_ps(_mm512_maskz_shuffle_ps(kAll, c[2 * s], c[2 * s + 1], 0x44),
                         _mm512_maskz_shuffle_ps(kAll, c[2 * s], c[2 * s + 1], 0xee));
  }
  // half = 1: element 4k + m of e is the sum of vector 4m + k; permute to element i = v[i].
  const __m512 e = _mm512_add_ps(_mm512_maskz_shuffle_ps(kAll, d[0], d[1], 0x88),
                                 _mm512_maskz_shuffle_ps(kAll, d[0], d[1], 0xdd));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_maskz_permutexvar_ps(kAll, order, e);
}

}  // namespace shardlm

#endif  // __x86_64__

#endif  // SHARDLM_BASE_AVX512_REDUCE_H_
