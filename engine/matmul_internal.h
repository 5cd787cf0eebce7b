// Internals of engine/matmul.h shared by the per-ISA kernel files: the blocking driver, the
// fixed lane reduction, and the per-path entry points. Not for use outside engine/matmul*.
//
// Loop nest of one call (L lanes per vector, R×C register tile, KB = kKBlock):
//
//   for each tile of C weight rows o0..o0+C            ← W streamed once, row tile by row tile
//     for each super-block of ≤ kSuperRows x rows      ← usually the whole batch
//       for each K block k0..k0+KB                     ← W[C, KB] (≤ 16 KiB) stays in L1
//         for each block of R x rows                   ← re-uses the L1-resident W chunk
//           Tile<R, C>: acc[r][c] += x[r][k:k+L] ⊙ w[c][k:k+L] over the K block
//       y[i][o] = ReduceLanes(acc[i][o]) (+ bias[o])
//
// The K blocking makes every row block consume a W chunk while it is in L1, so the DRAM stream
// of W (kept going by the hardware prefetcher, which sees C sequential row streams) overlaps
// with the FMAs of all n rows instead of a "first row block streams, the rest compute" split.
//
// Why every variant gives the same bits: the vector accumulators of (i, o) are spilled to
// `acc` between K blocks and reloaded unchanged; each Tile<r, c> instantiation (r ≤ R, c ≤ C)
// runs the same per-(i, o) code — full vectors of L, then one tail of in % L elements done the
// same way in every tile (masked loads / a scalar loop) — and the reduction is one function.
// Nothing in the per-(i, o) arithmetic depends on r, c, n, i, the K block size or the strides;
// so the tile shape may even be chosen from n (see the entry points).
#ifndef SHARDLM_ENGINE_MATMUL_INTERNAL_H_
#define SHARDLM_ENGINE_MATMUL_INTERNAL_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

namespace shardlm::matmul_internal {

// K block in floats: a multiple of every lane count, so only the last block has a tail.
// 512 floats = 2 KiB per row; with C ≤ 8 weight rows the W chunk is ≤ 16 KiB of a 32-48 KiB L1.
extern int64_t g_kb;
#define kKBlock g_kb
// Rows whose accumulators live in the on-stack spill buffer at once. Beyond this the W tile
// (C × in floats, ≤ 256 KiB for in = 8192) is re-read from L2 per super-block.
inline constexpr int kSuperRows = 32;

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

// Micro-kernel: acc[r * kC * L + c * L + lane] += partial sums of x row r and w row c over
// k ∈ [k_begin, k_end). k_begin is a multiple of L; k_end - k_begin may leave a tail < L.
using TileFn = void (*)(const float* x, int64_t x_stride, const float* w, int64_t w_stride,
                        int64_t k_begin, int64_t k_end, float* acc);

// Table of Kernel::Tile<r, c, kC> for r ∈ [1, kR], c ∈ [1, kC]: the row/column tails use the
// same template as full tiles, instantiated smaller.
template <class Kernel, int kR, int kC>
struct TileTable {
  template <int... kIs>
  static constexpr std::array<TileFn, kR * kC> Make(std::integer_sequence<int, kIs...>) {
    return {&Kernel::template Tile<kIs / kC + 1, kIs % kC + 1, kC>...};
  }
  static constexpr std::array<TileFn, kR * kC> kFns =
      Make(std::make_integer_sequence<int, kR * kC>{});
  static TileFn Get(int r, int c) { return kFns[(r - 1) * kC + (c - 1)]; }
};

// The loop nest above for one kernel and one register tile shape. Arguments as SkinnyMatMul,
// already validated; n, out, in > 0.
template <class Kernel, int kR, int kC>
void Drive(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out, int64_t in,
           const float* bias, float* y, int64_t y_stride) {
  constexpr int L = Kernel::kLanes;
  static_assert(kSuperRows % kR == 0);
  // [kSuperRows][kC][L] vector accumulators, spilled between K blocks.
  alignas(64) float acc[kSuperRows * kC * L];
  for (int64_t o0 = 0; o0 < out; o0 += kC) {
    const int c = static_cast<int>(std::min<int64_t>(kC, out - o0));
    const float* w_tile = w + o0 * in;
    for (int64_t i0 = 0; i0 < n; i0 += kSuperRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kSuperRows, n - i0));
      std::fill(acc, acc + rows * kC * L, 0.0f);
      for (int64_t k0 = 0; k0 < in; k0 += kKBlock) {
        const int64_t k1 = std::min(in, k0 + kKBlock);
        for (int ib = 0; ib < rows; ib += kR) {
          const int r = std::min(kR, rows - ib);
          TileTable<Kernel, kR, kC>::Get(r, c)(x + (i0 + ib) * x_stride, x_stride, w_tile, in,
                                               k0, k1, acc + ib * kC * L);
        }
      }
      for (int ir = 0; ir < rows; ++ir) {
        float* y_row = y + (i0 + ir) * y_stride + o0;
        for (int ic = 0; ic < c; ++ic) {
          const float sum = ReduceLanes<L>(acc + (ir * kC + ic) * L);
          y_row[ic] = bias != nullptr ? sum + bias[o0 + ic] : sum;
        }
      }
    }
  }
}

// Per-path entry points (matmul.cc, matmul_x86.cc); same arguments and preconditions as Drive.
void SkinnyPortable(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                    int64_t in, const float* bias, float* y, int64_t y_stride);
void SkinnyAvx2Fma(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                   int64_t in, const float* bias, float* y, int64_t y_stride);
void SkinnyAvx512(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                  int64_t in, const float* bias, float* y, int64_t y_stride);
// CPUID (and OS register-state) checks for the SIMD paths; false on non-x86 builds.
bool CpuHasAvx2Fma();
bool CpuHasAvx512();

}  // namespace shardlm::matmul_internal

#endif  // SHARDLM_ENGINE_MATMUL_INTERNAL_H_
