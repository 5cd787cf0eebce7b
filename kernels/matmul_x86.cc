// AVX-512 and AVX2+FMA micro-kernels for kernels/matmul.h.
//
// Each kernel is compiled with a function-level target attribute, not the global -march, so
// the binary runs on any x86-64 and uses these only when CPUID says so. Only intrinsics and
// plain arithmetic appear inside the attributed functions: an inline std:: function compiled
// here with AVX-512 enabled could otherwise be picked by the linker for generic callers.
#include <cstdint>
#include <type_traits>

#include "base/avx512_reduce.h"
#include "kernels/matmul_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define SHARDLM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SHARDLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SHARDLM_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace shardlm::matmul_internal {
namespace {

// One prefetch turn of a tile (TileArgs): for each of its kC weight rows, the line at
// w + c·ws + at_l1 into L1 (when at_l1 ≠ 0) and the line at w + c·ws + at_l2 into L2 (when
// at_l2 ≠ 0). Plain SSE, so every kernel's target can inline it. The empty volatile asm is a
// side effect: GCC counts prefetches as none, deduces a function made only of them `const`
// and deletes its calls; that happened to this helper's first version in every 16-bit tile
// (BF16 batch 1: 33 → 21 GB/s). attention/decode_core.cc's PrefetchRange has the same note.
template <int kC, class Elem>
inline void PrefetchTurn(const Elem* w, int64_t ws, int64_t at_l1, int64_t at_l2) {
  if (at_l1 != 0) {
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(w + c * ws + at_l1), _MM_HINT_T0);
    }
  }
  if (at_l2 != 0) {
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(w + c * ws + at_l2), _MM_HINT_T1);
    }
  }
  asm volatile("");
}

// 16 lanes per zmm; R·C accumulators + C weights + 1 x ≤ 32 registers. K tail: zero-masked
// loads (which never touch memory past the row end), so the tail lanes see fma(0, 0, a) = a
// and the active lanes the same FMA as a full step. 16-bit weights: 16 elements (32 bytes)
// widened in the register: bf16 by zero-extending to 32 bits and shifting into the top half,
// f16 by vcvtph2ps; both exact, so the FMAs see the same f32 values as the f32 path.
struct Avx512 {
  static constexpr int kLanes = 16;
  using XElem = float;

  // ReduceLanes<16> of 16 accumulators at once, with the same adds (base/avx512_reduce.h).
  // Groups of 4, not 16: a one-row tile (n = 1) has only kC sums, and reducing them as 16
  // took 6% of a Q4_0 batch-1 decode step in `perf`, 12 of the 16 trees unused.
  static constexpr int kReduceGroup = 4;
  // count is a multiple of 4; acc and sums as in Drive (acc 64-byte aligned). 16 trees at once
  // while 16 remain, then 4.
  SHARDLM_TARGET_AVX512 static void ReduceSums(const float* acc, int64_t count, float* sums) {
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
      __m512 v[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) v[j] = _mm512_load_ps(acc + (i + j) * kLanes);
      _mm512_storeu_ps(sums + i, ReduceAdd16x16(v));
    }
    for (; i < count; i += 4) {
      __m512 v[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) v[j] = _mm512_load_ps(acc + (i + j) * kLanes);
      _mm512_mask_storeu_ps(sums + i, 0x000f, ReduceAdd4x16(v));
    }
  }

  // 16 stored 16-bit weights to f32. The zero-masking forms with an all-ones mask are the
  // plain instructions; they are used because GCC 12's unmasked intrinsics pass an
  // "undefined" source that trips -Wmaybe-uninitialized.
  template <class Fmt>
  SHARDLM_TARGET_AVX512 static __m512 Widen(__m256i h) {
    constexpr __mmask16 kAll = 0xffff;
    if constexpr (std::is_same_v<Fmt, Bf16W>) {
      return _mm512_castsi512_ps(
          _mm512_maskz_slli_epi32(kAll, _mm512_maskz_cvtepu16_epi32(kAll, h), 16));
    } else {
      return _mm512_maskz_cvtph_ps(kAll, h);
    }
  }
  // w[0..16) widened; `m` selects the lanes to load (the others are +0).
  template <class Fmt>
  SHARDLM_TARGET_AVX512 static __m512 LoadW(const typename Fmt::Elem* w, __mmask16 m) {
    if constexpr (std::is_same_v<Fmt, F32W>) {
      return _mm512_maskz_loadu_ps(m, w);
    } else {
      return Widen<Fmt>(_mm256_maskz_loadu_epi16(m, w));
    }
  }
  template <class Fmt>
  SHARDLM_TARGET_AVX512 static __m512 LoadW(const typename Fmt::Elem* w) {
    if constexpr (std::is_same_v<Fmt, F32W>) {
      return _mm512_loadu_ps(w);
    } else {
      return Widen<Fmt>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    }
  }

  // The tile's accumulators from / to the spill buffer (row stride kCStride · 16 floats).
  // At the row's first K block (TileArgs::first_block) they start at zero instead.
  template <int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX512 static void LoadAcc(const TileArgs& t, __m512 (&a)[kR][kC]) {
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        a[r][c] = t.first_block ? _mm512_setzero_ps()
                                : _mm512_load_ps(t.acc + (r * kCStride + c) * kLanes);
      }
    }
  }
  template <int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX512 static void StoreAcc(__m512 (&a)[kR][kC], float* acc) {
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) _mm512_store_ps(acc + (r * kCStride + c) * kLanes, a[r][c]);
    }
  }
  template <class Fmt, int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX512 static void Tile(const TileArgs& t) {
    using Elem = typename Fmt::Elem;
    constexpr int64_t kLine = kLineElems<Fmt>;
    const float* const x = static_cast<const float*>(t.x);
    const Elem* const w = static_cast<const Elem*>(t.w);
    const int64_t xs = t.x_stride, ws = t.w_stride, len = t.len, pf = t.prefetch_offset,
                  pf2 = t.l2_prefetch_offset;
    __m512 a[kR][kC];
    LoadAcc<kR, kC, kCStride>(t, a);
    int turn = t.prefetch_phase + 1;
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) {
      if (k % kLine == 0 && --turn == 0) {
        turn = t.prefetch_period;
        PrefetchTurn<kC>(w, ws, pf != 0 ? k + pf : 0, pf2 != 0 ? k + pf2 : 0);
      }
      // The empty asm statements keep each loaded vector in a register: without them GCC
      // folds the loads into the FMAs and loads every x (or w) vector C (or R) times, which
      // makes the kernel load-bound at under half the FMA rate.
      __m512 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        wv[c] = LoadW<Fmt>(w + c * ws + k);
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
      for (int c = 0; c < kC; ++c) wv[c] = LoadW<Fmt>(w + c * ws + k, m);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + r * xs + k);
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm512_fmadd_ps(xv, wv[c], a[r][c]);
      }
    }
    StoreAcc<kR, kC, kCStride>(a, t.acc);
  }
};

// Bf16Math::kDot (matmul.h): bf16 weights times x rounded to bf16, with AVX512-BF16's
// vdpbf16ps, which multiplies 32 bf16 pairs and adds each lane's two products into its f32
// accumulator: lane j of a 32-element step takes k = 2j and 2j + 1. That is 32 multiply-adds
// per instruction where the widening kernel does 16, and no widening (see Bf16Math::kDot for
// what that measured). Drive packs x to bf16 once per call (PackX), zero-
// padded to whole steps; the W tail is a zero-masked 16-bit load. Everything else, the
// blocking, prefetch turns, spills and the lane tree, is the f32 kernel's.
struct Avx512Bf16Dot {
  static constexpr int kLanes = 16;
  using XElem = uint16_t;  // bf16 bit patterns
  static constexpr int kReduceGroup = Avx512::kReduceGroup;
  static void ReduceSums(const float* acc, int64_t count, float* sums) {
    Avx512::ReduceSums(acc, count, sums);
  }

  // dst[0, len) = x[0, len) rounded to bf16 (vcvtne2ps2bf16: to nearest even, denormals to
  // ±0, NaN stays NaN), then zeros up to the next multiple of 32.
  SHARDLM_TARGET_AVX512BF16 static void PackX(const float* x, int64_t len, uint16_t* dst) {
    for (int64_t k = 0; k < len; k += 32) {
      const int64_t left = len - k;
      const auto lo = static_cast<__mmask16>(left >= 16 ? 0xffffu : (1u << left) - 1);
      const auto hi = static_cast<__mmask16>(left >= 32  ? 0xffffu
                                             : left > 16 ? (1u << (left - 16)) - 1
                                                         : 0u);
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + k + 16),
                                             _mm512_maskz_loadu_ps(lo, x + k));
      _mm512_storeu_si512(dst + k, reinterpret_cast<const __m512i&>(v));
    }
  }

  SHARDLM_TARGET_AVX512BF16 static __m512bh Load(const uint16_t* p) {
    const __m512i v = _mm512_loadu_si512(p);
    return reinterpret_cast<const __m512bh&>(v);
  }
  SHARDLM_TARGET_AVX512BF16 static __m512bh Load(const uint16_t* p, __mmask32 m) {
    const __m512i v = _mm512_maskz_loadu_epi16(m, p);
    return reinterpret_cast<const __m512bh&>(v);
  }

  template <class Fmt, int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX512BF16 static void Tile(const TileArgs& t) {
    static_assert(std::is_same_v<Fmt, Bf16W>, "the dot kernel takes bf16 weights only");
    constexpr int64_t kStep = 32;  // bf16 per zmm: one 64-byte line per row and step
    const uint16_t* const x = static_cast<const uint16_t*>(t.x);
    const uint16_t* const w = static_cast<const uint16_t*>(t.w);
    const int64_t xs = t.x_stride, ws = t.w_stride, len = t.len, pf = t.prefetch_offset,
                  pf2 = t.l2_prefetch_offset;
    __m512 a[kR][kC];
    Avx512::LoadAcc<kR, kC, kCStride>(t, a);
    int turn = t.prefetch_phase + 1;
    int64_t k = 0;
    for (; k + kStep <= len; k += kStep) {
      if (--turn == 0) {
        turn = t.prefetch_period;
        PrefetchTurn<kC>(w, ws, pf != 0 ? k + pf : 0, pf2 != 0 ? k + pf2 : 0);
      }
      // Registers pinned as in Avx512::Tile.
      __m512bh wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        wv[c] = Load(w + c * ws + k);
        asm("" : "+v"(wv[c]));
      }
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        __m512bh xv = Load(x + r * xs + k);
        asm("" : "+v"(xv));
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], xv, wv[c]);
      }
    }
    if (k < len) {
      const auto m = static_cast<__mmask32>((uint32_t{1} << (len - k)) - 1);
      __m512bh wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) wv[c] = Load(w + c * ws + k, m);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m512bh xv = Load(x + r * xs + k, m);
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], xv, wv[c]);
      }
    }
    Avx512::StoreAcc<kR, kC, kCStride>(a, t.acc);
  }
};

// 8 lanes per ymm; R·C accumulators + C weights + 1 x ≤ 16 registers. K tail:
// _mm256_maskload_ps, which zeroes (and does not fault on) the masked lanes. 16-bit weights:
// 8 elements widened in the register (bf16: zero-extend, shift by 16; f16: vcvtph2ps); AVX2
// has no masked 16-bit load, so the tail's elements are copied into a zeroed 8-element buffer.
struct Avx2Fma {
  static constexpr int kLanes = 8;
  using XElem = float;
  static constexpr int kReduceGroup = 1;
  static void ReduceSums(const float* acc, int64_t count, float* sums) {
    ReduceSumsAvx2<kLanes>(acc, count, sums);
  }

  template <class Fmt>
  SHARDLM_TARGET_AVX2 static __m256 LoadW(const typename Fmt::Elem* w) {
    if constexpr (std::is_same_v<Fmt, F32W>) {
      return _mm256_loadu_ps(w);
    } else {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
      if constexpr (std::is_same_v<Fmt, Bf16W>) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      } else {
        return _mm256_cvtph_ps(h);
      }
    }
  }
  // w[0..tail) widened, the other lanes +0 (`m` has the first `tail` lanes set).
  template <class Fmt>
  SHARDLM_TARGET_AVX2 static __m256 LoadWTail(const typename Fmt::Elem* w, int tail,
                                              __m256i m) {
    if constexpr (std::is_same_v<Fmt, F32W>) {
      return _mm256_maskload_ps(w, m);
    } else {
      alignas(16) uint16_t buf[kLanes] = {};
      for (int j = 0; j < tail; ++j) buf[j] = w[j];
      return LoadW<Fmt>(buf);
    }
  }

  template <class Fmt, int kR, int kC, int kCStride>
  SHARDLM_TARGET_AVX2 static void Tile(const TileArgs& t) {
    using Elem = typename Fmt::Elem;
    constexpr int64_t kLine = kLineElems<Fmt>;
    const float* const x = static_cast<const float*>(t.x);
    const Elem* const w = static_cast<const Elem*>(t.w);
    const int64_t xs = t.x_stride, ws = t.w_stride, len = t.len, pf = t.prefetch_offset,
                  pf2 = t.l2_prefetch_offset;
    float* const acc = t.acc;
    __m256 a[kR][kC];
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        a[r][c] = t.first_block ? _mm256_setzero_ps()
                                : _mm256_load_ps(acc + (r * kCStride + c) * kLanes);
      }
    }
    int turn = t.prefetch_phase + 1;
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) {
      // A turn covers one 64-byte line per row: every other 8-float step.
      if (k % kLine == 0 && --turn == 0) {
        turn = t.prefetch_period;
        PrefetchTurn<kC>(w, ws, pf != 0 ? k + pf : 0, pf2 != 0 ? k + pf2 : 0);
      }
      __m256 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        wv[c] = LoadW<Fmt>(w + c * ws + k);
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
      const int tail = static_cast<int>(len - k);
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      __m256 wv[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) wv[c] = LoadWTail<Fmt>(w + c * ws + k, tail, m);
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

template <class Fmt>
void SkinnyAvx512(const float* x, int64_t n, int64_t x_stride, const typename Fmt::Elem* w,
                  int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  Drive<Avx512, Fmt, 4, 6>(x, n, x_stride, w, out, in, bias, y, y_stride);
}

template <class Fmt>
void SkinnyAvx2Fma(const float* x, int64_t n, int64_t x_stride, const typename Fmt::Elem* w,
                   int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  // One x row: six weight rows per tile (13 of the 16 ymm), which shares each chunk's fixed
  // costs over more rows: F32 at 32768 × 1024 read at 85–91% of a plain read against 76–83%
  // in 1 × 4 (Zen 3, five alternated runs; BF16 the same either way).
  if (n == 1) {
    Drive<Avx2Fma, Fmt, 1, 6>(x, n, x_stride, w, out, in, bias, y, y_stride);
    return;
  }
  Drive<Avx2Fma, Fmt, 2, 4>(x, n, x_stride, w, out, in, bias, y, y_stride);
}
void ReduceSumsAvx512(const float* acc, int64_t count, float* sums) {
  Avx512::ReduceSums(acc, count, sums);
}

// Eight trees at once: element i of the result is the tree of v[i]'s 8 lanes. Each step adds
// lane j and lane j + half of every tree, as ReduceLanes does; only which register lane holds
// which partial changes.
SHARDLM_TARGET_AVX2 inline __m256 Tree8x8(const __m256 (&v)[8]) {
  // half = 4: [lanes 0..3 of tree 2p | of tree 2p + 1].
  __m256 b[4];
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p) {
    b[p] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20),
                         _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31));
  }
  // half = 2: 128-bit lane k of c[q] holds 2 partials of trees 4q + k and 4q + 2 + k.
  __m256 c[2];
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q) {
    c[q] = _mm256_add_ps(_mm256_shuffle_ps(b[2 * q], b[2 * q + 1], 0x44),
                         _mm256_shuffle_ps(b[2 * q], b[2 * q + 1], 0xee));
  }
  // half = 1: element 4k + m of d is the tree 2m + k; permute to element i = tree i.
  const __m256 d =
      _mm256_add_ps(_mm256_shuffle_ps(c[0], c[1], 0x88), _mm256_shuffle_ps(c[0], c[1], 0xdd));
  return _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// An accumulator's L lanes as 8: for L = 16 the tree's first step (half = 8) adds its halves.
template <int L>
SHARDLM_TARGET_AVX2 inline __m256 Lanes8(const float* a) {
  if constexpr (L == 16) {
    return _mm256_add_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(a + 8));
  } else {
    return _mm256_loadu_ps(a);
  }
}

// Eight trees at a time, then four (a one-row tile's kC sums; the other four trees are
// copies, not stored), then one by one. Before, ReduceEach's scalar trees went through the
// stack and took a third of the AVX2 Q4_0 matmul's time at n = 16 (`perf`, 4096 × 1024 from
// cache, Zen 3).
// (The body of ReduceSumsAvx2, whose declaration in matmul_internal.h has no target attribute:
// GCC does not take one from a later definition of a declared template.)
template <int L>
SHARDLM_TARGET_AVX2 void ReduceSumsAvx2Targeted(const float* acc, int64_t count, float* sums) {
  static_assert(L == 8 || L == 16);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    __m256 v[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) v[j] = Lanes8<L>(acc + (i + j) * L);
    _mm256_storeu_ps(sums + i, Tree8x8(v));
  }
  if (i + 4 <= count) {
    __m256 v[8];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) v[j] = v[j + 4] = Lanes8<L>(acc + (i + j) * L);
    _mm_storeu_ps(sums + i, _mm256_castps256_ps128(Tree8x8(v)));
    i += 4;
  }
  ReduceEach<L>(acc + i * L, count - i, sums + i);
}
template <int L>
void ReduceSumsAvx2(const float* acc, int64_t count, float* sums) {
  ReduceSumsAvx2Targeted<L>(acc, count, sums);
}
template void ReduceSumsAvx2<8>(const float*, int64_t, float*);
template void ReduceSumsAvx2<16>(const float*, int64_t, float*);

void SkinnyAvx512Bf16Dot(const float* x, int64_t n, int64_t x_stride, const uint16_t* w,
                         int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  Drive<Avx512Bf16Dot, Bf16W, 4, 6>(x, n, x_stride, w, out, in, bias, y, y_stride);
}

}  // namespace shardlm::matmul_internal

#else  // not x86: only the portable path exists.

namespace shardlm::matmul_internal {
template <class Fmt>
void SkinnyAvx512(const float*, int64_t, int64_t, const typename Fmt::Elem*, int64_t, int64_t,
                  const float*, float*, int64_t) {}
template <class Fmt>
void SkinnyAvx2Fma(const float*, int64_t, int64_t, const typename Fmt::Elem*, int64_t, int64_t,
                   const float*, float*, int64_t) {}
void SkinnyAvx512Bf16Dot(const float*, int64_t, int64_t, const uint16_t*, int64_t, int64_t,
                         const float*, float*, int64_t) {}
template <int L>
void ReduceSumsAvx2(const float*, int64_t, float*) {}
template void ReduceSumsAvx2<8>(const float*, int64_t, float*);
template void ReduceSumsAvx2<16>(const float*, int64_t, float*);
void ReduceSumsAvx512(const float*, int64_t, float*) {}
}  // namespace shardlm::matmul_internal

#endif

namespace shardlm::matmul_internal {
// The entry points for every weight format (stubs on non-x86 builds).
template void SkinnyAvx512<F32W>(const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                                 const float*, float*, int64_t);
template void SkinnyAvx512<Bf16W>(const float*, int64_t, int64_t, const uint16_t*, int64_t,
                                  int64_t, const float*, float*, int64_t);
template void SkinnyAvx512<F16W>(const float*, int64_t, int64_t, const uint16_t*, int64_t,
                                 int64_t, const float*, float*, int64_t);
template void SkinnyAvx2Fma<F32W>(const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                                  const float*, float*, int64_t);
template void SkinnyAvx2Fma<Bf16W>(const float*, int64_t, int64_t, const uint16_t*, int64_t,
                                   int64_t, const float*, float*, int64_t);
template void SkinnyAvx2Fma<F16W>(const float*, int64_t, int64_t, const uint16_t*, int64_t,
                                  int64_t, const float*, float*, int64_t);
}  // namespace shardlm::matmul_internal
