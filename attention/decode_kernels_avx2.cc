// AVX2 + FMA inner kernels of DecodeAttention (decode_kernels.h), for x86-64 CPUs without
// AVX-512 (Zen 3, Intel before Skylake-SP, and the client cores without it).
//
// As the AVX-512 ones (decode_kernels_x86.cc): function-level target attributes, not the global
// -march, so the binary runs anywhere and uses these only when CPUID says so; only intrinsics
// and plain arithmetic inside the attributed functions. AVX2 has no byte- or word-masked loads,
// so a row part's last partial vector of bf16 or int8 values is copied into a zeroed buffer
// first, and an f32 one is read with vmaskmovps (masked-off lanes touch no memory): a cache
// page's unused rows may hold anything, and nothing past a part is read.
//
// Scores: R × H tiles of rows and heads (3 × 4 for GQA-4: twelve FMA chains), each (row, head)
// one chain of FMAs over its 8-element vectors in element order (the a part, then the b part),
// then its 8 lanes added in one fixed tree; so a score's bits depend on nothing but its own
// row and query. With 16 or more heads per group the scores come with the heads in lanes
// instead (LaneScoresAvx2: the AVX-512 lane scores' bits). Values: as ValueTile in
// decode_kernels_x86.cc, 8 lanes wide, four heads × 24 columns per tile. Every FMA of the
// score, lane-score and value tiles is one asm statement, so that each sum stays in its own
// register (see LaneStep); they are the same single-rounding FMAs, in the same order. Exp8 is
// the AVX-512 build's Exp16 with 2^n applied by two exact-range products (AVX2 has no
// vscalefps): the same bits.
#include <cstdint>
#include <type_traits>

#include "attention/decode_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define SHARDLM_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace shardlm::attention_internal {
namespace {

// The lanes l < n of 8 (all for n ≥ 8), for vmaskmovps.
SHARDLM_TARGET_AVX2 inline __m256i FirstLanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 8 ? n : 8)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// How a kernel loads 8 consecutive values of a row (kv_cache.h: KvRowFormat) as fp32: f32 as
// they are, bf16 widened (exact), int8 converted (exact) and then multiplied by the part's
// scale by the caller (kScaled). Load(p, n): the first n < 8 values, the other lanes 0.
struct F32Rows {
  static constexpr int64_t kBytes = 4;
  static constexpr bool kScaled = false;
  SHARDLM_TARGET_AVX2 static __m256 Load(const unsigned char* p) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
  SHARDLM_TARGET_AVX2 static __m256 Load(const unsigned char* p, int64_t n) {
    return _mm256_maskload_ps(reinterpret_cast<const float*>(p), FirstLanes(n));
  }
};
struct Bf16Rows {
  static constexpr int64_t kBytes = 2;
  static constexpr bool kScaled = false;
  SHARDLM_TARGET_AVX2 static __m256 Widen(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  SHARDLM_TARGET_AVX2 static __m256 Load(const unsigned char* p) {
    return Widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  SHARDLM_TARGET_AVX2 static __m256 Load(const unsigned char* p, int64_t n) {
    alignas(16) unsigned char buf[16] = {};
    __builtin_memcpy(buf, p, static_cast<size_t>(n) * kBytes);
    return Widen(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
  }
};
struct Int8Rows {
  static constexpr int64_t kBytes = 1;
  static constexpr bool kScaled = true;
  SHARDLM_TARGET_AVX2 static __m256 Widen(__m128i b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  SHARDLM_TARGET_AVX2 static __m256 Load(const unsigned char* p) {
    return Widen(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  SHARDLM_TARGET_AVX2 static __m256 Load(const unsigned char* p, int64_t n) {
    alignas(16) unsigned char buf[16] = {};
    __builtin_memcpy(buf, p, static_cast<size_t>(n));
    return Widen(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
  }
};

// Requests [p, p + bytes) line by line (RowsAhead: into L1 or L2).
inline void PrefetchPart(const RowsAhead& ahead, const unsigned char* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) {
    if (ahead.l1) {
      _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T0);
    } else {
      _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T1);
    }
  }
}

// Calls f(std::integral_constant<int, H>{}, h0) for heads [h0, h0 + H) of g: fours, then the
// 1–3 left. (The callees carry the target attribute; f itself only calls them.)
template <typename F>
inline void ByFourHeads(int64_t g, F f) {
  int64_t h0 = 0;
  for (; h0 + 4 <= g; h0 += 4) f(std::integral_constant<int, 4>{}, h0);
  if (g - h0 == 3) f(std::integral_constant<int, 3>{}, h0);
  if (g - h0 == 2) f(std::integral_constant<int, 2>{}, h0);
  if (g - h0 == 1) f(std::integral_constant<int, 1>{}, h0);
}

// Element l of the result: the sum of v[l]'s 8 lanes, ((e0 + e1) + (e2 + e3)) + ((e4 + e5) +
// (e6 + e7)), whatever the other vectors hold.
SHARDLM_TARGET_AVX2 inline __m256 ReduceAdd8x8(const __m256 (&v)[8]) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  // u0 lane l < 4: v[l]'s (e0 + e1) + (e2 + e3); lane 4 + l: its (e4 + e5) + (e6 + e7).
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// acc[r][h] += rows[r][k, k + n) ⊙ q_h[0, n), n = 8 (kFull) or n < 8 (the other lanes +0), for
// an R × H tile; an int8 part is multiplied by its row's scale as loaded. Each row vector is
// loaded once for H heads.
template <int R, int H, typename Rows, bool kFull>
__attribute__((always_inline)) SHARDLM_TARGET_AVX2 inline void DotStep(
    __m256 (&acc)[R][H], const unsigned char* const* rows, int64_t k, int64_t n,
    const __m256 (&scale)[R], const float* q, int64_t q_head) {
  __m256 x[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const unsigned char* p = rows[r] + k * Rows::kBytes;
    x[r] = kFull ? Rows::Load(p) : Rows::Load(p, n);
    if constexpr (Rows::kScaled) x[r] = _mm256_mul_ps(x[r], scale[r]);
  }
#pragma GCC unroll 4
  for (int h = 0; h < H; ++h) {
    const float* qh = q + h * q_head;
    const __m256 qv = kFull ? _mm256_loadu_ps(qh) : _mm256_maskload_ps(qh, FirstLanes(n));
    // One asm statement per FMA, as in LaneStep: from the intrinsics this tile ran at about half
    // the FMA peak from L1.
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
      asm("vfmadd231ps %2, %1, %0" : "+x"(acc[r][h]) : "x"(x[r]), "x"(qv));
  }
}

// acc[r][h] += rows[r][off, off + len) ⊙ q_h[0, len), 8 lanes at a time (DotStep).
template <int R, int H, typename Rows>
SHARDLM_TARGET_AVX2 inline void DotPart(__m256 (&acc)[R][H], const unsigned char* const* rows,
                                        int64_t off, int64_t len, int64_t scale_off, int64_t seg,
                                        const float* q, int64_t q_head) {
  __m256 scale[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    scale[r] =
        Rows::kScaled ? _mm256_set1_ps(RowScale(rows[r], scale_off, seg)) : _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= len; k += 8)
    DotStep<R, H, Rows, true>(acc, rows, off + k, 8, scale, q + k, q_head);
  if (k < len) DotStep<R, H, Rows, false>(acc, rows, off + k, len - k, scale, q + k, q_head);
}

// Scores of rows [r0, r0 + R) for heads [h0, h0 + H), R·H ≤ 16: the tile's accumulators are
// summed eight at a time by ReduceAdd8x8 (zeros in the unused places).
template <int R, int H, typename Rows>
SHARDLM_TARGET_AVX2 void ScoreTile(const ScoreArgs& a, int64_t r0, int64_t h0) {
  static_assert(R * H <= 16);
  if (a.ahead.rows != nullptr && h0 == 0) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if (r0 + r >= a.ahead.n) break;
      const unsigned char* row = a.ahead.rows[r0 + r];
      PrefetchPart(a.ahead, row + a.a_off * Rows::kBytes, a.a_len * Rows::kBytes);
      if (a.b_len > 0) PrefetchPart(a.ahead, row + a.b_off * Rows::kBytes, a.b_len * Rows::kBytes);
      if constexpr (Rows::kScaled) PrefetchPart(a.ahead, row + a.scale_off, 1);
    }
  }
  __m256 acc[R][H];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) acc[r][h] = _mm256_setzero_ps();
  }
  const unsigned char* const* rows = a.rows + r0;
  DotPart<R, H, Rows>(acc, rows, a.a_off, a.a_len, a.scale_off, a.a_seg, a.qa + h0 * a.qa_head,
                      a.qa_head);
  if (a.b_len > 0) {
    DotPart<R, H, Rows>(acc, rows, a.b_off, a.b_len, a.scale_off, a.b_seg, a.qb + h0 * a.qb_head,
                        a.qb_head);
  }
  constexpr int kGroups = (R * H + 7) / 8;
  alignas(32) float s[8 * kGroups];
#pragma GCC unroll 2
  for (int k = 0; k < kGroups; ++k) {
    __m256 v[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const int t = 8 * k + i;
      v[i] = t < R * H ? acc[t / H][t % H] : _mm256_setzero_ps();
    }
    _mm256_store_ps(s + 8 * k, ReduceAdd8x8(v));
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) a.scores[(h0 + h) * a.block + r0 + r] = s[r * H + h];
  }
}

template <int H, typename Rows>
SHARDLM_TARGET_AVX2 void ScoreHeads(const ScoreArgs& a, int64_t h0) {
  // R·H = 12 chains: from L1 (GTA-4's 128 + 64 elements, 16 rows) 2 × 4 tiles ran at 69-73% of
  // the FMA peak, 3 × 4 at 79%. A row left alone after the tall tiles (16 = 5 · 3 + 1) would be
  // one tile of H chains, each FMA waiting on the one before: one tall tile fewer leaves tiles
  // of two rows instead.
  constexpr int kR = 12 / H;
  int64_t tall = a.nb / kR;
  if (kR > 2 && tall > 0 && a.nb % kR == 1) --tall;
  int64_t r0 = 0;
  for (; r0 < tall * kR; r0 += kR) ScoreTile<kR, H, Rows>(a, r0, h0);
  if constexpr (kR > 2) {
    for (; r0 + 2 <= a.nb; r0 += 2) ScoreTile<2, H, Rows>(a, r0, h0);
  }
  for (; r0 < a.nb; ++r0) ScoreTile<1, H, Rows>(a, r0, h0);
}

template <typename Rows>
SHARDLM_TARGET_AVX2 void ScoresAvx2(const ScoreArgs& a) {
  ByFourHeads(a.g, [&](auto heads, int64_t h0) { ScoreHeads<heads(), Rows>(a, h0); });
}

// Scores with the heads in lanes (DecodeKernels::lane_scores, from ScoreArgs::qt), as
// LaneScoreTile in decode_kernels_x86.cc with 8 heads per vector: every 32 elements of the R
// rows go to a small buffer as fp32 (widened, an int8 part scaled), from which each element is
// broadcast for the V·8 heads of the tile. Each score is one chain of FMAs in element order (a
// part, then b part): the AVX-512 lane scores' bits.
template <int R, int V>
SHARDLM_TARGET_AVX2 inline void LaneStep(__m256 (&acc)[R][V], const float (&buf)[R][32], int e,
                                         const float*& q, int64_t stride) {
  __m256 qv[V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) qv[v] = _mm256_loadu_ps(q + 8 * v);
  q += stride;
  asm("" : "+r"(q));  // a register add per element, not an offset per unrolled e
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    // One asm statement per FMA, its sum in and out of the same register ("+x"): from the
    // intrinsics GCC rotated the sums through spare registers (vfmadd132ps and a move per
    // FMA or two), and a 6 × 2 tile from L2 ran at 64-67% of the FMA peak, against 79-80%.
    __m256 x;
    asm("vbroadcastss %1, %0" : "=x"(x) : "m"(buf[r][e]));
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v)
      asm("vfmadd231ps %2, %1, %0" : "+x"(acc[r][v]) : "x"(x), "x"(qv[v]));
  }
}

template <int R, int V, typename Rows>
SHARDLM_TARGET_AVX2 inline void LanePart(__m256 (&acc)[R][V], const ScoreArgs& a, int64_t r0,
                                         int64_t v0, int64_t off, int64_t len, int64_t k0,
                                         int64_t seg) {
  // kSpan elements of the R rows at a time go to the buffer, then all their FMAs run, so the
  // rows' loads, stores and requests ahead come once per 32 elements, not between every 8
  // elements' FMAs: MLA's 6 × 2 tiles from L2 went from 84-85% to 93-94% of the FMA peak.
  constexpr int kSpan = 32;
  alignas(32) float buf[R][kSpan];
  __m256 scale[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    scale[r] = Rows::kScaled ? _mm256_set1_ps(RowScale(a.rows[r0 + r], a.scale_off, seg))
                             : _mm256_setzero_ps();
  }
  // The rows ahead, requested by the first lane vectors' tiles only, a line at a time.
  const bool request = a.ahead.rows != nullptr && v0 == 0;
  constexpr int64_t kPerLine = 64 / Rows::kBytes;  // elements per line
  const int64_t stride = a.qt_stride;
  const float* qt = a.qt + k0 * stride + 8 * v0;
  for (int64_t k = 0; k < len; k += kSpan) {
    const int64_t n = len - k < kSpan ? len - k : kSpan;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const unsigned char* p = a.rows[r0 + r] + (off + k) * Rows::kBytes;
      if (request && r0 + r < a.ahead.n) {
        const unsigned char* next = a.ahead.rows[r0 + r];
        // A line per kPerLine elements of the part (kSpan is a multiple of kPerLine or
        // the other way round).
        for (int64_t e = (k + kPerLine - 1) / kPerLine * kPerLine; e < k + n; e += kPerLine)
          PrefetchPart(a.ahead, next + (off + e) * Rows::kBytes, 1);
        if (Rows::kScaled && k == 0 && k0 == 0) PrefetchPart(a.ahead, next + a.scale_off, 1);
      }
#pragma GCC unroll 4
      for (int j = 0; j < kSpan; j += 8) {
        if (j >= n) break;
        __m256 x =
            n - j >= 8 ? Rows::Load(p + j * Rows::kBytes) : Rows::Load(p + j * Rows::kBytes, n - j);
        if constexpr (Rows::kScaled) x = _mm256_mul_ps(x, scale[r]);
        _mm256_store_ps(buf[r] + j, x);
      }
    }
    // The elements are broadcast from memory (a load each), not permuted out of registers.
    asm("" : : "r"(buf) : "memory");
    const float* qk = qt + k * stride;
    if (n == kSpan) {
#pragma GCC unroll 8
      for (int e = 0; e < kSpan; ++e) LaneStep<R, V>(acc, buf, e, qk, stride);
    } else {
      for (int e = 0; e < n; ++e) LaneStep<R, V>(acc, buf, e, qk, stride);
    }
  }
}

template <int R, int V, typename Rows>
SHARDLM_TARGET_AVX2 void LaneScoreTile(const ScoreArgs& a, int64_t r0, int64_t v0) {
  __m256 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  LanePart<R, V, Rows>(acc, a, r0, v0, a.a_off, a.a_len, 0, a.a_seg);
  if (a.b_len > 0) LanePart<R, V, Rows>(acc, a, r0, v0, a.b_off, a.b_len, a.a_len, a.b_seg);
  alignas(32) float out[R][8 * V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm256_store_ps(out[r] + 8 * v, acc[r][v]);
  }
  const int64_t heads = a.g - 8 * v0 < 8 * V ? a.g - 8 * v0 : 8 * V;
  for (int64_t h = 0; h < heads; ++h) {
    float* sc = a.scores + (8 * v0 + h) * a.block + r0;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) sc[r] = out[r][h];
  }
}

template <int V, typename Rows>
SHARDLM_TARGET_AVX2 void LaneScoreRows(const ScoreArgs& a, int64_t v0) {
  constexpr int kRows = V == 1 ? 12 : 6;  // 12 accumulators: 8 left the FMAs waiting
  // One or two rows left after the tall tiles (a 32-row block: 5 · 6 + 2) would be tiles of one
  // row, V chains each FMA waiting on the one before; one tall tile fewer leaves 4 + 3 or 4 + 4.
  int64_t tall = a.nb / kRows;
  if (tall > 0 && a.nb % kRows > 0 && a.nb % kRows <= 2) --tall;
  int64_t r0 = 0;
  for (; r0 < tall * kRows; r0 += kRows) LaneScoreTile<kRows, V, Rows>(a, r0, v0);
  for (; r0 + 4 <= a.nb; r0 += 4) LaneScoreTile<4, V, Rows>(a, r0, v0);
  if (a.nb - r0 == 3) LaneScoreTile<3, V, Rows>(a, r0, v0);
  if (a.nb - r0 == 2) LaneScoreTile<2, V, Rows>(a, r0, v0);
  if (a.nb - r0 == 1) LaneScoreTile<1, V, Rows>(a, r0, v0);
}

template <typename Rows>
SHARDLM_TARGET_AVX2 void LaneScoresAvx2(const ScoreArgs& a) {
  const int64_t vectors = (a.g + 7) / 8;
  int64_t v0 = 0;
  for (; v0 + 2 <= vectors; v0 += 2) LaneScoreRows<2, Rows>(a, v0);
  if (v0 < vectors) LaneScoreRows<1, Rows>(a, v0);
}

// Columns [c, c + 8·NC) of heads [h0, h0 + H), the last vector's first `last` lanes only (8:
// all): the H·NC sums stay in registers while all nb rows are added, each row vector loaded
// once for H heads. Every element adds its rows in row order after the rescale, one FMA each;
// an int8 row's scale is folded into the row's weights (p · s, one rounding).
template <int H, int NC, typename Rows>
SHARDLM_TARGET_AVX2 inline void ValueTile(const ValueArgs& a, int64_t c, int64_t last, int64_t h0) {
  const __m256i tail = FirstLanes(last);
  __m256 acc[H][NC];
#pragma GCC unroll 8
  for (int h = 0; h < H; ++h) {
    const __m256 alpha = _mm256_set1_ps(a.alpha[h0 + h]);
    const float* acc_h = a.acc + (h0 + h) * a.acc_head + c;
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) {
      const __m256 sum = j == NC - 1 && last < 8 ? _mm256_maskload_ps(acc_h + 8 * j, tail)
                                                 : _mm256_loadu_ps(acc_h + 8 * j);
      acc[h][j] = _mm256_mul_ps(sum, alpha);
    }
  }
  const float* p = a.p + h0 * a.block;
  const bool ahead = a.ahead.rows != nullptr && h0 == 0;
  for (int64_t r = 0; r < a.nb; ++r) {
    const unsigned char* row = a.rows[r] + (a.v_off + c) * Rows::kBytes;
    if (ahead && r < a.ahead.n) {
      const unsigned char* next = a.ahead.rows[r];
      PrefetchPart(a.ahead, next + (a.v_off + c) * Rows::kBytes, 8 * NC * Rows::kBytes);
      if (Rows::kScaled && c == 0) PrefetchPart(a.ahead, next + a.scale_off, 1);
    }
    __m256 v[NC];
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) {
      v[j] = j == NC - 1 && last < 8 ? Rows::Load(row + 8 * j * Rows::kBytes, last)
                                     : Rows::Load(row + 8 * j * Rows::kBytes);
    }
    const float s = Rows::kScaled ? RowScale(a.rows[r], a.scale_off, a.v_seg) : 1.0f;
#pragma GCC unroll 8
    for (int h = 0; h < H; ++h) {
      __m256 w;
      if constexpr (Rows::kScaled) {
        w = _mm256_set1_ps(p[h * a.block + r] * s);
      } else {
        asm("vbroadcastss %1, %0" : "=x"(w) : "m"(p[h * a.block + r]));
      }
      // As LaneStep: one asm statement per FMA keeps each sum in its register.
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j)
        asm("vfmadd231ps %2, %1, %0" : "+x"(acc[h][j]) : "x"(w), "x"(v[j]));
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < H; ++h) {
    float* acc_h = a.acc + (h0 + h) * a.acc_head + c;
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) {
      if (j == NC - 1 && last < 8) {
        _mm256_maskstore_ps(acc_h + 8 * j, tail, acc[h][j]);
      } else {
        _mm256_storeu_ps(acc_h + 8 * j, acc[h][j]);
      }
    }
  }
}

// H ≤ 4 heads. Values the score pass has just brought into L1 (GTA, the latent families): 24
// columns per tile (12 chains), then 16 and 8, with a width ending in 8 (as MLA's 512) taking
// two 16-column tiles for its last 32; from the 6 × 2 lane scores' harness, MLA's values went
// from 61-71% to 74-81% of the FMA peak. Values from L2 or memory (GQA): 16 columns, one line
// per row and tile, a stride the L1 prefetcher follows (24 made GQA's 8k step 5-10% slower).
template <int H, typename Rows>
SHARDLM_TARGET_AVX2 void ValueHeads(const ValueArgs& a, int64_t h0) {
  static_assert(H <= 4);
  int64_t c = 0;
  if (a.values_cached) {
    const int64_t wide = a.v_len % 24 == 8 ? a.v_len - 32 : a.v_len;
    for (; c + 24 <= wide; c += 24) ValueTile<H, 3, Rows>(a, c, 8, h0);
  }
  for (; c + 16 <= a.v_len; c += 16) ValueTile<H, 2, Rows>(a, c, 8, h0);
  for (; c < a.v_len; c += 8) ValueTile<H, 1, Rows>(a, c, a.v_len - c < 8 ? a.v_len - c : 8, h0);
}

template <typename Rows>
SHARDLM_TARGET_AVX2 void ValuesAvx2(const ValueArgs& a) {
  // Four heads at a time, so that a tile's row vectors (three) and weights (four broadcast
  // loads) are 0.58 loads per FMA; eight heads in one tile of 8 columns took 1.125 and left
  // MLA's values (16 heads) waiting on loads, and 16 columns 0.75.
  ByFourHeads(a.g, [&](auto heads, int64_t h0) { ValueHeads<heads(), Rows>(a, h0); });
}

// e^x for 8 lanes: decode_kernels_x86.cc's Exp16 step for step (clamp, n = round(x·log2 e),
// Cody–Waite reduction, the degree-7 Horner polynomial p), then p·2^n as (p·2^n1)·2^n2 with
// n1 = ⌊n/2⌋ and n2 = n − n1: for n in [−150, 128] both powers are normal floats, the first
// product is exact and the second rounds once, as vscalefps does (graceful underflow included).
SHARDLM_TARGET_AVX2 inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0f)), _mm256_set1_ps(88.7f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln2 high: 12 bits
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606820309417232e-06f), r);  // ln2 − high
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);  // exact: n is an integer
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 half = _mm256_mul_ps(p, f1);
  asm("" : "+x"(half));  // two products, not reassociated
  return _mm256_mul_ps(half, f2);
}

SHARDLM_TARGET_AVX2 void ExpAvx2(const float* x, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, Exp8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = FirstLanes(n - i);
    _mm256_maskstore_ps(y + i, m, Exp8(_mm256_maskload_ps(x + i, m)));
  }
}

// The sum of v's 8 lanes: ((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7)), and the max.
SHARDLM_TARGET_AVX2 inline float ReduceAdd8(__m256 v) {
  const __m256 t = _mm256_hadd_ps(v, v);  // lanes 0, 1: e0 + e1, e2 + e3; 4, 5: e4 + e5, e6 + e7
  const __m256 u = _mm256_hadd_ps(t, t);  // lane 0: (e0 + e1) + (e2 + e3); lane 4: the rest
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}
SHARDLM_TARGET_AVX2 inline float ReduceMax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// The online-softmax step (SoftmaxArgs) head by head, a block's ≤ 32 lanes in 8-lane vectors:
// lanes past nb are −inf for the max and 0 in the sum, and are not stored. A head's block sum
// adds its vectors lane by lane in order, then ReduceAdd8; the running sum is a product then a
// sum (two roundings).
SHARDLM_TARGET_AVX2 void SoftmaxAvx2(const SoftmaxArgs& a) {
  const int64_t nv = (a.nb + 7) / 8;
  const __m256 scale = _mm256_set1_ps(a.scale);
  const __m256 neg_inf = _mm256_set1_ps(-__builtin_inff());
  for (int64_t h = 0; h < a.g; ++h) {
    float* sc = a.scores + h * a.block;
    __m256 s[kLongBlock / 8];
    __m256i in[kLongBlock / 8];
    __m256 lane_max = neg_inf;
    for (int64_t v = 0; v < nv; ++v) {
      in[v] = FirstLanes(a.nb - 8 * v);
      s[v] = _mm256_blendv_ps(neg_inf, _mm256_mul_ps(_mm256_maskload_ps(sc + 8 * v, in[v]), scale),
                              _mm256_castsi256_ps(in[v]));
      lane_max = _mm256_max_ps(lane_max, s[v]);
    }
    const float old = a.max[h];
    const float block_max = ReduceMax8(lane_max);
    const float m = block_max > old ? block_max : old;
    const __m256 mv = _mm256_set1_ps(m);
    __m256 lane_sum = _mm256_setzero_ps();
    for (int64_t v = 0; v < nv; ++v) {
      const __m256 p = _mm256_and_ps(Exp8(_mm256_sub_ps(s[v], mv)), _mm256_castsi256_ps(in[v]));
      _mm256_maskstore_ps(sc + 8 * v, in[v], p);
      lane_sum = _mm256_add_ps(lane_sum, p);
    }
    const float alpha =
        old == -__builtin_inff() ? 0.0f : _mm256_cvtss_f32(Exp8(_mm256_set1_ps(old - m)));
    float scaled = a.sum[h] * alpha;
    asm("" : "+x"(scaled));  // keeps the product and the sum two roundings
    a.sum[h] = scaled + ReduceAdd8(lane_sum);
    a.alpha[h] = alpha;
    a.max[h] = m;
  }
}

}  // namespace

DecodeKernels Avx2Kernels() {
  DecodeKernels k = PortableKernels();
  k.scores[0] = &ScoresAvx2<F32Rows>;
  k.scores[1] = &ScoresAvx2<Bf16Rows>;
  k.scores[2] = &ScoresAvx2<Int8Rows>;
  k.lane_scores[0] = &LaneScoresAvx2<F32Rows>;
  k.lane_scores[1] = &LaneScoresAvx2<Bf16Rows>;
  k.lane_scores[2] = &LaneScoresAvx2<Int8Rows>;
  k.values[0] = &ValuesAvx2<F32Rows>;
  k.values[1] = &ValuesAvx2<Bf16Rows>;
  k.values[2] = &ValuesAvx2<Int8Rows>;
  k.softmax = &SoftmaxAvx2;
  k.exp = &ExpAvx2;
  k.name = "avx2+fma";
  return k;
}

}  // namespace shardlm::attention_internal

#else  // not x86-64: only the portable kernels exist.

namespace shardlm::attention_internal {
DecodeKernels Avx2Kernels() { return PortableKernels(); }
}  // namespace shardlm::attention_internal

#endif
