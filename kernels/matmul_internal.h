// Internals of kernels/matmul.h shared by the per-ISA kernel files: the blocking driver, the
// fixed lane reduction, and the per-path entry points. Not for use outside kernels/matmul*.
//
// Loop nest of one call (L lanes per vector, R×C register tile, KB = kKBlock):
//
//   pack x into [K block][row][KB] (only when there is more than one row block)
//   for each tile of C weight rows o0..o0+C            ← W streamed once, row tile by row tile
//                                                        (f32, or bf16/f16 widened on load)
//     for each super-block of ≤ kSuperRows x rows      ← usually the whole batch
//       for each K block k0..k0+KB                     ← W[C, KB] (≤ 12 KiB) stays in L1
//         for each block of R x rows                   ← re-uses the L1-resident W chunk
//           Tile<R, C>: acc[r][c] += x[r][k:k+L] ⊙ w[c][k:k+L] over the K block
//       y[i][o] = ReduceLanes(acc[i][o]) (+ bias[o])
//
// Memory behaviour, the point of the exercise (see matmul_bench.cc for numbers):
//  * W is read from DRAM once per call; the R-row blocks after the first re-read the chunk from
//    L1. While the blocks compute on chunk j, they take turns prefetching chunk j + 1, so the
//    DRAM stream runs at an even pace (the hardware prefetcher alone only advances while the
//    first block is reading new W, leaving DRAM idle for the rest).
//  * x is packed because real `in` are powers of two: rows 2^k floats apart all map to the same
//    L1 sets, and 16 x rows plus C weight rows at one column overflow a 12-way set, evicting
//    the W chunk between row blocks. Packed, one K block of all rows is contiguous.
//
// Why every variant gives the same bits: the vector accumulators of (i, o) are spilled to
// `acc` between K blocks and reloaded unchanged; each Tile<r, c> instantiation (r ≤ R, c ≤ C)
// runs the same per-(i, o) code — full vectors of L, then one tail of in % L elements done the
// same way in every tile (masked loads / a scalar loop) — and the reduction is one fixed tree
// (ReduceLanes; the AVX-512 kernel does its adds for 16 accumulators at once, tested bit for bit).
// Packing copies values exactly. Nothing in the per-(i, o) arithmetic depends on r, c, n, i,
// the K block size, packing, prefetching or the strides; so the tile shape may even be chosen
// from n (see the entry points).
#ifndef SHARDLM_KERNELS_MATMUL_INTERNAL_H_
#define SHARDLM_KERNELS_MATMUL_INTERNAL_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/cpu.h"

namespace shardlm::matmul_internal {

// Weight storage formats, as kernel template tags. `Elem` is the stored element; each kernel
// widens one Elem to the f32 it stands for, exactly (bf16: the top half of an f32; f16: every
// half value, subnormals included, is an f32 value), right after loading it. The arithmetic
// that follows is the f32 kernel's, so y is bit-identical to the f32 path on the widened W.
struct F32W {
  using Elem = float;
};
struct Bf16W {
  using Elem = uint16_t;
};
struct F16W {
  using Elem = uint16_t;
};

// K block in floats: a multiple of every lane count, so only the last block has a tail.
// 512 floats = 2 KiB per row: a C = 6 chunk is 12 KiB, and the next one being prefetched
// another 12 KiB, of a 48 KiB L1.
inline constexpr int64_t kKBlock = 512;
static_assert(kKBlock % 16 == 0);
// Rows whose accumulators live in the on-stack spill buffer at once. Beyond this the W tile
// (C × in floats, ≤ 192 KiB for C = 6, in = 8192) is re-read from L2 per super-block.
inline constexpr int kSuperRows = 32;

// Spill-buffer slots of `rows` x rows of a C-column tile that a driver zeroes and the kernel's
// ReduceSums reads: rows·C rounded up to whole groups of its lane reduction.
inline int64_t SumSlots(int64_t rows, int64_t cols, int64_t group) {
  return (rows * cols + group - 1) / group * group;
}

// Fixed pairwise tree over L partial sums: lane j += lane j + L/2, halving. Shared by every
// path and every tile; plain float adds, so no compiler may reorder them (no -ffast-math).
template <int L>
inline float ReduceLanes(const float* acc) {
  static_assert(L >= 1 && (L & (L - 1)) == 0);
  float t[L];
  for (int j = 0; j < L; ++j) t[j] = acc[j];
  for (int half = L / 2; half >= 1; half /= 2) {
    for (int j = 0; j < half; ++j) t[j] = t[j] + t[j + half];
  }
  return t[0];
}

// ReduceLanes of `count` consecutive L-float accumulators into sums[0, count): the reduction of
// kernels without a vector version (their kReduceGroup is 1).
template <int L>
inline void ReduceEach(const float* acc, int64_t count, float* sums) {
  for (int64_t i = 0; i < count; ++i) sums[i] = ReduceLanes<L>(acc + i * L);
}

// One micro-kernel call: a block of r ≤ R x rows against a tile of c ≤ C weight rows over one
// K block. Pointers are already offset to the K block's first column.
struct TileArgs {
  const void* x;  // x[r][0..len) of the kernel's XElem, rows x_stride elements apart
  int64_t x_stride;
  const void* w;  // w[c][0..len) of the kernel's Fmt::Elem, rows w_stride elements apart
  int64_t w_stride;
  int64_t len;  // K block length, ≤ kKBlock; only the last block of a row is < kKBlock
  float* acc;   // [r][C][L] partial sums (row stride C·L), updated in place …
  bool first_block;  // … or, at the row's first K block, written from zero without being read
  // Prefetch of the next W chunk (no effect on results): at its turns, the tile prefetches
  // w[c] + k + prefetch_offset (in elements) for every row c of the tile; 0 = nothing to
  // prefetch. The `prefetch_period` row blocks sharing a chunk take turns, one 64-byte line of
  // W per row at a time: this block's turns are the lines s with
  // s % prefetch_period == prefetch_phase.
  int64_t prefetch_offset;
  // The same turns also prefetch w[c] + k + l2_prefetch_offset into L2 (0 = none), a few
  // chunks ahead, so that the L1 prefetch finds its lines in L2: L1 alone keeps too few
  // misses in flight to stream W at DRAM speed while the FMAs run (matmul_bench, n = 16, two
  // chunks ahead: on a Zen 5 core BF16 −13%, the BF16 dot kernel −15%, F32 no change; on a
  // Zen 4 core F32 −22%). At one row block Drive follows StreamPrefetch (kernels/cpu.h):
  // the L2 prefetch measured slower there on Zen 5, and on Zen 4 it is the one that pays.
  int64_t l2_prefetch_offset;
  int prefetch_period;
  int prefetch_phase;
};
using TileFn = void (*)(const TileArgs& args);

// Elements of format Fmt in one 64-byte cache line: the prefetch granule.
template <class Fmt>
inline constexpr int64_t kLineElems = 64 / sizeof(typename Fmt::Elem);

// Table of Kernel::Tile<Fmt, r, c, kC> for r ∈ [1, kR], c ∈ [1, kC]: the row/column tails use
// the same template as full tiles, instantiated smaller.
template <class Kernel, class Fmt, int kR, int kC>
struct TileTable {
  static constexpr int kCount = kR * kC;
  template <int... kIs>
  static constexpr std::array<TileFn, kCount> Make(std::integer_sequence<int, kIs...>) {
    return {&Kernel::template Tile<Fmt, kIs / kC + 1, kIs % kC + 1, kC>...};
  }
  static constexpr std::array<TileFn, kCount> kFns =
      Make(std::make_integer_sequence<int, kCount>{});
  static TileFn Get(int r, int c) { return kFns[(r - 1) * kC + (c - 1)]; }
};

// Per-thread scratch of at least `floats` floats, 64-byte aligned, grown on demand and kept:
// only a call larger than every earlier one on this thread allocates. (matmul.cc)
float* Scratch(int64_t floats);

// The lane sums of a tile column (`rows` x rows × c ≤ kC weight rows, row stride kC in `sums`)
// into y (row stride y_stride), plus bias (c values, or nullptr). A full column without bias
// is one fixed-size copy per row (a vector move for kC = 4): the element loop compiled to a
// variable-length memcpy per row, which took 3–4% of a 512-row Q8_0 matmul and 6–7% after
// the tile's own costs were cut.
template <int kC>
inline void StoreSums(const float* sums, int rows, int c, const float* bias, float* y,
                      int64_t y_stride) {
  for (int ir = 0; ir < rows; ++ir) {
    float* y_row = y + ir * y_stride;
    if (bias == nullptr && c == kC) {
      std::memcpy(y_row, sums + ir * kC, sizeof(float) * kC);
      continue;
    }
    for (int ic = 0; ic < c; ++ic) {
      const float sum = sums[ir * kC + ic];
      y_row[ic] = bias != nullptr ? sum + bias[ic] : sum;
    }
  }
}

// The loop nest above for one kernel, weight format and register tile shape. Arguments as
// SkinnyMatMul, already validated; n, out, in > 0.
template <class Kernel, class Fmt, int kR, int kC>
void Drive(const float* x, int64_t n, int64_t x_stride, const typename Fmt::Elem* w,
           int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  constexpr int L = Kernel::kLanes;
  static_assert(kSuperRows % kR == 0);
  const int64_t num_kb = (in + kKBlock - 1) / kKBlock;

  // x as [K block][row][kKBlock] when more than one row block will read it, or always when
  // the kernel takes x in another format (Kernel::PackX converts it).
  using XElem = typename Kernel::XElem;
  constexpr bool kConvertX = !std::is_same_v<XElem, float>;
  static_assert(sizeof(XElem) <= sizeof(float));
  const bool pack_x = kConvertX || n > kR;
  const XElem* xs = nullptr;
  int64_t xs_stride = kKBlock;
  if (pack_x) {
    auto* packed = reinterpret_cast<XElem*>(Scratch(num_kb * n * kKBlock));
    for (int64_t kb = 0; kb < num_kb; ++kb) {
      const int64_t k0 = kb * kKBlock, len = std::min(kKBlock, in - k0);
      for (int64_t i = 0; i < n; ++i) {
        XElem* dst = packed + (kb * n + i) * kKBlock;
        if constexpr (kConvertX) {
          Kernel::PackX(x + i * x_stride + k0, len, dst);
        } else {
          std::copy_n(x + i * x_stride + k0, len, dst);
        }
      }
    }
    xs = packed;
  } else if constexpr (!kConvertX) {
    xs = x;
    xs_stride = x_stride;
  }
  // Address of x block rows [i, ...) at K block kb.
  auto x_at = [&](int64_t kb, int64_t i) {
    return pack_x ? xs + (kb * n + i) * kKBlock : xs + i * xs_stride + kb * kKBlock;
  };

  // [kSuperRows][kC][L] vector partial sums, spilled between K blocks, and their lane sums.
  // Kernel::ReduceSums reduces whole groups of kReduceGroup accumulators, so it also reads
  // slots no tile writes (rows*kC rounded up to a group): those stay zero from here. A full
  // tile starts its sums at zero itself (TileArgs::first_block; fma(a, b, +0) is the same
  // bits as from zeroed memory), which spares a memset per tile (1 KiB at n = 1, 6 KiB at
  // n = 16); a partial tile (c < kC) zeroes its slots first, so those of columns ≥ c are zero
  // too and their sums unused.
  constexpr int kGroup = Kernel::kReduceGroup;
  static_assert(kSuperRows * kC % kGroup == 0);
  alignas(64) float acc[kSuperRows * kC * L];
  alignas(64) float sums[kSuperRows * kC];
  std::fill(acc, acc + SumSlots(std::min<int64_t>(n, kSuperRows), kC, kGroup) * L, 0.0f);
  const bool far = SelectedStreamPrefetch() == StreamPrefetch::kFar;
  for (int64_t o0 = 0; o0 < out; o0 += kC) {
    const int c = static_cast<int>(std::min<int64_t>(kC, out - o0));
    const typename Fmt::Elem* w_tile = w + o0 * in;
    for (int64_t i0 = 0; i0 < n; i0 += kSuperRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kSuperRows, n - i0));
      const int blocks = (rows + kR - 1) / kR;
      const int64_t slots = SumSlots(rows, kC, kGroup);
      if (c < kC) std::fill(acc, acc + slots * L, 0.0f);
      for (int64_t kb = 0; kb < num_kb; ++kb) {
        const int64_t k0 = kb * kKBlock;
        TileArgs args;
        args.x_stride = xs_stride;
        args.w = w_tile + k0;
        args.w_stride = in;
        args.len = std::min(kKBlock, in - k0);
        // Chunks in streaming order are (tile, K block) pairs; the one `d` ahead of this one
        // starts, from row c of this chunk, at the returned offset (the same row of a later
        // tile is a multiple of kC rows down), or 0 when it is past the last full tile.
        auto ahead = [&](int64_t d) -> int64_t {
          int64_t target = kb + d, tiles = 0;
          for (; target >= num_kb; target -= num_kb) ++tiles;  // d is small: no division
          if (o0 + (tiles + 1) * kC > out) return 0;
          return tiles * kC * in + (target - kb) * kKBlock;
        };
        if (blocks > 1) {
          args.prefetch_offset = ahead(1);
          args.l2_prefetch_offset = ahead(2);
        } else if (far) {  // matmul_bench at n = 1: 8 or 16 chunks ahead were no better
          args.prefetch_offset = 0;
          args.l2_prefetch_offset = ahead(4);
        } else {
          args.prefetch_offset = ahead(1);
          args.l2_prefetch_offset = 0;
        }
        args.prefetch_period = blocks;
        for (int b = 0; b < blocks; ++b) {
          const int ib = b * kR;
          args.x = x_at(kb, i0 + ib);
          args.acc = acc + ib * kC * L;
          args.first_block = kb == 0 && c == kC;
          args.prefetch_phase = b;
          TileTable<Kernel, Fmt, kR, kC>::Get(std::min(kR, rows - ib), c)(args);
        }
      }
      Kernel::ReduceSums(acc, slots, sums);
      StoreSums<kC>(sums, rows, c, bias != nullptr ? bias + o0 : nullptr,
                    y + i0 * y_stride + o0, y_stride);
    }
  }
}

// Per-path entry points (matmul.cc, matmul_x86.cc): Drive with the path's kernel and tile
// shape; same arguments and preconditions as Drive. Instantiated for F32W, Bf16W and F16W.
template <class Fmt>
void SkinnyPortable(const float* x, int64_t n, int64_t x_stride, const typename Fmt::Elem* w,
                    int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride);
template <class Fmt>
void SkinnyAvx2Fma(const float* x, int64_t n, int64_t x_stride, const typename Fmt::Elem* w,
                   int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride);
template <class Fmt>
void SkinnyAvx512(const float* x, int64_t n, int64_t x_stride, const typename Fmt::Elem* w,
                  int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride);
// Bf16Math::kDot's kernel (AVX512-BF16); same arguments as the entry points above. Only call
// when Cpu().avx512_bf16.
void SkinnyAvx512Bf16Dot(const float* x, int64_t n, int64_t x_stride, const uint16_t* w,
                         int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride);
// The AVX-512 kernel's lane reduction, for its test against ReduceEach<16>: count (a multiple
// of 4) accumulators of 16 floats, acc 64-byte aligned. Only call when Cpu().avx512.
void ReduceSumsAvx512(const float* acc, int64_t count, float* sums);
// ReduceEach<L> (L = 8 or 16) with AVX2, eight trees at a time and the same adds, any count:
// the AVX2 kernels' lane reduction (the float kernels' 8 lanes, the quantized ones' 16). Only
// call when Cpu().avx2_fma.
template <int L>
void ReduceSumsAvx2(const float* acc, int64_t count, float* sums);
// CPUID (and OS register-state) checks for the SIMD paths; false on non-x86 builds. The AVX2
// path also needs F16C (vcvtph2ps), which every AVX2 CPU has in practice.

}  // namespace shardlm::matmul_internal

#endif  // SHARDLM_KERNELS_MATMUL_INTERNAL_H_
