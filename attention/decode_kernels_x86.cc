// AVX-512 inner kernels of DecodeAttention (decode_kernels.h).
//
// Compiled with function-level target attributes, not the global -march, so the
// binary runs on any x86-64 and uses these only when CPUID says so. Only
// intrinsics and plain arithmetic appear inside the attributed functions (no
// inline std:: functions, which the linker could otherwise pick for generic
// callers). Row and column tails use zero-masked loads, which never touch memory
// past the requested floats: a cache page's unused rows may hold anything.
#include <cstdint>

#include "attention/decode_kernels.h"
#include "base/avx512_reduce.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define SHARDLM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// GCC 12's AVX-512 headers build "undefined" vectors as `__m512 __Y = __Y;`, which
// -Wuninitialized flags wherever an extract or shuffle intrinsic is inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace shardlm::attention_internal {
namespace {

// Sum of the 16 lanes, in a fixed tree order.
SHARDLM_TARGET_AVX512 inline float ReduceAdd(__m512 v) {
  // Lanes 0..7 + lanes 8..15 (a 128-bit-lane swap keeps to AVX-512F).
  const __m512 halves = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));
  const __m256 s8 = _mm512_castps512_ps256(halves);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

// How a kernel loads 16 consecutive values of a row (kv_cache.h: KvRowFormat) as fp32:
// f32 as they are, bf16 widened (exact), int8 converted (exact) and multiplied by the row
// part's scale (kScaled: one rounding, done once per loaded vector for all heads).
struct F32Rows {
  static constexpr int64_t kBytes = 4;
  static constexpr bool kScaled = false;
  static constexpr bool kQuads = true;  // QuadScoreTile reads f32 rows only
  SHARDLM_TARGET_AVX512 static __m512 Load(const unsigned char* p) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
  }
  SHARDLM_TARGET_AVX512 static __m512 Load(__mmask16 m, const unsigned char* p) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(p));
  }
};
struct Bf16Rows {
  static constexpr int64_t kBytes = 2;
  static constexpr bool kScaled = false;
  static constexpr bool kQuads = false;
  SHARDLM_TARGET_AVX512 static __m512 Widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  SHARDLM_TARGET_AVX512 static __m512 Load(const unsigned char* p) {
    return Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  SHARDLM_TARGET_AVX512 static __m512 Load(__mmask16 m, const unsigned char* p) {
    return Widen(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct Int8Rows {
  static constexpr int64_t kBytes = 1;
  static constexpr bool kScaled = true;
  static constexpr bool kQuads = false;
  SHARDLM_TARGET_AVX512 static __m512 Widen(__m128i b) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
  }
  SHARDLM_TARGET_AVX512 static __m512 Load(const unsigned char* p) {
    return Widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  SHARDLM_TARGET_AVX512 static __m512 Load(__mmask16 m, const unsigned char* p) {
    return Widen(_mm_maskz_loadu_epi8(m, p));
  }
};

// Requests the line of p (RowsAhead).
SHARDLM_TARGET_AVX512 inline void PrefetchAhead(const RowsAhead& ahead, const unsigned char* p) {
  if (ahead.l1) {
    _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
  } else {
    _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1);
  }
}

// The row beside row r of a kernel (RowsAhead), or row r itself where there is none (a request
// of a line already in cache costs nothing more); an int8 row's scales are requested with it
// where `scales` (a kernel that takes a row's parts in several calls asks for them once).
template <typename Rows>
SHARDLM_TARGET_AVX512 inline const unsigned char* RowAhead(const RowsAhead& ahead,
                                                           const unsigned char* const* rows,
                                                           int64_t r, int64_t scale_off,
                                                           bool scales = true) {
  const unsigned char* row = r < ahead.n ? ahead.rows[r] : rows[r];
  if constexpr (Rows::kScaled) {
    if (scales) PrefetchAhead(ahead, row + scale_off);
  }
  return row;
}

// Vectors of 16 values per 64-byte line: a kernel requests a line of the rows ahead at every
// this many vectors it loads.
template <typename Rows>
inline constexpr int64_t kVectorsPerLine = 64 / (16 * Rows::kBytes);

// acc[r][h] += rows[r][off, off + len) ⊙ q_h[0, len), lane-wise, for an R × H tile.
// Each row vector is loaded once for H heads and each query vector once for R rows.
// Where `ahead` is not null, the same lines of ahead[r] are requested beside row r's
// (ScoreArgs::ahead, whose cache level is `a`'s).
template <int R, int H, typename Rows>
SHARDLM_TARGET_AVX512 inline void DotPart(__m512 (&acc)[R][H], const unsigned char* const* rows,
                                          int64_t off, int64_t len, const __m512 (&scale)[R],
                                          const float* q, int64_t q_head,
                                          const unsigned char* const* ahead, const RowsAhead& a) {
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    // The empty asm statements keep each loaded vector in a register: without them GCC
    // folds the query loads into the FMAs and loads every query vector R times (20 loads per
    // 16 FMAs, the MLA score pass's bottleneck).
    __m512 x[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if (ahead != nullptr && (k / 16) % kVectorsPerLine<Rows> == 0) {
        PrefetchAhead(a, ahead[r] + (off + k) * Rows::kBytes);
      }
      x[r] = Rows::Load(rows[r] + (off + k) * Rows::kBytes);
      if constexpr (Rows::kScaled) x[r] = _mm512_mul_ps(x[r], scale[r]);
      asm("" : "+v"(x[r]));
    }
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
      __m512 qv = _mm512_loadu_ps(q + h * q_head + k);
      asm("" : "+v"(qv));
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][h] = _mm512_fmadd_ps(x[r], qv, acc[r][h]);
    }
  }
  if (k < len) {
    const __mmask16 m = static_cast<__mmask16>((1u << (len - k)) - 1);
    __m512 x[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if (ahead != nullptr) PrefetchAhead(a, ahead[r] + (off + k) * Rows::kBytes);
      x[r] = Rows::Load(m, rows[r] + (off + k) * Rows::kBytes);
      if constexpr (Rows::kScaled) x[r] = _mm512_mul_ps(x[r], scale[r]);
    }
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + h * q_head + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][h] = _mm512_fmadd_ps(x[r], qv, acc[r][h]);
    }
  }
}

// A tile's accumulators, all zero.
template <int R, int C>
SHARDLM_TARGET_AVX512 inline void SetZero(__m512 (&acc)[R][C]) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
}

// Scores of rows [r0, r0 + R) for heads [h0, h0 + H).
template <int R, int H, typename Rows>
SHARDLM_TARGET_AVX512 void ScoreTile(const ScoreArgs& a, int64_t r0, int64_t h0) {
  __m512 acc[R][H];
  SetZero(acc);
  __m512 scale[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    scale[r] = Rows::kScaled ? _mm512_set1_ps(RowScale(a.rows[r0 + r], a.scale_off, a.a_seg))
                             : _mm512_setzero_ps();
  }
  // The rows ahead (ScoreArgs::ahead), requested by the first heads' tiles only (the others
  // read the same rows again).
  const unsigned char* ahead_rows[R];
  const unsigned char* const* ahead = nullptr;
  if (a.ahead.rows != nullptr && h0 == 0) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      ahead_rows[r] = RowAhead<Rows>(a.ahead, a.rows, r0 + r, a.scale_off);
    }
    ahead = ahead_rows;
  }
  DotPart<R, H, Rows>(acc, a.rows + r0, a.a_off, a.a_len, scale, a.qa + h0 * a.qa_head, a.qa_head,
                      ahead, a.ahead);
  if (a.b_len > 0) {
    if constexpr (Rows::kScaled) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        scale[r] = _mm512_set1_ps(RowScale(a.rows[r0 + r], a.scale_off, a.b_seg));
      }
    }
    DotPart<R, H, Rows>(acc, a.rows + r0, a.b_off, a.b_len, scale, a.qb + h0 * a.qb_head, a.qb_head,
                        ahead, a.ahead);
  }
  if constexpr (R == 4 && H == 4) {
    // All 16 at once, the same tree as ReduceAdd: element 4h + r of `sums` is acc[r][h], so
    // each head's 4 scores are 4 consecutive floats.
    __m512 v[16];
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) v[h * R + r] = acc[r][h];
    }
    const __m512 sums = ReduceAdd16x16(v);
    float* s = a.scores + h0 * a.block + r0;
    _mm_storeu_ps(s, _mm512_extractf32x4_ps(sums, 0));
    _mm_storeu_ps(s + a.block, _mm512_extractf32x4_ps(sums, 1));
    _mm_storeu_ps(s + 2 * a.block, _mm512_extractf32x4_ps(sums, 2));
    _mm_storeu_ps(s + 3 * a.block, _mm512_extractf32x4_ps(sums, 3));
  } else {
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) a.scores[(h0 + h) * a.block + r0 + r] = ReduceAdd(acc[r][h]);
    }
  }
}

template <int H, typename Rows>
SHARDLM_TARGET_AVX512 void ScoreHeads(const ScoreArgs& a, int64_t h0) {
  int64_t r0 = 0;
  for (; r0 + 4 <= a.nb; r0 += 4) ScoreTile<4, H, Rows>(a, r0, h0);
  for (; r0 < a.nb; ++r0) ScoreTile<1, H, Rows>(a, r0, h0);
}

// The k-th 4 elements of rows [0, R) (from row[r]) against the quad's query vector k, into acc.
template <int R>
SHARDLM_TARGET_AVX512 inline void QuadStep(__m512 (&acc)[R], const float* const (&row)[R],
                                           int64_t k, const float* qq, int64_t off,
                                           const unsigned char* const* ahead, const RowsAhead& a) {
  const __m512 qv = _mm512_loadu_ps(qq + 16 * k);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    if (ahead != nullptr && k % 4 == 0) PrefetchAhead(a, ahead[r] + (off + 4 * k) * 4);
    // One `vbroadcastf32x4` load: the 4 elements in each 128-bit lane, one per head.
    const __m512 x = _mm512_broadcast_f32x4(_mm_loadu_ps(row[r] + 4 * k));
    acc[r] = _mm512_fmadd_ps(x, qv, acc[r]);
  }
}

// Elements [off, off + len) of rows [0, R) against the quad's query vectors from qq on
// (QuadScoreTile): the k-th 4 elements of a row go to `even` for even k, to `odd` for odd k.
template <int R>
SHARDLM_TARGET_AVX512 inline void QuadPart(__m512 (&even)[R], __m512 (&odd)[R],
                                           const unsigned char* const* rows, int64_t off,
                                           int64_t len, const float* qq,
                                           const unsigned char* const* ahead, const RowsAhead& a) {
  const float* row[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) row[r] = reinterpret_cast<const float*>(rows[r]) + off;
  const int64_t quads = len / 4;
  int64_t k = 0;
  for (; k + 2 <= quads; k += 2) {
    QuadStep<R>(even, row, k, qq, off, ahead, a);
    QuadStep<R>(odd, row, k + 1, qq, off, ahead, a);
  }
  if (k < quads) QuadStep<R>(even, row, k, qq, off, ahead, a);
}

// Scores of rows [r0, r0 + R) for heads 4m … 4m + 3 from their quad vectors (ScoreArgs::qq,
// f32 rows). Lane 4h + j of a row's accumulators adds element 4k + j of the row times that
// of head h's query: each FMA takes 4 consecutive row elements, broadcast to the 4 heads by
// one load, against one vector of the quad's queries, so a score sums 4 lanes at the end
// where the lane-sum tile (ScoreTile) sums 16 per (row, head) score after 4 FMAs a 64-float
// head (a 16 × 16 tree, 46 shuffles and adds per 16 scores; here 9 per 16, as many FMAs). A
// row's quads alternate between two accumulators, so 4 rows keep 8 FMA chains in flight. A
// score is (even + odd), then lanes (0 + 2) + (1 + 3) of its head: the same arithmetic
// whatever R and the rows beside it.
template <int R>
SHARDLM_TARGET_AVX512 void QuadScoreTile(const ScoreArgs& a, int64_t r0, int64_t m) {
  static_assert(R == 1 || R == 4);
  __m512 even[R], odd[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
  const unsigned char* ahead_rows[R];
  const unsigned char* const* ahead = nullptr;
  if (a.ahead.rows != nullptr && m == 0) {  // the first quad's tiles request the rows ahead
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) ahead_rows[r] = RowAhead<F32Rows>(a.ahead, a.rows, r0 + r, 0);
    ahead = ahead_rows;
  }
  const float* qq = a.qq + 4 * m * (a.a_len + a.b_len);
  QuadPart<R>(even, odd, a.rows + r0, a.a_off, a.a_len, qq, ahead, a.ahead);
  if (a.b_len > 0) {
    QuadPart<R>(even, odd, a.rows + r0, a.b_off, a.b_len, qq + 4 * a.a_len, ahead, a.ahead);
  }
  float* s = a.scores + 4 * m * a.block + r0;
  if constexpr (R == 4) {
    __m512 t[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) t[r] = _mm512_add_ps(even[r], odd[r]);
    // In each head's 128-bit lane: c01 = [t0(0 + 2), t1(0 + 2), t0(1 + 3), t1(1 + 3)], c23
    // the same of rows 2 and 3, and the sum [row 0, 1, 2, 3]: (0 + 2) + (1 + 3) each.
    const __m512 c01 =
        _mm512_add_ps(_mm512_unpacklo_ps(t[0], t[1]), _mm512_unpackhi_ps(t[0], t[1]));
    const __m512 c23 =
        _mm512_add_ps(_mm512_unpacklo_ps(t[2], t[3]), _mm512_unpackhi_ps(t[2], t[3]));
    const __m512 sums =
        _mm512_add_ps(_mm512_shuffle_ps(c01, c23, 0x44), _mm512_shuffle_ps(c01, c23, 0xee));
    _mm_storeu_ps(s, _mm512_extractf32x4_ps(sums, 0));
    _mm_storeu_ps(s + a.block, _mm512_extractf32x4_ps(sums, 1));
    _mm_storeu_ps(s + 2 * a.block, _mm512_extractf32x4_ps(sums, 2));
    _mm_storeu_ps(s + 3 * a.block, _mm512_extractf32x4_ps(sums, 3));
  } else {
    const __m512 t = _mm512_add_ps(even[0], odd[0]);
    const __m512 c = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4e));  // lanes 0 + 2, 1 + 3
    const __m512 d = _mm512_add_ps(c, _mm512_permute_ps(c, 0xb1));  // (0 + 2) + (1 + 3)
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, d);
#pragma GCC unroll 4
    for (int h = 0; h < 4; ++h) s[h * a.block] = lanes[4 * h];
  }
}

template <typename Rows>
SHARDLM_TARGET_AVX512 void ScoresAvx512(const ScoreArgs& a) {
  int64_t h0 = 0;
  if constexpr (Rows::kQuads) {
    if (a.qq != nullptr) {
      for (; h0 + 4 <= a.g; h0 += 4) {
        int64_t r0 = 0;
        for (; r0 + 4 <= a.nb; r0 += 4) QuadScoreTile<4>(a, r0, h0 / 4);
        for (; r0 < a.nb; ++r0) QuadScoreTile<1>(a, r0, h0 / 4);
      }
    }
  }
  for (; h0 + 4 <= a.g; h0 += 4) ScoreHeads<4, Rows>(a, h0);
  switch (a.g - h0) {
    case 3: ScoreHeads<3, Rows>(a, h0); break;
    case 2: ScoreHeads<2, Rows>(a, h0); break;
    case 1: ScoreHeads<1, Rows>(a, h0); break;
    default: break;
  }
}

// One element e of R rows (buf[r][e]) against one qt row (at q, which then moves one row on):
// R·V FMAs. The pointer steps by a register add (the asm keeps GCC from computing e·stride for
// each unrolled e, 16 offsets that spilled to the stack).
template <int R, int V>
SHARDLM_TARGET_AVX512 inline void LaneStep(__m512 (&acc)[R][V], const float (&buf)[R][16], int e,
                                           const float*& q, int64_t stride) {
  __m512 qv[V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) qv[v] = _mm512_loadu_ps(q + 16 * v);
  q += stride;
  asm("" : "+r"(q));
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512 x = _mm512_set1_ps(buf[r][e]);
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(x, qv[v], acc[r][v]);
  }
}

// Elements [off, off + len) of rows [r0, r0 + R) against qt rows [k0, k0 + len), added to
// acc (LaneScoreTile).
template <int R, int V, typename Rows>
SHARDLM_TARGET_AVX512 inline void LanePart(__m512 (&acc)[R][V], const ScoreArgs& a, int64_t r0,
                                           int64_t v0, int64_t off, int64_t len, int64_t k0,
                                           int64_t seg) {
  alignas(64) float buf[R][16];
  __m512 scale[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    scale[r] = Rows::kScaled ? _mm512_set1_ps(RowScale(a.rows[r0 + r], a.scale_off, seg))
                             : _mm512_setzero_ps();
  }
  // The rows ahead (ScoreArgs::ahead), requested by the first lane vectors' tiles only (past 32
  // heads, the others read the same rows again).
  const bool request = a.ahead.rows != nullptr && v0 == 0;
  const unsigned char* ahead[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    ahead[r] = request ? RowAhead<Rows>(a.ahead, a.rows, r0 + r, a.scale_off, k0 == 0) : nullptr;
  }
  const int64_t stride = a.qt_stride;
  const float* qt = a.qt + k0 * stride + 16 * v0;
  for (int64_t k = 0; k < len; k += 16) {
    const int64_t n = len - k < 16 ? len - k : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      if (request && (k / 16) % kVectorsPerLine<Rows> == 0) {
        PrefetchAhead(a.ahead, ahead[r] + (off + k) * Rows::kBytes);
      }
      __m512 x = Rows::Load(m, a.rows[r0 + r] + (off + k) * Rows::kBytes);
      if constexpr (Rows::kScaled) x = _mm512_mul_ps(x, scale[r]);
      _mm512_store_ps(buf[r], x);
    }
    // The elements are broadcast from memory (a load each, `vbroadcastss`): left to itself, GCC
    // takes them from the stored vectors with a lane permute each, on the FMAs' pipes.
    asm("" : : "r"(buf) : "memory");
    const float* qk = qt + k * stride;
    if (n == 16) {
#pragma GCC unroll 16
      for (int e = 0; e < 16; ++e) LaneStep<R, V>(acc, buf, e, qk, stride);
    } else {
      for (int e = 0; e < n; ++e) LaneStep<R, V>(acc, buf, e, qk, stride);
    }
  }
}

// Scores of rows [r0, r0 + R) for the heads of lane vectors [v0, v0 + V), from the queries
// with the heads in lanes (ScoreArgs::qt): acc[r][v] lane l is the score of head 16·(v0 + v) + l.
// Every 16 elements of the R rows go to a small buffer first (as fp32: widened, and for int8
// scaled), from which each element is broadcast for V·16 heads: one base register for all R
// rows, the offsets immediates. Each score is one chain of FMAs in element order (the a part,
// then the b part), whatever R, V and the rows around it.
template <int R, int V, typename Rows>
SHARDLM_TARGET_AVX512 void LaneScoreTile(const ScoreArgs& a, int64_t r0, int64_t v0) {
  __m512 acc[R][V];
  SetZero(acc);
  LanePart<R, V, Rows>(acc, a, r0, v0, a.a_off, a.a_len, 0, a.a_seg);
  if (a.b_len > 0) LanePart<R, V, Rows>(acc, a, r0, v0, a.b_off, a.b_len, a.a_len, a.b_seg);
  // Back to [head, row]: through a buffer, the heads of each row one lane apiece.
  alignas(64) float out[R][16 * V];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm512_store_ps(out[r] + 16 * v, acc[r][v]);
  }
  const int64_t heads = a.g - 16 * v0 < 16 * V ? a.g - 16 * v0 : 16 * V;
  for (int64_t h = 0; h < heads; ++h) {
    float* s = a.scores + (16 * v0 + h) * a.block + r0;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) s[r] = out[r][h];
  }
}

template <int V, typename Rows>
SHARDLM_TARGET_AVX512 void LaneScoreRows(const ScoreArgs& a, int64_t v0) {
  constexpr int kRows = V == 1 ? 16 : 8;  // 16 accumulators
  int64_t r0 = 0;
  for (; r0 + kRows <= a.nb; r0 += kRows) LaneScoreTile<kRows, V, Rows>(a, r0, v0);
  for (; r0 + 4 <= a.nb; r0 += 4) LaneScoreTile<4, V, Rows>(a, r0, v0);
  for (; r0 < a.nb; ++r0) LaneScoreTile<1, V, Rows>(a, r0, v0);
}

template <typename Rows>
SHARDLM_TARGET_AVX512 void LaneScoresAvx512(const ScoreArgs& a) {
  const int64_t vectors = (a.g + 15) / 16;
  int64_t v0 = 0;
  for (; v0 + 2 <= vectors; v0 += 2) LaneScoreRows<2, Rows>(a, v0);
  if (v0 < vectors) LaneScoreRows<1, Rows>(a, v0);
}

// Columns [c, c + 16·NC) of heads [h0, h0 + H), the last 16 masked by m: H·NC accumulators
// stay in registers while all nb rows are added, each row vector loaded once for H heads and
// each weight broadcast once for NC column vectors. Every element still adds its rows in row
// order after the rescale, so NC changes no bit; it gives the FMAs H·NC independent chains
// (H alone, 4 for GQA-4, left the loop waiting on FMA latency). An int8 row's scale is folded
// into the row's weights (p · s, one rounding).
template <int H, int NC, typename Rows>
SHARDLM_TARGET_AVX512 inline void ValueTile(const ValueArgs& a, int64_t c, __mmask16 m,
                                            int64_t h0) {
  __m512 acc[H][NC];
#pragma GCC unroll 8
  for (int h = 0; h < H; ++h) {
    const __m512 alpha = _mm512_set1_ps(a.alpha[h0 + h]);
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) {
      const __mmask16 mj = j == NC - 1 ? m : static_cast<__mmask16>(0xffff);
      acc[h][j] = _mm512_mul_ps(
          _mm512_maskz_loadu_ps(mj, a.acc + (h0 + h) * a.acc_head + c + 16 * j), alpha);
    }
  }
  const float* p = a.p + h0 * a.block;
  // The rows ahead (ValueArgs::ahead), requested by the first heads' tiles only.
  const bool ahead = a.ahead.rows != nullptr && h0 == 0;
  for (int64_t r = 0; r < a.nb; ++r) {
    __m512 v[NC];
    const unsigned char* row_ahead =
        ahead ? RowAhead<Rows>(a.ahead, a.rows, r, a.scale_off, c == 0) : nullptr;
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) {
      const __mmask16 mj = j == NC - 1 ? m : static_cast<__mmask16>(0xffff);
      if (ahead && (c / 16 + j) % kVectorsPerLine<Rows> == 0) {
        PrefetchAhead(a.ahead, row_ahead + (a.v_off + c + 16 * j) * Rows::kBytes);
      }
      v[j] = Rows::Load(mj, a.rows[r] + (a.v_off + c + 16 * j) * Rows::kBytes);
    }
    const float s = Rows::kScaled ? RowScale(a.rows[r], a.scale_off, a.v_seg) : 1.0f;
#pragma GCC unroll 8
    for (int h = 0; h < H; ++h) {
      const __m512 w =
          _mm512_set1_ps(Rows::kScaled ? p[h * a.block + r] * s : p[h * a.block + r]);
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) acc[h][j] = _mm512_fmadd_ps(w, v[j], acc[h][j]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < H; ++h) {
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) {
      const __mmask16 mj = j == NC - 1 ? m : static_cast<__mmask16>(0xffff);
      _mm512_mask_storeu_ps(a.acc + (h0 + h) * a.acc_head + c + 16 * j, mj, acc[h][j]);
    }
  }
}

template <int H, int NC, typename Rows>
SHARDLM_TARGET_AVX512 void ValueColumns(const ValueArgs& a, int64_t h0) {
  constexpr __mmask16 kAll = 0xffff;
  int64_t c = 0;
  for (; c + 16 * NC <= a.v_len; c += 16 * NC) ValueTile<H, NC, Rows>(a, c, kAll, h0);
  for (; c + 16 <= a.v_len; c += 16) ValueTile<H, 1, Rows>(a, c, kAll, h0);
  if (c < a.v_len) {
    ValueTile<H, 1, Rows>(a, c, static_cast<__mmask16>((1u << (a.v_len - c)) - 1), h0);
  }
}

template <int H, typename Rows>
SHARDLM_TARGET_AVX512 void ValueHeads(const ValueArgs& a, int64_t h0) {
  // Column vectors per tile, as measured at 8k context on one thread with the widths
  // alternated call by call over cold rows (attention_bench's shapes):
  // - 5–8 heads (the latent families): 2; 1 is 5–7% slower, 3 and 4 no faster.
  // - ≤ 4 heads whose values the score pass has just brought into L1 (GTA-4): 2, 6% faster
  //   than 1 for f32, 10% for bf16 and int8; 4 no faster.
  // - ≤ 4 heads whose values come from L2 or memory (GQA-4, after the rows-first score pass):
  //   f32 keeps 1, one line per row and tile, a stride the L1 prefetcher follows (2 and 4
  //   were 7–10% slower); the narrow rows take 4 (a 64-column tile is one line of int8 or
  //   two of bf16), 12% faster for int8 and 16% for bf16 than 1.
  if constexpr (H > 4) {
    ValueColumns<H, 2, Rows>(a, h0);
  } else if (a.values_cached) {
    ValueColumns<H, 2, Rows>(a, h0);
  } else if constexpr (Rows::kBytes == 4) {
    ValueColumns<H, 1, Rows>(a, h0);
  } else {
    ValueColumns<H, 4, Rows>(a, h0);
  }
}

template <typename Rows>
SHARDLM_TARGET_AVX512 void ValuesAvx512(const ValueArgs& a) {
  int64_t h0 = 0;
  for (; h0 + 8 <= a.g; h0 += 8) ValueHeads<8, Rows>(a, h0);
  switch (a.g - h0) {
    case 7: ValueHeads<7, Rows>(a, h0); break;
    case 6: ValueHeads<6, Rows>(a, h0); break;
    case 5: ValueHeads<5, Rows>(a, h0); break;
    case 4: ValueHeads<4, Rows>(a, h0); break;
    case 3: ValueHeads<3, Rows>(a, h0); break;
    case 2: ValueHeads<2, Rows>(a, h0); break;
    case 1: ValueHeads<1, Rows>(a, h0); break;
    default: break;
  }
}

// e^x for 16 lanes (masked-off lanes compute garbage that callers ignore).
// x = n·ln2 + r with n = round(x·log2 e) and r in [−ln2/2, ln2/2] (ln2 split in a
// high part exact in fp32 products and a low correction, Cody–Waite), e^r by its
// degree-7 Taylor polynomial in Horner form (truncation < r⁸/8! ≈ 5e-9, 0.1 ulp),
// then 2^n applied exactly by vscalefps, which also underflows gracefully to 0.
// Inputs are clamped to [−104, 88.7]: below, e^x is 0 in fp32; above it
// overflows, which softmax never asks for (its arguments are ≤ 0). Rounding in the
// reduction and the Horner steps stays within a few ulp: the accuracy test in
// decode_core_test.cc checks ≤ kExpUlps against double exp.
SHARDLM_TARGET_AVX512 inline __m512 Exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 high: 12 bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606820309417232e-06f), r);   // ln2 − high
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

SHARDLM_TARGET_AVX512 void ExpAvx512(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t left = n - i;
    const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xffff)
                                   : static_cast<__mmask16>((1u << left) - 1);
    _mm512_mask_storeu_ps(y + i, m, Exp16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

// The softmax step of heads [h0, h0 + n), n ≤ C (4 or 16), V vectors per head's block
// (nb ≤ block = 16·V lanes). The heads' block maxima, their alphas and their block sums each
// come out of one transposing tree (base/avx512_reduce.h) and one Exp16 for all C heads; one
// head at a time, each was a chain of dependent shuffles and a broadcast exp of its own (17%
// of a GQA int8 step). At V = 1 every head gets the bits of the one-head form: the max is
// exact, Exp16 works lane by lane, each block sum is ReduceAdd's tree, and the running sum is
// a product then a sum (kept apart: no fused multiply-add). At V = 2 a head's two vectors
// are added lane by lane before that tree.
// Element h of the result: the tree maximum (kMax) or sum of v[h]'s 16 lanes, for C = 4 or 16
// heads (base/avx512_reduce.h).
template <bool kMax, int C>
SHARDLM_TARGET_AVX512 inline __m512 ReduceHeads(const __m512 (&v)[C]) {
  if constexpr (C == 16 && kMax) {
    return ReduceMax16x16(v);
  } else if constexpr (C == 16) {
    return ReduceAdd16x16(v);
  } else if constexpr (kMax) {
    return ReduceMax4x16(v);
  } else {
    return ReduceAdd4x16(v);
  }
}

template <int C, int V>
SHARDLM_TARGET_AVX512 void SoftmaxHeads(const SoftmaxArgs& a, int64_t h0, int64_t n) {
  static_assert(C == 4 || C == 16);
  static_assert(V == 1 || V == 2);
  // Lanes r < nb of each head's block, 16 per vector.
  const uint32_t rows = a.nb >= 32 ? 0xffffffffu : (1u << a.nb) - 1;
  __mmask16 m[V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) m[v] = static_cast<__mmask16>(rows >> (16 * v));
  const __mmask16 heads = static_cast<__mmask16>((1u << n) - 1);
  const __m512 scale = _mm512_set1_ps(a.scale);
  const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());
  // Scaled scores; lanes ≥ nb, and heads ≥ n, are −inf, which no max picks.
  __m512 s[C][V];
  __m512 lane_max[C];
#pragma GCC unroll 16
  for (int h = 0; h < C; ++h) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      s[h][v] = h < n ? _mm512_mask_mul_ps(
                            neg_inf, m[v],
                            _mm512_maskz_loadu_ps(m[v], a.scores + (h0 + h) * a.block + 16 * v),
                            scale)
                      : neg_inf;
    }
    lane_max[h] = V == 1 ? s[h][0] : _mm512_max_ps(s[h][0], s[h][V - 1]);
  }
  const __m512 block_max = ReduceHeads<true>(lane_max);
  // Element h: the running max m, the new one m' = (block max > m ? block max : m).
  const __m512 old = _mm512_maskz_loadu_ps(heads, a.max + h0);
  const __m512 m_new = _mm512_max_ps(block_max, old);
  __m512 lane_sum[C];
#pragma GCC unroll 16
  for (int h = 0; h < C; ++h) {
    if (h < n) {
      const __m512 mh = _mm512_permutexvar_ps(_mm512_set1_epi32(h), m_new);
      __m512 p[V];
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        p[v] = _mm512_maskz_mov_ps(m[v], Exp16(_mm512_sub_ps(s[h][v], mh)));
        _mm512_mask_storeu_ps(a.scores + (h0 + h) * a.block + 16 * v, m[v], p[v]);
      }
      lane_sum[h] = V == 1 ? p[0] : _mm512_add_ps(p[0], p[V - 1]);
    } else {
      lane_sum[h] = _mm512_setzero_ps();
    }
  }
  const __m512 block_sum = ReduceHeads<false>(lane_sum);
  // alpha = e^(m − m'), 0 where m = −inf (the first block).
  const __mmask16 seen = _mm512_cmp_ps_mask(old, neg_inf, _CMP_NEQ_UQ);
  const __m512 alpha = _mm512_maskz_mov_ps(seen, Exp16(_mm512_sub_ps(old, m_new)));
  __m512 scaled_sum = _mm512_mul_ps(_mm512_maskz_loadu_ps(heads, a.sum + h0), alpha);
  asm("" : "+v"(scaled_sum));  // keeps the product and the sum two roundings
  _mm512_mask_storeu_ps(a.sum + h0, heads, _mm512_add_ps(scaled_sum, block_sum));
  _mm512_mask_storeu_ps(a.alpha + h0, heads, alpha);
  _mm512_mask_storeu_ps(a.max + h0, heads, m_new);
}

template <int V>
SHARDLM_TARGET_AVX512 void SoftmaxBlocks(const SoftmaxArgs& a) {
  int64_t h0 = 0;
  for (; a.g - h0 >= 8; h0 += 16) SoftmaxHeads<16, V>(a, h0, a.g - h0 < 16 ? a.g - h0 : 16);
  for (; h0 < a.g; h0 += 4) SoftmaxHeads<4, V>(a, h0, a.g - h0 < 4 ? a.g - h0 : 4);
}

SHARDLM_TARGET_AVX512 void SoftmaxAvx512(const SoftmaxArgs& a) {
  static_assert(kBlock == 16 && kLongBlock == 32, "one or two zmm per head and block");
  if (a.block == kLongBlock) {
    SoftmaxBlocks<2>(a);
  } else {
    SoftmaxBlocks<1>(a);
  }
}

}  // namespace

DecodeKernels Avx512Kernels() {
  return {{&ScoresAvx512<F32Rows>, &ScoresAvx512<Bf16Rows>, &ScoresAvx512<Int8Rows>},
          {&LaneScoresAvx512<F32Rows>, &LaneScoresAvx512<Bf16Rows>, &LaneScoresAvx512<Int8Rows>},
          {F32Rows::kQuads, Bf16Rows::kQuads, Int8Rows::kQuads},
          &SoftmaxAvx512,
          {&ValuesAvx512<F32Rows>, &ValuesAvx512<Bf16Rows>, &ValuesAvx512<Int8Rows>},
          &ExpAvx512,
          "avx512"};
}

}  // namespace shardlm::attention_internal

#pragma GCC diagnostic pop

#else  // not x86-64: only the portable kernels exist.

namespace shardlm::attention_internal {
DecodeKernels Avx512Kernels() { return PortableKernels(); }
}  // namespace shardlm::attention_internal

#endif
