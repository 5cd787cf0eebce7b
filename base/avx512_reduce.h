// Lane sums (and maxima) of several AVX-512 vectors at once, for kernels that reduce many
// dot-product accumulators or softmax rows (kernels/matmul_x86.cc,
// attention/decode_kernels_x86.cc).
//
// Each sum is the fixed pairwise tree those kernels use one vector at a time: lane j +=
// lane j + half for half = 8, 4, 2, 1. The shuffles only pair lanes across registers, and
// x + y = y + x exactly, so the results are bit-identical to the one-vector tree (tested in
// kernels/matmul_test.cc against matmul_internal::ReduceLanes). A maximum is exact in any
// order (up to which zero of ±0 and which NaN it returns).
//
// Only for code compiled with (or called from functions with) the AVX-512F target.
#ifndef SHARDLM_BASE_AVX512_REDUCE_H_
#define SHARDLM_BASE_AVX512_REDUCE_H_

#if defined(__x86_64__)
#include <immintrin.h>

namespace shardlm {

namespace avx512_reduce_internal {

// The combine step of a tree: a + b, or max(a, b). Both are commutative, so pairing lanes
// across registers gives each tree's bits.
template <bool kMax>
__attribute__((target("avx512f"))) inline __m512 Combine(__m512 a, __m512 b) {
  constexpr __mmask16 kAll = 0xffff;  // zero-masking forms: GCC 12's plain ones warn
  if constexpr (kMax) {
    return _mm512_maskz_max_ps(kAll, a, b);
  } else {
    return _mm512_maskz_add_ps(kAll, a, b);
  }
}

// Element i of the result is the tree of v[i]'s 16 lanes.
template <bool kMax>
__attribute__((target("avx512f"))) inline __m512 Reduce16x16(const __m512 (&v)[16]) {
  constexpr __mmask16 kAll = 0xffff;
  // half = 8: v[2p], v[2p + 1] → [lanes 0..7 of the tree of 2p | of 2p + 1].
  __m512 b[8];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p) {
    b[p] = Combine<kMax>(_mm512_maskz_shuffle_f32x4(kAll, v[2 * p], v[2 * p + 1], 0x44),
                         _mm512_maskz_shuffle_f32x4(kAll, v[2 * p], v[2 * p + 1], 0xee));
  }
  // half = 4: 128-bit lane k of c[q] holds the 4 partials of vector 4q + k.
  __m512 c[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    c[q] = Combine<kMax>(_mm512_maskz_shuffle_f32x4(kAll, b[2 * q], b[2 * q + 1], 0x88),
                         _mm512_maskz_shuffle_f32x4(kAll, b[2 * q], b[2 * q + 1], 0xdd));
  }
  // half = 2: 128-bit lane k of d[s] holds 2 partials of vectors 8s + k and 8s + 4 + k.
  __m512 d[2];
#pragma GCC unroll 2
  for (int s = 0; s < 2; ++s) {
    d[s] = Combine<kMax>(_mm512_maskz_shuffle_ps(kAll, c[2 * s], c[2 * s + 1], 0x44),
                         _mm512_maskz_shuffle_ps(kAll, c[2 * s], c[2 * s + 1], 0xee));
  }
  // half = 1: element 4k + m of e is the tree of vector 4m + k; permute to element i = v[i].
  const __m512 e = Combine<kMax>(_mm512_maskz_shuffle_ps(kAll, d[0], d[1], 0x88),
                                 _mm512_maskz_shuffle_ps(kAll, d[0], d[1], 0xdd));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_maskz_permutexvar_ps(kAll, order, e);
}

// Elements 0..3 of the result are the trees of v[0..3]'s 16 lanes (elements 4..15: copies).
template <bool kMax>
__attribute__((target("avx512f"))) inline __m512 Reduce4x16(const __m512 (&v)[4]) {
  constexpr __mmask16 kAll = 0xffff;
  // half = 8, as in Reduce16x16.
  const __m512 b0 = Combine<kMax>(_mm512_maskz_shuffle_f32x4(kAll, v[0], v[1], 0x44),
                                  _mm512_maskz_shuffle_f32x4(kAll, v[0], v[1], 0xee));
  const __m512 b1 = Combine<kMax>(_mm512_maskz_shuffle_f32x4(kAll, v[2], v[3], 0x44),
                                  _mm512_maskz_shuffle_f32x4(kAll, v[2], v[3], 0xee));
  // half = 4: 128-bit lane k of c holds the 4 partials of vector k.
  const __m512 c = Combine<kMax>(_mm512_maskz_shuffle_f32x4(kAll, b0, b1, 0x88),
                                 _mm512_maskz_shuffle_f32x4(kAll, b0, b1, 0xdd));
  // half = 2 and 1 inside each 128-bit lane: element 4k of e is the tree of vector k.
  const __m512 d = Combine<kMax>(c, _mm512_maskz_permute_ps(kAll, c, 0x4e));
  const __m512 e = Combine<kMax>(d, _mm512_maskz_permute_ps(kAll, d, 0xb1));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12);
  return _mm512_maskz_permutexvar_ps(kAll, order, e);
}

}  // namespace avx512_reduce_internal

// Element i of the result is the tree sum of v[i]'s 16 lanes.
__attribute__((target("avx512f"))) inline __m512 ReduceAdd16x16(const __m512 (&v)[16]) {
  return avx512_reduce_internal::Reduce16x16<false>(v);
}
// Element i of the result is the largest of v[i]'s 16 lanes (the same tree, with max).
__attribute__((target("avx512f"))) inline __m512 ReduceMax16x16(const __m512 (&v)[16]) {
  return avx512_reduce_internal::Reduce16x16<true>(v);
}
// Elements 0..3: the tree sums of v[0..3], for kernels with fewer accumulators.
__attribute__((target("avx512f"))) inline __m512 ReduceAdd4x16(const __m512 (&v)[4]) {
  return avx512_reduce_internal::Reduce4x16<false>(v);
}
__attribute__((target("avx512f"))) inline __m512 ReduceMax4x16(const __m512 (&v)[4]) {
  return avx512_reduce_internal::Reduce4x16<true>(v);
}

}  // namespace shardlm

#endif  // __x86_64__

#endif  // SHARDLM_BASE_AVX512_REDUCE_H_
