// Internals of the block-quantized matmul (kernels/matmul.h, "Q8_0 and Q4_0 weights"): the
// quantized-x layout, the blocking driver and the per-path entry points. Not for use outside
// kernels/matmul*.
//
// x is quantized once per call, row by row, into `QxRowBytes(in)` bytes per row: per 512-element
// chunk, 512 quant bytes in the packed-weight order of kernels/quant.h (vector v at byte 64v,
// block j's piece at 4j within it; zero past the row's last block), then the 16 blocks' f32
// scales, then 16 int32 "aux" values: Σ of the block's quants times the bias of the packed
// weights (8 for Q4_0's q, 128 for Q8_0's q + 128), which a kernel that multiplies the stored
// (unsigned) weights takes off each block's dot product.
//
// Loop nest (R×C register tile; a K block is up to kQChunksPerBlock chunks):
//   for each tile of C weight rows                ← W streamed once
//     for each super-block of ≤ kSuperRows x rows
//       for each K block                          ← C rows × ≤ 4 chunks of W stay in L1
//         for each block of R x rows: Tile<R, C>
// A tile keeps the int32 dot products of its R×C (row, weight row) pairs for one chunk in
// registers, and folds each chunk into the f32 partial sums in `acc` ([R][C][16], spilled
// between calls) with the contract's one FMA per block.
#ifndef SHARDLM_KERNELS_MATMUL_QUANT_INTERNAL_H_
#define SHARDLM_KERNELS_MATMUL_QUANT_INTERNAL_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <utility>

#include "base/dtype.h"
#include "kernels/matmul_internal.h"
#include "kernels/quant.h"

namespace shardlm::matmul_internal {

// A quantized-x chunk: the quants at 0, the 16 f32 scales at kQxScaleOffset, the 16 int32 aux
// values at kQxAuxOffset.
inline constexpr int64_t kQxScaleOffset = 512;
inline constexpr int64_t kQxAuxOffset = kQxScaleOffset + 16 * 4;
inline constexpr int64_t kQxChunkBytes = kQxAuxOffset + 16 * 4;
inline constexpr int kQChunksPerBlock = 4;

inline int64_t QxRowBytes(int64_t in) {
  return (in + kQuantChunk - 1) / kQuantChunk * kQxChunkBytes;
}
// Byte offset of chunk ch's quants in a packed weight row.
inline int64_t WChunkOffset(DType format, int64_t ch) {
  return ch * (format == DType::kQ8_0 ? 512 : 256);
}

// The contract's x quantization of one row (scalar reference and portable path): writes
// QxRowBytes(in) bytes at dst, for weights in `format` (which sets the aux bias).
void QuantizeXRowPortable(const float* x, int64_t in, DType format, uint8_t* dst);
// AVX-512 and AVX2 versions, the same bytes. Only call when Cpu().avx512 / Cpu().avx2_fma.
void QuantizeXRowAvx512(const float* x, int64_t in, DType format, uint8_t* dst);
void QuantizeXRowAvx2(const float* x, int64_t in, DType format, uint8_t* dst);
// The aux bias of weights in `format`: 128 for Q8_0, 8 for Q4_0.
inline int32_t QuantWeightBias(DType format) { return format == DType::kQ8_0 ? 128 : 8; }

struct QTileArgs {
  const uint8_t* x;      // quantized x of the block's first row, at the K block's first chunk
  int64_t x_stride;      // bytes between quantized x rows
  const uint8_t* w;      // packed row of the tile's first weight row (whole row)
  int64_t w_stride;      // bytes between packed weight rows
  int64_t scale_offset;  // byte offset of the scales within a packed row
  int64_t chunk0;        // index of the K block's first chunk in the row
  int chunks;            // chunks in this K block
  int last_blocks;       // blocks of the K block's last chunk (16 unless the row ends there)
  float* acc;            // [r][C][16] f32 partial sums, row stride C·16
  bool first_block;      // the row's first K block, for a kernel with kZeroAcc: the partial
                         // sums start at zero, so `acc` is written before it is read
  // Prefetch of the weights ahead (no effect on results), by the K block's first row block
  // only: bytes from this K block's quants to those to fetch into L1 (0: none), and to those to
  // fetch into L2 (0: none).
  int64_t prefetch_offset;
  int64_t l2_prefetch_offset;
  // The same two pairs' scales: bytes from this K block's scales to theirs (0: none). The
  // scales sit at the row's end, so in streaming order they are not a fixed offset from the
  // quants: at one K block per row (in ≤ 2048) the next pair's are the next tile's.
  int64_t scale_prefetch_offset;
  int64_t l2_scale_prefetch_offset;
};
using QTileFn = void (*)(const QTileArgs& args);

template <class Kernel, DType kFormat, int kR, int kC>
struct QTileTable {
  static constexpr int kCount = kR * kC;
  template <int... kIs>
  static constexpr std::array<QTileFn, kCount> Make(std::integer_sequence<int, kIs...>) {
    return {&Kernel::template Tile<kFormat, kIs / kC + 1, kIs % kC + 1, kC>...};
  }
  static constexpr std::array<QTileFn, kCount> kFns =
      Make(std::make_integer_sequence<int, kCount>{});
  static QTileFn Get(int r, int c) { return kFns[(r - 1) * kC + (c - 1)]; }
};

// Per-thread scratch for the quantized x (matmul.cc's Scratch, in bytes).
inline uint8_t* QxScratch(int64_t bytes) {
  return reinterpret_cast<uint8_t*>(Scratch((bytes + 3) / 4));
}

// Where the quants and scales of one (tile, K block) pair's first weight row start, and the
// quants' length, for PrefetchQTurn; quants == nullptr: nothing to prefetch.
struct QTarget {
  const uint8_t* quants = nullptr;
  const uint8_t* scales = nullptr;
  int64_t quant_bytes = 0;
};

// Row block b of `blocks` (those sharing one K block of a tile) prefetches into L2 the quants
// and scales of rows c ≡ b (mod blocks) of the tile's kC rows at `t` (w_row bytes apart).
// Spread over the blocks, the misses overlap all their compute: when the first block issued
// them (the tile's own L2 prefetch) it stalled on them while the others ran from L1. On a Zen
// 4 core: `matmul_bench --hugepages` (8192², W from memory) Q4_0 at n = 8 from 1.72–1.74 to
// 1.62 times its bound and Q8_0 at n = 16 from 1.79–1.81 to 1.68–1.72; the batch-16 step of a
// d 1024 Q4_0 model 7–9% shorter and batch 8 10–14%. Two K blocks on was faster than one,
// three, four, eight or sixteen. (Spreading the L1 prefetch of the next K block the same way
// made Q8_0 at n = 8 and in = 1024 12–24% slower: that one stays in the first block's tile,
// between its loads.)
template <int kC>
inline void PrefetchQTurn(const QTarget& t, int64_t w_row, int b, int blocks) {
  if (t.quants == nullptr) return;
  for (int64_t c = b; c < kC; c += blocks) {
    const uint8_t* quants = t.quants + c * w_row;
    for (int64_t off = 0; off < t.quant_bytes; off += 64) __builtin_prefetch(quants + off, 0, 2);
    const uint8_t* scales = t.scales + c * w_row;  // ≤ 128 bytes
    __builtin_prefetch(scales, 0, 2);
    __builtin_prefetch(scales + 64, 0, 2);
  }
  // Without it GCC finds the inlined function made only of prefetches `const` and drops it
  // (as PrefetchTurn in matmul_x86.cc).
  asm volatile("");
}

template <class Kernel, DType kFormat, int kR, int kC>
void DriveQuant(const float* x, int64_t n, int64_t x_stride, const uint8_t* w, int64_t out,
                int64_t in, const float* bias, float* y, int64_t y_stride) {
  static_assert(kSuperRows % kR == 0);
  // A 1 × 1 tile reads W in address order, row after row (each row's quants, then its
  // scales), a stream the hardware prefetchers follow; a tile that takes each chunk for its
  // C rows in turn does not. (Wider one-row tiles now read their rows one after another too,
  // QuantAvx512Vnni::RowAfterRow, which is address order where a row is one K block.) On a
  // Zen 4 core, Q8_0 at n = 1 in a 1 × 4 tile, chunk by chunk, read 16–22 GB/s against a
  // 30 GB/s probe; in a 1 × 1 tile with the quants prefetched into L2 only, eight pairs on,
  // 24–29 (1,024–8,192 inputs; four, twelve, sixteen or thirty-two on, or an L1 prefetch as
  // well, were no faster; no software prefetch at all gave 27 GB/s up to 4,096 inputs and
  // 12.5 at 8,192).
  constexpr bool kOneRow = kR == 1 && kC == 1;
  const int64_t qx_row = QxRowBytes(in);
  uint8_t* qx = QxScratch(n * qx_row);
  for (int64_t i = 0; i < n; ++i) Kernel::QuantizeX(x + i * x_stride, in, kFormat, qx + i * qx_row);

  const int64_t nb = in / kQuantBlock;
  const int64_t num_chunks = (nb + 15) / 16;
  const int64_t num_kb = (num_chunks + kQChunksPerBlock - 1) / kQChunksPerBlock;
  const bool far = SelectedStreamPrefetch() == StreamPrefetch::kFar;
  const int64_t w_row = WeightRowBytes(kFormat, in);
  const int64_t scale_offset = QuantBytes(kFormat, in);
  alignas(64) float acc[kSuperRows * kC * 16];
  alignas(64) float sums[kSuperRows * kC];
  static_assert(kSuperRows * kC % Kernel::kReduceGroup == 0);
  std::fill(acc, acc + SumSlots(std::min<int64_t>(n, kSuperRows), kC, Kernel::kReduceGroup) * 16,
            0.0f);
  for (int64_t o0 = 0; o0 < out; o0 += kC) {
    const int c = static_cast<int>(std::min<int64_t>(kC, out - o0));
    for (int64_t i0 = 0; i0 < n; i0 += kSuperRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kSuperRows, n - i0));
      // Zeroed up to whole groups of the kernel's lane reduction (the extra sums are unused;
      // no tile writes them, so they stay as zeroed above). A kernel with kZeroAcc starts the
      // sums of a full tile at zero itself (the same bits: fma(a, b, +0) either way), which
      // spares a memset per tile (4 KiB at n = 16).
      const int64_t slots = SumSlots(rows, kC, Kernel::kReduceGroup);
      const bool tile_zeroes = Kernel::kZeroAcc && c == kC;
      if (!tile_zeroes) std::fill(acc, acc + slots * 16, 0.0f);
      for (int64_t ch0 = 0; ch0 < num_chunks; ch0 += kQChunksPerBlock) {
        QTileArgs args;
        args.x_stride = qx_row;
        args.w = w + o0 * w_row;
        args.w_stride = w_row;
        args.scale_offset = scale_offset;
        args.chunk0 = ch0;
        args.chunks = static_cast<int>(std::min<int64_t>(kQChunksPerBlock, num_chunks - ch0));
        const int64_t last = ch0 + args.chunks - 1;
        args.last_blocks = static_cast<int>(std::min<int64_t>(16, nb - last * 16));
        args.first_block = tile_zeroes && ch0 == 0;
        // Prefetches, in the streaming order of (tile, K block) pairs (the same rows, or the
        // next tile's). At one row block the tile prefetches as it loads: the next K block
        // into L1 and, with StreamPrefetch::kFar, the one four on into L2. Without the L1
        // prefetch Q8_0 streamed at ~50% of the read bandwidth at n = 1 on a Zen 5 core, with
        // it 94–97%. On a Zen 4 core the L1 prefetch alone left Q8_0 at 50% and Q4_0 at
        // 41–45%, and the L2 one took them to 66–73% and 59–68% (matmul_bench, alternated;
        // two, three, six or eight blocks on were no better). With more row blocks, the first
        // block's tile still prefetches the next K block into L1, and the blocks take turns
        // at the one two on into L2 (PrefetchQTurn), whatever StreamPrefetch says.
        const int64_t kb = ch0 / kQChunksPerBlock;
        // The (tile, K block) pair d on: tiles of kC rows down, and its K block; nullopt
        // past the last full tile. Quants and scales are prefetched as offsets from this K
        // block's (of the same row c), the scales' apart because they sit at the row's end.
        const auto pair_ahead = [&](int64_t d) -> std::optional<std::pair<int64_t, int64_t>> {
          int64_t target = kb + d, tiles = 0;
          for (; target >= num_kb; target -= num_kb) ++tiles;  // d is small: no division
          if (o0 + (tiles + 1) * kC > out) return std::nullopt;
          return std::pair{tiles, target};
        };
        const auto ahead = [&](int64_t d) -> int64_t {
          const auto p = pair_ahead(d);
          return p ? p->first * kC * w_row +
                         WChunkOffset(kFormat, (p->second - kb) * kQChunksPerBlock)
                   : 0;
        };
        const auto scale_ahead = [&](int64_t d) -> int64_t {
          const auto p = pair_ahead(d);
          return p ? p->first * kC * w_row + 32 * (p->second - kb) * kQChunksPerBlock : 0;
        };
        const int blocks = (rows + kR - 1) / kR;
        // A one-row tile reads W in address order (kOneRow, below): its quants go to L2
        // only, eight pairs (rows at in ≤ 2048) on.
        const int64_t l1_ahead = kOneRow ? 0 : ahead(1),
                      l2_ahead = far ? ahead(kOneRow ? 8 : 4) : 0;
        const int64_t l1_scales = scale_ahead(1), l2_scales = far ? scale_ahead(4) : 0;
        QTarget turn;  // for PrefetchQTurn: the pair two on
        if (const auto p = blocks > 1 ? pair_ahead(2) : std::nullopt; p) {
          const int64_t ch = p->second * kQChunksPerBlock;
          const uint8_t* row = w + (o0 + p->first * kC) * w_row;
          turn.quants = row + WChunkOffset(kFormat, ch);
          turn.scales = row + scale_offset + 32 * ch;
          turn.quant_bytes =
              WChunkOffset(kFormat, std::min<int64_t>(kQChunksPerBlock, num_chunks - ch));
        }
        for (int b = 0; b < blocks; ++b) {
          const int ib = b * kR;
          args.x = qx + (i0 + ib) * qx_row + ch0 * kQxChunkBytes;
          args.acc = acc + ib * kC * 16;
          if (blocks == 1) {
            args.prefetch_offset = l1_ahead;
            args.l2_prefetch_offset = l2_ahead;
            args.scale_prefetch_offset = l1_scales;
            args.l2_scale_prefetch_offset = l2_scales;
          } else {
            const bool first = b == 0 && Kernel::kFirstBlockPrefetches;
            args.prefetch_offset = first ? l1_ahead : 0;
            args.l2_prefetch_offset = 0;
            args.scale_prefetch_offset = first ? l1_scales : 0;
            args.l2_scale_prefetch_offset = 0;
            PrefetchQTurn<kC>(turn, w_row, b, blocks);
          }
          QTileTable<Kernel, kFormat, kR, kC>::Get(std::min(kR, rows - ib), c)(args);
        }
      }
      Kernel::ReduceSums(acc, slots, sums);
      StoreSums<kC>(sums, rows, c, bias != nullptr ? bias + o0 : nullptr,
                    y + i0 * y_stride + o0, y_stride);
    }
  }
}

// DriveQuant for W in `format` (kQ8_0 or kQ4_0), chosen at run time.
template <class Kernel, int kR, int kC>
void DriveQuantFormat(DType format, const float* x, int64_t n, int64_t x_stride,
                      const uint8_t* w, int64_t out, int64_t in, const float* bias, float* y,
                      int64_t y_stride) {
  if (format == DType::kQ8_0) {
    DriveQuant<Kernel, DType::kQ8_0, kR, kC>(x, n, x_stride, w, out, in, bias, y, y_stride);
  } else {
    DriveQuant<Kernel, DType::kQ4_0, kR, kC>(x, n, x_stride, w, out, in, bias, y, y_stride);
  }
}

// Per-path entry points (matmul_quant.cc, matmul_quant_x86.cc): the driver with the path's
// kernel, for W in `format` (kQ8_0 or kQ4_0) as packed rows. n, out, in > 0, in % 32 == 0.
void SkinnyQuantPortable(DType format, const float* x, int64_t n, int64_t x_stride,
                         const uint8_t* w, int64_t out, int64_t in, const float* bias, float* y,
                         int64_t y_stride);
void SkinnyQuantAvx2(bool vnni, DType format, const float* x, int64_t n, int64_t x_stride,
                     const uint8_t* w, int64_t out, int64_t in, const float* bias, float* y,
                     int64_t y_stride);
void SkinnyQuantAvx512Vnni(DType format, const float* x, int64_t n, int64_t x_stride,
                           const uint8_t* w, int64_t out, int64_t in, const float* bias, float* y,
                           int64_t y_stride);

}  // namespace shardlm::matmul_internal

#endif  // SHARDLM_KERNELS_MATMUL_QUANT_INTERNAL_H_
