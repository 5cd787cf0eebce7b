// AVX-512 VNNI and AVX2 (with or without AVX-VNNI) kernels of the block-quantized matmul
// (kernels/matmul_quant_internal.h). Every path computes each block's dot product as an exact
// int32 and then the contract's one FMA per block, so they all give the naive reference's bits.
//
// Unsigned × signed bytes: vpdpbusd (and vpmaddubsw) multiply an unsigned byte by a signed one.
//  * AVX-512 VNNI (both formats) and the AVX2 paths' Q4_0: the stored weight is the unsigned
//    side, x the signed one: the Q4_0 nibble q (0…15), the Q8_0 byte q + 128 (kernels/quant.h).
//    The bias, 8·Σx or 128·Σx, comes off each block's sum (AVX-512: the int32 sums start at
//    minus it; AVX2: subtracted afterwards). It is the x quantization's aux value, made once
//    per x row, so it costs nothing per weight. (The AVX-512 Q8_0 kernel used to store x + 128
//    and take off 128·Σw instead: one more vpdpbusd per weight vector, which at n = 1 doubled
//    its vpdpbusd count.)
//  * The AVX2 paths' Q8_0: vpmaddubsw's pairs of (q + 128)·x (up to 2·255·127) would saturate,
//    so the weight is unbiased to q first (one XOR); |q| is the unsigned side and x takes q's
//    sign (vpsignb): q = −128 gives 128, right as an unsigned byte, and x stays in [−127, 127],
//    so the pairs (≤ 2·128·127) never saturate. AVX-VNNI's vpdpbusd gets the same operands
//    (taking (q + 128, x) as AVX-512 does would save the XOR, abs and sign there).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/matmul_quant_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12's unmasked AVX-512 intrinsics pass an "undefined" source vector that trips
// -Wmaybe-uninitialized once inlined (as in attention/decode_kernels_x86.cc).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define SHARDLM_TARGET_Q512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define SHARDLM_TARGET_Q256 __attribute__((target("avx2,fma,f16c")))

namespace shardlm::matmul_internal {

SHARDLM_TARGET_Q512 void QuantizeXRowAvx512(const float* x, int64_t in, DType format,
                                            uint8_t* dst) {
  const int64_t nb = in / kQuantBlock;
  const int32_t bias = QuantWeightBias(format);
  const __m512 inf = _mm512_set1_ps(__builtin_inff());
  for (int64_t ch = 0; ch * 16 < nb; ++ch) {
    uint8_t* chunk = dst + ch * kQxChunkBytes;
    alignas(64) uint8_t natural[512];  // the chunk's quants, block after block
    alignas(64) float d[16];
    alignas(64) int32_t aux[16];
    _mm512_store_ps(d, _mm512_setzero_ps());
    _mm512_store_si512(aux, _mm512_setzero_si512());
    for (int i = 0; i < 8; ++i) _mm512_store_si512(natural + 64 * i, _mm512_setzero_si512());
    const int64_t m = std::min<int64_t>(16, nb - ch * 16);
    for (int64_t j = 0; j < m; ++j) {
      const float* xb = x + (ch * 16 + j) * kQuantBlock;
      const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
      const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
      // |x| ≥ inf or unordered: a non-finite x.
      if ((_mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ)) != 0) {
        d[j] = __builtin_nanf("");
        _mm256_store_si256(reinterpret_cast<__m256i*>(natural + 32 * j), _mm256_setzero_si256());
        continue;
      }
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      d[j] = amax / 127.0f;
      const __m512 vid = _mm512_set1_ps(id);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
      aux[j] = bias * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      const __m256i bytes = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm512_cvtepi32_epi8(q0)), _mm512_cvtepi32_epi8(q1), 1);
      _mm256_store_si256(reinterpret_cast<__m256i*>(natural + 32 * j), bytes);
    }
    // Vector v takes dword v of each block: a gather of dwords 8j + v.
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(8));
    for (int v = 0; v < 8; ++v) {
      const __m512i g = _mm512_i32gather_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(v)), natural, 4);
      _mm512_storeu_si512(chunk + 64 * v, g);
    }
    std::memcpy(chunk + kQxScaleOffset, d, sizeof(d));
    std::memcpy(chunk + kQxAuxOffset, aux, sizeof(aux));
  }
}

SHARDLM_TARGET_Q256 void QuantizeXRowAvx2(const float* x, int64_t in, DType format, uint8_t* dst) {
  const int64_t nb = in / kQuantBlock;
  const int32_t bias = QuantWeightBias(format);
  std::memset(dst, 0, static_cast<size_t>(QxRowBytes(in)));  // past the last block: zeros
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  // packs_epi32 then packs_epi16 leave the 8 dwords of 4 quants in the order 0, 2, 4, 6, 1, 3,
  // 5, 7 of the block; this puts them back.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kQuantBlock;
    uint8_t* chunk = dst + (b / 16) * kQxChunkBytes;
    const int64_t j = b % 16;
    __m256 v[4], a[4];
    __m256 bad = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      a[i] = _mm256_and_ps(v[i], abs_mask);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a[i], inf, _CMP_NLT_UQ));  // ±inf or NaN
    }
    float d;
    int32_t aux = 0;
    if (_mm256_movemask_ps(bad) != 0) {
      d = __builtin_nanf("");  // quants 0 (the memset), aux 0
    } else {
      __m256 m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      d = amax / 127.0f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i q[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i)
        q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));  // ties to even
      const __m256i sum4 =
          _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum4), _mm256_extracti128_si256(sum4, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      aux = bias * _mm_cvtsi128_si32(s4);
      // |q| ≤ 127: the saturating packs keep every value.
      const __m256i bytes = _mm256_permutevar8x32_epi32(
          _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])),
          order);
      alignas(32) uint32_t pieces[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(pieces), bytes);
#pragma GCC unroll 8
      for (int e = 0; e < 8; ++e) std::memcpy(chunk + 64 * e + 4 * j, &pieces[e], 4);
    }
    std::memcpy(chunk + kQxScaleOffset + 4 * j, &d, sizeof(d));
    std::memcpy(chunk + kQxAuxOffset + 4 * j, &aux, sizeof(aux));
  }
}

namespace {

// Whether a tile prefetches weights at all, fixed per call, so that a tile which does not
// (at n = 512, 7 of a 4 × 4 tile's 8 row blocks) carries no test per line: those tests were
// about 130 of the ~880 instructions per chunk of a 4 × 4 Q8_0 tile. A tile that prefetches
// keeps the per-line tests of its two offsets. (Making those compile-time too, one variant per
// offset pair, let the one-row Q4_0 tile issue its loads and prefetches more densely and
// made it 15–30% slower from memory at in = 1024 on a Zen 4 core, for reasons not found.)
enum PrefetchPlan { kPrefetchNone, kPrefetchByArgs };

// The lines at p + l1 into L1 and p + l2 into L2, each when its offset is not 0 (kPlan =
// kPrefetchByArgs). The empty volatile asm keeps GCC from deducing that a function made only
// of prefetches is `const` and deleting its calls (see PrefetchTurn in matmul_x86.cc).
template <PrefetchPlan kPlan>
inline void PrefetchLine(const uint8_t* p, int64_t l1, int64_t l2) {
  if constexpr (kPlan == kPrefetchByArgs) {
    if (l1 != 0) _mm_prefetch(reinterpret_cast<const char*>(p + l1), _MM_HINT_T0);
    if (l2 != 0) _mm_prefetch(reinterpret_cast<const char*>(p + l2), _MM_HINT_T1);
  }
  asm volatile("");
}

struct QuantAvx512Vnni {
  // The lane tree for 16 sums at once (matmul_x86.cc's, tested bit for bit against ReduceLanes).
  static constexpr int kReduceGroup = 4;  // ReduceSumsAvx512's
  static constexpr bool kZeroAcc = true;  // Tile honours QTileArgs::first_block
  static constexpr bool kFirstBlockPrefetches = true;
  static void ReduceSums(const float* acc, int64_t count, float* sums) {
    ReduceSumsAvx512(acc, count, sums);
  }
  static void QuantizeX(const float* x, int64_t in, DType format, uint8_t* dst) {
    QuantizeXRowAvx512(x, in, format, dst);
  }

  // 64 bytes of a chunk's weights: a plain load (kFull), else the m blocks' bytes masked by
  // bm. (A function, not a lambda: a lambda does not take its caller's target attribute.)
  template <bool kFull>
  __attribute__((always_inline)) SHARDLM_TARGET_Q512 static inline __m512i LoadBlocks(
      const uint8_t* p, __mmask64 bm) {
    if constexpr (kFull) {
      return _mm512_loadu_si512(p);
    } else {
      return _mm512_maskz_loadu_epi8(bm, p);
    }
  }

  template <DType kFormat, int kR, int kC, int kCStride>
  SHARDLM_TARGET_Q512 static void Tile(const QTileArgs& t) {
    if (t.prefetch_offset == 0 && t.l2_prefetch_offset == 0) {
      PlannedTile<kFormat, kR, kC, kCStride, kPrefetchNone>(t);
    } else {
      PlannedTile<kFormat, kR, kC, kCStride, kPrefetchByArgs>(t);
    }
  }

  template <DType kFormat, int kR, int kC, int kCStride, PrefetchPlan kPlan>
  SHARDLM_TARGET_Q512 static void PlannedTile(const QTileArgs& t) {
    if constexpr (kR == 1) {
      RowAfterRow<kFormat, kC, kPlan>(t);
    } else {
      ChunkAfterChunk<kFormat, kR, kC, kCStride, kPlan>(t);
    }
  }

  // R > 1 rows: each chunk of the K block for all C weight rows before the next chunk.
  template <DType kFormat, int kR, int kC, int kCStride, PrefetchPlan kPlan>
  SHARDLM_TARGET_Q512 static void ChunkAfterChunk(const QTileArgs& t) {
    // The f32 partial sums stay in registers over the K block when they fit beside the
    // R·C int32 sums; else each chunk reads and writes them in `acc`.
    __m512 a[kR][kC];
    if constexpr (kAccInRegisters<kR, kC>) {
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) {
          a[r][c] = t.first_block ? _mm512_setzero_ps()
                                  : _mm512_load_ps(t.acc + (r * kCStride + c) * 16);
        }
      }
    }
    for (int ch = 0; ch < t.chunks; ++ch) {
      const int64_t m = ch == t.chunks - 1 ? t.last_blocks : 16;
      if (m == 16) {
        Chunk<kFormat, kR, kC, kCStride, true, kPlan>(t, ch, 16, a);
      } else {
        Chunk<kFormat, kR, kC, kCStride, false, kPlan>(t, ch, m, a);
      }
    }
    if constexpr (kAccInRegisters<kR, kC>) {
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) _mm512_store_ps(t.acc + (r * kCStride + c) * 16, a[r][c]);
      }
    }
  }
  template <int kR, int kC>
  static constexpr bool kAccInRegisters = kR * kC <= 12;

  // The scales of the pairs the quants are prefetched for, of the weight row at `row`: 128
  // bytes at most, the two lines from their start (a third line, where rows are not
  // line-aligned, is left to the loads; a prefetch past the buffer is harmless).
  __attribute__((always_inline)) static inline void PrefetchScales(const QTileArgs& t,
                                                                   const uint8_t* row) {
    const char* here = reinterpret_cast<const char*>(row + t.scale_offset + 32 * t.chunk0);
    const int64_t s1 = t.scale_prefetch_offset, s2 = t.l2_scale_prefetch_offset;
    if (s1 != 0) {
      _mm_prefetch(here + s1, _MM_HINT_T0);
      _mm_prefetch(here + s1 + 64, _MM_HINT_T0);
    }
    if (s2 != 0) {
      _mm_prefetch(here + s2, _MM_HINT_T1);
      _mm_prefetch(here + s2 + 64, _MM_HINT_T1);
    }
  }

  // A one-row tile takes its weight rows one after another, each row's chunks in order: where
  // the K block is the whole row (in ≤ 2048), the tile reads its C rows in address order,
  // quants then scales, a stream the hardware prefetchers follow. Taking the C rows chunk by
  // chunk instead (as the R > 1 tiles do, to load each x vector once for C rows) leaves the
  // 1 × 6 Q4_0 tile jumping back and forth across 3.4 KB. On a Zen 4 core (`matmul_bench
  // --hugepages`, W from memory, n = 1, alternated) Q4_0 went from 56–59% to 89–97% of a
  // plain read at 65536 × 1024, 79–81% to 96–99% at 16384 × 2816 and 66–70% to 74–79% at
  // 8192² (two K blocks per row). The same order for the f32 and bf16 tiles, whose lane
  // sums are one FMA chain per row, was slower for F32 and mixed for BF16 (not done). The bits
  // are the same: a block's int32 sum is exact in any order, and each f32 lane still folds
  // the row's chunks in chunk order.
  template <DType kFormat, int kC, PrefetchPlan kPlan>
  SHARDLM_TARGET_Q512 static void RowAfterRow(const QTileArgs& t) {
    for (int c = 0; c < kC; ++c) {
      const uint8_t* row = t.w + c * t.w_stride;
      asm("" : "+r"(row));
      const uint8_t* scales = row + t.scale_offset + 32 * t.chunk0;
      if constexpr (kPlan != kPrefetchNone) PrefetchScales(t, row);
      __m512 a = t.first_block ? _mm512_setzero_ps() : _mm512_load_ps(t.acc + c * 16);
      for (int ch = 0; ch < t.chunks; ++ch) {
        const int64_t m = ch == t.chunks - 1 ? t.last_blocks : 16;
        if (m == 16) {
          a = RowChunk<kFormat, true, kPlan>(t, row, scales, ch, 16, a);
        } else {
          a = RowChunk<kFormat, false, kPlan>(t, row, scales, ch, m, a);
        }
      }
      _mm512_store_ps(t.acc + c * 16, a);
    }
  }

  // One chunk of m blocks of one weight row against the tile's x row, folded into its f32
  // lanes `a` (Chunk's arithmetic for R = C = 1). The int32 sums run in two chains, the even
  // and the odd vectors, added before the fold: the same integers, half the latency. (Each row
  // through Chunk<1, 1> instead, one chain, read Q4_0 at 62–71% of a plain read against
  // 87–92% at 65536 × 1024, four alternated runs on a Zen 4 core; Q8_0 was the same.)
  template <DType kFormat, bool kFull, PrefetchPlan kPlan>
  __attribute__((always_inline)) SHARDLM_TARGET_Q512 static inline __m512 RowChunk(
      const QTileArgs& t, const uint8_t* row, const uint8_t* scales, int ch, int64_t m, __m512 a) {
    const __mmask64 bm = kFull ? ~__mmask64{0} : (__mmask64{1} << (4 * m)) - 1;
    const int64_t vs = kFull ? 64 : 4 * m;  // as in Chunk
    const int64_t pf = t.prefetch_offset, pf2 = t.l2_prefetch_offset;
    const uint8_t* wq = row + WChunkOffset(kFormat, t.chunk0 + ch);
    const uint8_t* xc = t.x + ch * kQxChunkBytes;
    __m512i even = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_load_si512(xc + kQxAuxOffset));
    __m512i odd = _mm512_setzero_si512();
    if constexpr (kFormat == DType::kQ8_0) {
#pragma GCC unroll 4
      for (int v = 0; v < 8; v += 2) {
        PrefetchLine<kPlan>(wq + v * 64, pf, pf2);
        PrefetchLine<kPlan>(wq + (v + 1) * 64, pf, pf2);
        even = _mm512_dpbusd_epi32(even, LoadBlocks<kFull>(wq + v * vs, bm),
                                   _mm512_load_si512(xc + v * 64));
        odd = _mm512_dpbusd_epi32(odd, LoadBlocks<kFull>(wq + (v + 1) * vs, bm),
                                  _mm512_load_si512(xc + (v + 1) * 64));
      }
    } else {
      const __m512i low = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        PrefetchLine<kPlan>(wq + g * 64, pf, pf2);
        const __m512i raw = LoadBlocks<kFull>(wq + g * vs, bm);
        even = _mm512_dpbusd_epi32(even, _mm512_and_si512(raw, low),
                                   _mm512_load_si512(xc + 2 * g * 64));
        odd = _mm512_dpbusd_epi32(odd, _mm512_and_si512(_mm512_srli_epi16(raw, 4), low),
                                  _mm512_load_si512(xc + (2 * g + 1) * 64));
      }
    }
    const auto sm = static_cast<__mmask16>(kFull ? 0xffffu : (1u << m) - 1);
    const __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(sm, scales + 32 * ch));
    const __m512 dx = _mm512_load_ps(reinterpret_cast<const float*>(xc + kQxScaleOffset));
    const __m512 f = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
    return _mm512_fmadd_ps(f, _mm512_mul_ps(dw, dx), a);
  }

  // One chunk of m blocks; kFull (m = 16) uses plain loads, the row's last chunk masked ones.
  template <DType kFormat, int kR, int kC, int kCStride, bool kFull, PrefetchPlan kPlan>
  __attribute__((always_inline)) SHARDLM_TARGET_Q512 static inline void Chunk(
      const QTileArgs& t, int ch, int64_t m, __m512 (&a)[kR][kC]) {
    const int64_t ws = t.w_stride, xs = t.x_stride, pf = t.prefetch_offset,
                  pf2 = t.l2_prefetch_offset;
    {
      const __mmask64 bm = kFull ? ~__mmask64{0} : (__mmask64{1} << (4 * m)) - 1;
      const int64_t vs = kFull ? 64 : 4 * m;  // bytes of one vector (Q8_0) or nibble group (Q4_0)
      const uint8_t* wq = t.w + WChunkOffset(kFormat, t.chunk0 + ch);
      const uint8_t* xc = t.x + ch * kQxChunkBytes;
      if (kPlan != kPrefetchNone && ch == 0) {
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) PrefetchScales(t, t.w + c * ws);
      }
      // One pointer per weight row and x row, opaque to the compiler: else GCC precomputes
      // an address for every (row, vector) pair of the unrolled chunk, which do not fit the
      // general registers, and reloads them from spill slots before each load (at n = 512
      // that was a third of the 4 × 4 Q8_0 tile's instructions).
      const uint8_t* wr[kC];
      const uint8_t* xr[kR];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        wr[c] = wq + c * ws;
        asm("" : "+r"(wr[c]));
      }
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        xr[r] = xc + r * xs;
        asm("" : "+r"(xr[r]));
      }
      // Each block's int32 sum starts at −aux (the x row's bias term), so the exact sum that
      // comes out is the block's dot product less the bias: one negation per x row and chunk
      // instead of one subtraction per (x row, weight row) pair (the same integers).
      __m512i s[kR][kC];
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m512i neg_aux =
            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_load_si512(xr[r] + kQxAuxOffset));
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) s[r][c] = neg_aux;
      }
      if constexpr (kFormat == DType::kQ8_0) {
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) {
          __m512i wv[kC];
#pragma GCC unroll 8
          for (int c = 0; c < kC; ++c) {
            PrefetchLine<kPlan>(wr[c] + v * 64, pf, pf2);
            wv[c] = LoadBlocks<kFull>(wr[c] + v * vs, bm);
            asm("" : "+v"(wv[c]));
          }
#pragma GCC unroll 8
          for (int r = 0; r < kR; ++r) {
            __m512i xv = _mm512_load_si512(xr[r] + v * 64);
            asm("" : "+v"(xv));
#pragma GCC unroll 8
            for (int c = 0; c < kC; ++c) s[r][c] = _mm512_dpbusd_epi32(s[r][c], wv[c], xv);
          }
        }
      } else {
        const __m512i low = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
        for (int g = 0; g < 4; ++g) {
#pragma GCC unroll 2
          for (int half = 0; half < 2; ++half) {
            __m512i wv[kC];
#pragma GCC unroll 8
            for (int c = 0; c < kC; ++c) {
              if (half == 0) PrefetchLine<kPlan>(wr[c] + g * 64, pf, pf2);
              const __m512i raw = LoadBlocks<kFull>(wr[c] + g * vs, bm);
              wv[c] = _mm512_and_si512(half == 0 ? raw : _mm512_srli_epi16(raw, 4), low);
              asm("" : "+v"(wv[c]));
            }
#pragma GCC unroll 8
            for (int r = 0; r < kR; ++r) {
              __m512i xv = _mm512_load_si512(xr[r] + (2 * g + half) * 64);
              asm("" : "+v"(xv));
#pragma GCC unroll 8
              for (int c = 0; c < kC; ++c) s[r][c] = _mm512_dpbusd_epi32(s[r][c], wv[c], xv);
            }
          }
        }
      }
      // Fold the chunk's block sums into the f32 lanes: one FMA per block.
      const uint8_t* scale_row = t.w + t.scale_offset + 32 * (t.chunk0 + ch);
      const bool zero_sums = t.first_block && ch == 0;
      float* const acc_base = t.acc;
      const auto sm = static_cast<__mmask16>(kFull ? 0xffffu : (1u << m) - 1);
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        const uint8_t* scales = scale_row + c * ws;
        const __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(sm, scales));
#pragma GCC unroll 8
        for (int r = 0; r < kR; ++r) {
          const __m512 dx = _mm512_load_ps(reinterpret_cast<const float*>(xr[r] + kQxScaleOffset));
          const __m512 f = _mm512_cvtepi32_ps(s[r][c]);
          if constexpr (kAccInRegisters<kR, kC>) {
            a[r][c] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, dx), a[r][c]);
          } else {
            float* acc = acc_base + (r * kCStride + c) * 16;
            const __m512 sum = zero_sums ? _mm512_setzero_ps() : _mm512_load_ps(acc);
            _mm512_store_ps(acc, _mm512_fmadd_ps(f, _mm512_mul_ps(dw, dx), sum));
          }
        }
      }
    }
  }
};

// 8 lanes per ymm: a chunk is done as two halves, blocks 0–7 (bytes 0–31 of each vector) and
// 8–15 (bytes 32–63), each folded into its 8 of the 16 f32 lanes.
template <bool kVnni>
struct QuantAvx2 {
  static constexpr int kReduceGroup = 1;
  static constexpr bool kZeroAcc = true;  // Tile honours QTileArgs::first_block
  // With more than one row block, only PrefetchQTurn's: the first block's L1 prefetch of the
  // next pair as well made Q8_0 at n = 4 17% slower and Q4_0 at n = 16 4% (Zen 3).
  static constexpr bool kFirstBlockPrefetches = false;
  static void ReduceSums(const float* acc, int64_t count, float* sums) {
    ReduceSumsAvx2<16>(acc, count, sums);
  }
  static void QuantizeX(const float* x, int64_t in, DType format, uint8_t* dst) {
    QuantizeXRowAvx2(x, in, format, dst);
  }

  // 32 bytes of a half chunk: a plain load (kFull), else the dwords that dm selects.
  template <bool kFull>
  __attribute__((always_inline)) SHARDLM_TARGET_Q256 static inline __m256i LoadHalf(
      const uint8_t* p, __m256i dm) {
    if constexpr (kFull) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    } else {
      return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), dm);
    }
  }

  // Requests the `bytes` from p on (a weight row of the next tile) into L1.
  static void PrefetchRow(const uint8_t* p, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64)
      _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T0);
  }

  // isum += the sum of the 4 products u·s in each dword (u unsigned, s signed bytes; the
  // pairs never saturate). AVX-VNNI's vpdpbusd is written as assembly so that this function
  // keeps the plain AVX2 target: it only runs where Cpu().avx_vnni says the CPU has it.
  SHARDLM_TARGET_Q256 static __m256i Dot(__m256i isum, __m256i u, __m256i s) {
    if constexpr (kVnni) {
      asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(isum) : "x"(u), "x"(s));
      return isum;
    } else {
      const __m256i pairs = _mm256_maddubs_epi16(u, s);
      return _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
  }

  template <DType kFormat, int kR, int kC, int kCStride>
  SHARDLM_TARGET_Q256 static void Tile(const QTileArgs& t) {
    if constexpr (kR == 1 && kC > 1) {
      // One x row: the weight rows one after another, as QuantAvx512Vnni::RowAfterRow (the
      // same bits). On a Zen 4 core (`matmul_bench --all-paths`, 65536 × 1024, n = 1, W from
      // memory, alternated) Q4_0 in 1 × 4 went from 18–19% to 48–54% of a plain read and
      // Q8_0 in 1 × 2 from 21–23% to 54–56%.
      if (t.first_block) std::fill(t.acc, t.acc + kC * 16, 0.0f);
      for (int c = 0; c < kC; ++c) {
        QTileArgs row = t;
        row.w = t.w + c * t.w_stride;
        row.acc = t.acc + c * 16;
        row.first_block = false;                           // zeroed above
        row.prefetch_offset = row.l2_prefetch_offset = 0;  // the whole row, here
        if (t.prefetch_offset != 0) PrefetchRow(row.w + t.prefetch_offset, t.w_stride);
        PlannedTile<kFormat, 1, 1, 1, kPrefetchNone>(row);
      }
    } else if (t.prefetch_offset == 0 && t.l2_prefetch_offset == 0) {
      PlannedTile<kFormat, kR, kC, kCStride, kPrefetchNone>(t);
    } else {
      PlannedTile<kFormat, kR, kC, kCStride, kPrefetchByArgs>(t);
    }
  }

  template <DType kFormat, int kR, int kC, int kCStride, PrefetchPlan kPlan>
  SHARDLM_TARGET_Q256 static void PlannedTile(const QTileArgs& t) {
    int ch = 0;
    if constexpr (!kVnni && kR == 2 && kC == (kFormat == DType::kQ4_0 ? 4 : 2) &&
                  kPlan == kPrefetchNone) {
      const int full = t.chunks - (t.last_blocks < 16 ? 1 : 0);
      if (full > 0 && t.first_block) FullChunk<kFormat, kCStride, true>(t, ch++);
      for (; ch < full; ++ch) FullChunk<kFormat, kCStride, false>(t, ch);
    }
    for (; ch < t.chunks; ++ch) {
      const int64_t m = ch == t.chunks - 1 ? t.last_blocks : 16;
      for (int h = 0; h < 2; ++h) {
        const int mh = static_cast<int>(std::clamp<int64_t>(m - 8 * h, 0, 8));
        if (mh == 0) continue;
        // The f32 sums start at +0: the full halves of a tile's first chunk in a body of
        // Half that starts there, others from stored zeros. (A one-row tile stores its rows'
        // zeros in Tile: there the second body, taken for each row's first chunk, made the
        // batch-1 Q4_0 matmul 6–15% slower.)
        const bool zero = t.first_block && ch == 0;
        if (mh == 8 && zero && kR > 1) {
          Half<kFormat, kR, kC, kCStride, true, true, kPlan>(t, ch, m, h, 8);
          continue;
        }
        if (zero) {
#pragma GCC unroll 8
          for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
            for (int c = 0; c < kC; ++c) {
              _mm256_store_ps(t.acc + (r * kCStride + c) * 16 + 8 * h, _mm256_setzero_ps());
            }
          }
        }
        if (mh == 8) {
          Half<kFormat, kR, kC, kCStride, true, false, kPlan>(t, ch, m, h, 8);
        } else {
          Half<kFormat, kR, kC, kCStride, false, false, kPlan>(t, ch, m, h, mh);
        }
      }
    }
  }

  // Without VNNI, one whole chunk (16 blocks) of a Q4_0 2 × 4 or Q8_0 2 × 2 tile where the tile
  // does not prefetch (several row blocks: n > 2): Half's operations, so the same bits (the
  // sums are exact integers), with each half's sums in one block of assembly (Q4Sums2x4,
  // Q8Sums2x2) and the fold in registers. From L1 on a Zen 3 core, Half's intrinsics ran Q4_0
  // at 0.65–0.72 `vpmaddubsw` a cycle and Q8_0 at 0.27 (GCC kept the sums' array on the stack
  // between its paths, and interleaved loads and unpacking across columns against the order
  // written); these run at 0.85–0.89 and 0.40–0.48. There `vpmaddubsw`, `vpsrlw`, `vpsignb`,
  // `vpmaddwd` and the fold's multiplies share two pipes: at most about 1.1 and 0.67 a cycle.
  // At n ≤ 2 the tile streams W from memory with its own prefetches, and there the Q4_0 body
  // was 5–18% slower than Half's, so those tiles keep Half. The chunk's scales are loaded
  // first: they are their own stream, away from the quants.
  template <DType kFormat, int kCStride, bool kZero>
  __attribute__((always_inline)) SHARDLM_TARGET_Q256 static inline void FullChunk(
      const QTileArgs& t, int ch) {
    constexpr int kC = kFormat == DType::kQ4_0 ? 4 : 2;
    const int64_t ws = t.w_stride, xs = t.x_stride;
    const uint8_t* wq = t.w + WChunkOffset(kFormat, t.chunk0 + ch);
    const uint8_t* xc = t.x + ch * kQxChunkBytes;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i sbits[kC];  // the 16 f16 scales of each row's chunk
#pragma GCC unroll 4
    for (int c = 0; c < kC; ++c) {
      sbits[c] = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(t.w + c * ws + t.scale_offset + 32 * (t.chunk0 + ch)));
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256i s[2][kC];
#pragma GCC unroll 2
      for (int r = 0; r < 2; ++r) {
#pragma GCC unroll 4
        for (int c = 0; c < kC; ++c) s[r][c] = _mm256_setzero_si256();
      }
      if constexpr (kFormat == DType::kQ4_0) {
        Q4Sums2x4(wq + 32 * h, ws, xc + 32 * h, xs, _mm256_set1_epi8(0x0f), s);
#pragma GCC unroll 2
        for (int r = 0; r < 2; ++r) {
#pragma GCC unroll 4
          for (int c = 0; c < kC; ++c) {
            s[r][c] = _mm256_sub_epi32(_mm256_madd_epi16(s[r][c], ones),
                                       _mm256_load_si256(reinterpret_cast<const __m256i*>(
                                           xc + r * xs + kQxAuxOffset + 32 * h)));
          }
        }
      } else {
        Q8Sums2x2(wq + 32 * h, ws, xc + 32 * h, xs, ones, s);
      }
#pragma GCC unroll 4
      for (int c = 0; c < kC; ++c) {
        const __m256 dw = _mm256_cvtph_ps(h == 0 ? _mm256_castsi256_si128(sbits[c])
                                                 : _mm256_extracti128_si256(sbits[c], 1));
#pragma GCC unroll 2
        for (int r = 0; r < 2; ++r) {
          const uint8_t* xr = xc + r * xs + 32 * h;
          const __m256 dx = _mm256_load_ps(reinterpret_cast<const float*>(xr + kQxScaleOffset));
          const __m256i i32 = s[r][c];
          float* acc = t.acc + (r * kCStride + c) * 16 + 8 * h;
          const __m256 sum = kZero ? _mm256_setzero_ps() : _mm256_load_ps(acc);
          _mm256_store_ps(acc,
                          _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32), _mm256_mul_ps(dw, dx), sum));
        }
      }
    }
  }

  // Q4_0's 16-bit sums s[r][c] += in a 2 × 4 tile over one half of a whole chunk (weight
  // vectors 64 bytes apart; w0 and x0 at the half's first bytes), Half's loop written out: for
  // each group g of two vectors and each column c, one weight load and its two nibbles, then
  // for each row s += maddubs(low, x vector 2g) and s += maddubs(high, x vector 2g + 1), the x
  // vectors as memory operands. (x vectors in registers, loaded once for the four columns,
  // measured the same.)
  // clang-format off
#define SHARDLM_Q4_PAIR(X0, X1, A)                      \
  "vpmaddubsw " X0 ", %%ymm12, %%ymm14\n\t"             \
  "vpaddw %%ymm14, %[" A "], %[" A "]\n\t"              \
  "vpmaddubsw " X1 ", %%ymm13, %%ymm15\n\t"             \
  "vpaddw %%ymm15, %[" A "], %[" A "]\n\t"
#define SHARDLM_Q4_COL(W, XD0, XD1, A0, A1)             \
  "vmovdqu " W ", %%ymm12\n\t"                          \
  "vpsrlw $4, %%ymm12, %%ymm13\n\t"                     \
  "vpand %[low], %%ymm12, %%ymm12\n\t"                  \
  "vpand %[low], %%ymm13, %%ymm13\n\t"                  \
  SHARDLM_Q4_PAIR(XD0 "(%[x0])", XD1 "(%[x0])", A0)     \
  SHARDLM_Q4_PAIR(XD0 "(%[x0],%[xs])", XD1 "(%[x0],%[xs])", A1)
#define SHARDLM_Q4_G(WD, XD0, XD1)                             \
  SHARDLM_Q4_COL(WD "(%[w0])", XD0, XD1, "s00", "s10")         \
  SHARDLM_Q4_COL(WD "(%[w1])", XD0, XD1, "s01", "s11")         \
  SHARDLM_Q4_COL(WD "(%[w0],%[ws],2)", XD0, XD1, "s02", "s12") \
  SHARDLM_Q4_COL(WD "(%[w1],%[ws],2)", XD0, XD1, "s03", "s13")
  // clang-format on
  __attribute__((always_inline)) SHARDLM_TARGET_Q256 static inline void Q4Sums2x4(
      const uint8_t* w0, int64_t ws, const uint8_t* x0, int64_t xs, __m256i low,
      __m256i (&s)[2][4]) {
    const uint8_t* w1 = w0 + ws;
    asm(SHARDLM_Q4_G("0", "0", "64") SHARDLM_Q4_G("64", "128", "192")
            SHARDLM_Q4_G("128", "256", "320") SHARDLM_Q4_G("192", "384", "448")
        : [s00] "+x"(s[0][0]), [s01] "+x"(s[0][1]), [s02] "+x"(s[0][2]), [s03] "+x"(s[0][3]),
          [s10] "+x"(s[1][0]), [s11] "+x"(s[1][1]), [s12] "+x"(s[1][2]), [s13] "+x"(s[1][3])
        : [w0] "r"(w0), [w1] "r"(w1), [ws] "r"(ws), [x0] "r"(x0), [xs] "r"(xs), [low] "x"(low)
        : "xmm12", "xmm13", "xmm14", "xmm15", "memory");
  }
#undef SHARDLM_Q4_G
#undef SHARDLM_Q4_COL
#undef SHARDLM_Q4_PAIR

  // Q8_0's int32 sums s[r][c] += in a 2 × 2 tile over one half of a whole chunk, Half's Q8_0
  // loop written out: per vector v the two columns' q = stored byte ^ 0x80 and |q|, the two
  // rows' x vectors, then for each (row, column) vpmaddwd(vpmaddubsw(|q|, sign(x, q)), 1)
  // added to the sum.
  // clang-format off
#define SHARDLM_Q8_DOT(Q, U, X, A)                      \
  "vpsignb %%ymm" Q ", %%ymm" X ", %%ymm14\n\t"         \
  "vpmaddubsw %%ymm14, %%ymm" U ", %%ymm14\n\t"         \
  "vpmaddwd %[ones], %%ymm14, %%ymm14\n\t"              \
  "vpaddd %%ymm14, %[" A "], %[" A "]\n\t"
#define SHARDLM_Q8_V(D)                                 \
  "vmovdqu " D "(%[w0]), %%ymm8\n\t"                    \
  "vpxor %[bias], %%ymm8, %%ymm8\n\t"                   \
  "vpabsb %%ymm8, %%ymm9\n\t"                           \
  "vmovdqu " D "(%[w0],%[ws]), %%ymm10\n\t"             \
  "vpxor %[bias], %%ymm10, %%ymm10\n\t"                 \
  "vpabsb %%ymm10, %%ymm11\n\t"                         \
  "vmovdqa " D "(%[x0]), %%ymm12\n\t"                   \
  "vmovdqa " D "(%[x0],%[xs]), %%ymm13\n\t"             \
  SHARDLM_Q8_DOT("8", "9", "12", "s00")                 \
  SHARDLM_Q8_DOT("10", "11", "12", "s01")               \
  SHARDLM_Q8_DOT("8", "9", "13", "s10")                 \
  SHARDLM_Q8_DOT("10", "11", "13", "s11")
  // clang-format on
  __attribute__((always_inline)) SHARDLM_TARGET_Q256 static inline void Q8Sums2x2(
      const uint8_t* w0, int64_t ws, const uint8_t* x0, int64_t xs, __m256i ones,
      __m256i (&s)[2][2]) {
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
    asm(SHARDLM_Q8_V("0") SHARDLM_Q8_V("64") SHARDLM_Q8_V("128") SHARDLM_Q8_V("192")
            SHARDLM_Q8_V("256") SHARDLM_Q8_V("320") SHARDLM_Q8_V("384") SHARDLM_Q8_V("448")
        : [s00] "+x"(s[0][0]), [s01] "+x"(s[0][1]), [s10] "+x"(s[1][0]), [s11] "+x"(s[1][1])
        : [w0] "r"(w0), [ws] "r"(ws), [x0] "r"(x0), [xs] "r"(xs), [bias] "x"(bias), [ones] "x"(ones)
        : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "memory");
  }
#undef SHARDLM_Q8_V
#undef SHARDLM_Q8_DOT

  // With kPrefetchByArgs, half 0 of each chunk requests the chunk's lines of the pair ahead
  // (QTileArgs' offsets; both halves share each 64-byte line), and chunk 0 their scales.
  // Before, these tiles (n ≥ 2) prefetched nothing, and where one row block is all the tile
  // has (n ≤ 2) nothing else did: Q8_0 at n = 2 took 3.0 times n = 1's time (matmul_bench,
  // 16384 × 1024, a Zen 3 core).
  template <DType kFormat, int kC, PrefetchPlan kPlan>
  __attribute__((always_inline)) static inline void PrefetchHalf(const QTileArgs& t, int ch,
                                                                 int h) {
    if constexpr (kPlan != kPrefetchNone) {
      if (h != 0) return;
      const int64_t lines = kFormat == DType::kQ8_0 ? 8 : 4;
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) {
        const uint8_t* row = t.w + c * t.w_stride;
        const uint8_t* wq = row + WChunkOffset(kFormat, t.chunk0 + ch);
        for (int64_t l = 0; l < lines; ++l) {
          PrefetchLine<kPlan>(wq + 64 * l, t.prefetch_offset, t.l2_prefetch_offset);
        }
        if (ch == 0) {
          const uint8_t* scales = row + t.scale_offset + 32 * t.chunk0;
          PrefetchLine<kPlan>(scales, t.scale_prefetch_offset, t.l2_scale_prefetch_offset);
          PrefetchLine<kPlan>(scales + 64, t.scale_prefetch_offset, t.l2_scale_prefetch_offset);
        }
      }
    }
  }

  // Half h of chunk ch (m blocks), mh of its blocks present: blocks 8h … 8h + mh − 1 into f32
  // lanes 8h … 8h + 7. kFull (mh = 8): plain loads; else dword-masked ones.
  // kZero: the f32 sums start at +0 (not read from acc).
  template <DType kFormat, int kR, int kC, int kCStride, bool kFull, bool kZero,
            PrefetchPlan kPlan>
  __attribute__((always_inline)) SHARDLM_TARGET_Q256 static inline void Half(
      const QTileArgs& t, int ch, int64_t m, int h, int mh) {
    PrefetchHalf<kFormat, kC, kPlan>(t, ch, h);
    const int64_t ws = t.w_stride, xs = t.x_stride;
    const int64_t vs = kFull && m == 16 ? 64 : 4 * m;  // a full half can sit in a short chunk
    const uint8_t* wq = t.w + WChunkOffset(kFormat, t.chunk0 + ch);
    const uint8_t* xc = t.x + ch * kQxChunkBytes;
    const __m256i dm =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(mh), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i s[kR][kC];
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) s[r][c] = _mm256_setzero_si256();
    }
    if constexpr (kFormat == DType::kQ8_0) {
      const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) {
        __m256i wv[kC], uw[kC];
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) {
          wv[c] = _mm256_xor_si256(LoadHalf<kFull>(wq + c * ws + v * vs + 32 * h, dm), bias);  // q
          uw[c] = _mm256_abs_epi8(wv[c]);
        }
#pragma GCC unroll 8
        for (int r = 0; r < kR; ++r) {
          const __m256i xv = _mm256_load_si256(
              reinterpret_cast<const __m256i*>(xc + r * xs + v * 64 + 32 * h));
#pragma GCC unroll 8
          for (int c = 0; c < kC; ++c) s[r][c] = Dot(s[r][c], uw[c], _mm256_sign_epi8(xv, wv[c]));
        }
      }
    } else {
      // Without VNNI the products first add up in 16-bit lanes: a vpmaddubsw pair of a nibble
      // (≤ 15) and two x bytes (|x| ≤ 127) is at most 3,810 in magnitude, so the 8 vectors of
      // a block's half sum to at most 30,480 < 2^15, exactly; one vpmaddwd per (row, column)
      // then widens them. Per 32 weights that is one multiply-class instruction and an add
      // where Dot takes two and an add.
      const __m256i low = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) {
          // Both nibbles of one load, x vectors 2g (low) and 2g + 1 (high), for every row; the
          // x vectors come from L1 as memory operands. (Each nibble half for all C columns in
          // turn, as before, kept the C raw vectors live between the halves: 18 ymm, spilled.
          // This order took a batch-16 Q4_0 matmul of 4096 × 1024, W in L3, from 1.27 to
          // 1.15 ms on a Zen 3 core.)
          const __m256i raw = LoadHalf<kFull>(wq + c * ws + g * vs + 32 * h, dm);
          const __m256i lo = _mm256_and_si256(raw, low);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
#pragma GCC unroll 8
          for (int r = 0; r < kR; ++r) {
            const uint8_t* xv = xc + r * xs + 2 * g * 64 + 32 * h;
            const __m256i x0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xv));
            const __m256i x1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xv + 64));
            if constexpr (kVnni) {
              s[r][c] = Dot(Dot(s[r][c], lo, x0), hi, x1);
            } else {
              s[r][c] = _mm256_add_epi16(s[r][c], _mm256_maddubs_epi16(lo, x0));
              asm("" : "+x"(s[r][c]));
              s[r][c] = _mm256_add_epi16(s[r][c], _mm256_maddubs_epi16(hi, x1));
              asm("" : "+x"(s[r][c]));
            }
          }
        }
      }
      if constexpr (!kVnni) {
        const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
        for (int r = 0; r < kR; ++r) {
#pragma GCC unroll 8
          for (int c = 0; c < kC; ++c) s[r][c] = _mm256_madd_epi16(s[r][c], ones);
        }
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) {
      const uint8_t* scales = t.w + c * ws + t.scale_offset + 32 * (t.chunk0 + ch) + 16 * h;
      __m128i sbits;
      if constexpr (kFull) {
        sbits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales));
      } else {
        // Only the mh scales of the row: no read past its end.
        alignas(16) uint16_t buf[8] = {};
        std::memcpy(buf, scales, 2 * static_cast<size_t>(mh));
        sbits = _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
      }
      const __m256 dw = _mm256_cvtph_ps(sbits);
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) {
        const __m256 dx =
            _mm256_load_ps(reinterpret_cast<const float*>(xc + r * xs + kQxScaleOffset + 32 * h));
        __m256i i32 = s[r][c];
        if constexpr (kFormat == DType::kQ4_0) {
          i32 = _mm256_sub_epi32(i32, _mm256_load_si256(reinterpret_cast<const __m256i*>(
                                          xc + r * xs + kQxAuxOffset + 32 * h)));
        }
        float* acc = t.acc + (r * kCStride + c) * 16 + 8 * h;
        const __m256 sum = kZero ? _mm256_setzero_ps() : _mm256_load_ps(acc);
        _mm256_store_ps(acc, _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32), _mm256_mul_ps(dw, dx), sum));
      }
    }
  }
};

}  // namespace

void SkinnyQuantAvx512Vnni(DType format, const float* x, int64_t n, int64_t x_stride,
                           const uint8_t* w, int64_t out, int64_t in, const float* bias, float* y,
                           int64_t y_stride) {
  // 4 × 4: the R·C int32 sums, the C weight vectors and the x vector fit the 32 registers
  // (4 × 6 spilled in Q4_0, whose weights take a load, a shift and two ANDs); at n = 16 it
  // measured 10–20% faster than 2 × 6 and 2 × 8 (matmul_bench). A single x row takes a
  // one-row tile, which reads its weight rows one after another (QuantAvx512Vnni::RowAfterRow).
  // - Q4_0: 1 × 6, which shares each tile's fixed costs over more weight rows: the batch-1
  //   decode step of a d 1024 model took 10–13% less time than in 4 × 4 on a Zen 4 core
  //   (with each chunk taken for the six rows in turn; 1 × 8: 6% more). Row after row, 1 × 4,
  //   1 × 8, 1 × 12 and 1 × 16 were no faster at 65536 × 1024 and 16384 × 2816.
  // - Q8_0, where the weights are prefetched far ahead (StreamPrefetch::kFar, the Zen 4
  //   choice): 1 × 1 (DriveQuant's kOneRow). The paper-m Q8_0 batch-1 step (24 layers,
  //   d 1024) took 13.4–13.7 ms against 20.1–21.0 in 1 × 4, chunk by chunk, on a Zen 4 core.
  //   Q4_0 rows are half as long, and there the 1 × 1 tile's fixed costs per row left it at
  //   11 GB/s. 1 × 4 row after row, L2 prefetch only, read 79–84% of a plain read at
  //   32000 × 1024 against 68–75% for 1 × 1, but the whole step took 1.11 of 1 × 1's time
  //   (median of ten alternated pairs), and at 8192² a 1 × 4 tile reads each row in four K
  //   blocks, out of address order. Where near prefetch is chosen (a Zen 5 core
  //   measured 94–97% of a plain read in 1 × 4, chunk by chunk) the 4 × 4 shape stays.
  if (format == DType::kQ4_0 && n == 1) {
    DriveQuant<QuantAvx512Vnni, DType::kQ4_0, 1, 6>(x, n, x_stride, w, out, in, bias, y, y_stride);
    return;
  }
  if (format == DType::kQ8_0 && n == 1 && SelectedStreamPrefetch() == StreamPrefetch::kFar) {
    DriveQuant<QuantAvx512Vnni, DType::kQ8_0, 1, 1>(x, n, x_stride, w, out, in, bias, y, y_stride);
    return;
  }
  DriveQuantFormat<QuantAvx512Vnni, 4, 4>(format, x, n, x_stride, w, out, in, bias, y, y_stride);
}

// 16 ymm: Q8_0 2 × 2 (4 sums, 2 weight vectors and their absolute values, x, a sign temp),
// Q4_0 2 × 4 (8 sums, 4 weight vectors, x, the nibble mask). One x row: 1 × 8, whose rows the
// tile takes one after another (Tile), so that the driver's per-tile work and the lane trees
// (eight at once) are shared by eight rows.
template <class Kernel>
void DriveQuantAvx2(DType format, const float* x, int64_t n, int64_t x_stride, const uint8_t* w,
                    int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  if (n == 1) {
    DriveQuantFormat<Kernel, 1, 8>(format, x, n, x_stride, w, out, in, bias, y, y_stride);
  } else if (format == DType::kQ8_0) {
    DriveQuant<Kernel, DType::kQ8_0, 2, 2>(x, n, x_stride, w, out, in, bias, y, y_stride);
  } else {
    DriveQuant<Kernel, DType::kQ4_0, 2, 4>(x, n, x_stride, w, out, in, bias, y, y_stride);
  }
}

void SkinnyQuantAvx2(bool vnni, DType format, const float* x, int64_t n, int64_t x_stride,
                     const uint8_t* w, int64_t out, int64_t in, const float* bias, float* y,
                     int64_t y_stride) {
  if (vnni) {
    DriveQuantAvx2<QuantAvx2<true>>(format, x, n, x_stride, w, out, in, bias, y, y_stride);
  } else {
    DriveQuantAvx2<QuantAvx2<false>>(format, x, n, x_stride, w, out, in, bias, y, y_stride);
  }
}

}  // namespace shardlm::matmul_internal

#else  // not x86

namespace shardlm::matmul_internal {
void QuantizeXRowAvx512(const float*, int64_t, DType, uint8_t*) {}
void QuantizeXRowAvx2(const float*, int64_t, DType, uint8_t*) {}
void SkinnyQuantAvx512Vnni(DType, const float*, int64_t, int64_t, const uint8_t*, int64_t, int64_t,
                           const float*, float*, int64_t) {}
void SkinnyQuantAvx2(bool, DType, const float*, int64_t, int64_t, const uint8_t*, int64_t, int64_t,
                     const float*, float*, int64_t) {}
}  // namespace shardlm::matmul_internal

#endif
