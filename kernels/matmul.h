// Batch-invariant skinny matmul for decode: y[n, out] = x[n, in] · Wᵀ (+ b) with small n.
// W is stored as f32, bf16 or f16 (DType); x, bias and y are f32.
//
// Contract (what callers may rely on):
//  * Batch invariance. For a given path, y[i][o] is a pure function of (x row i, W row o,
//    bias[o], in): bit-identical whatever n is, wherever row i sits in the batch, whatever the
//    strides or buffer alignment. A request's logits therefore do not change with the batch it
//    is scheduled into. (cblas_sgemm does not promise this: its blocking depends on n.)
//  * Accumulation order, per (i, o), fixed by `in` alone: L = MatMulLanes(path) partial sums;
//    partial sum j accumulates x[i][k]·w[o][k] for k ≡ j (mod L) in increasing k, starting from
//    +0 (AVX-512/AVX2: one fused multiply-add per term; portable: a rounded product, then an
//    add). The L partial sums are then added in a fixed pairwise tree (lane j + lane j + L/2,
//    halving until one is left), and finally bias[o] is added. Different paths give different
//    bits (L and fusing differ); one process uses one path for every call.
//  * 16-bit weights. A bf16 or f16 weight is widened exactly to f32 in a register, and the
//    arithmetic above runs unchanged on the widened value: y is bit-identical to the same
//    path's f32 call on W widened element by element (Bf16ToF32 / F16ToF32 of base/half.h).
//    (A NaN weight gives a NaN output either way; only its payload may differ.)
//  * Cost: each weight is read from DRAM once per call, for all n rows. Small n is DRAM-bound
//    (n = 1 streams at about plain-read bandwidth, n = 4 costs ~1.2× n = 1); each weight then
//    feeds n FMAs, so by n = 16 one core is FMA-bound (16·in·out MACs at 32 per cycle), ~2×
//    n = 1 on a Zen 5 core. 16-bit W halves the bytes, so n = 1 takes about half the time of
//    f32 and the FMA bound is reached at about half the n. Prefill-sized n runs in row panels
//    of ~1 MiB of x (W re-streamed per panel), at about cblas_sgemm's rate. Numbers:
//    matmul_bench (--prefill for large n).
//  * y must not overlap x, w or bias. x rows are `x_stride` floats apart (≥ in when n > 1), y
//    rows `y_stride` floats apart (≥ out when n > 1); elements between rows are neither read
//    nor written. SkinnyMatMul is single-threaded and safe to call concurrently on disjoint
//    outputs; SkinnyMatMulParallel splits the outputs over the compute pool, same bits.
//  * Scratch: when n exceeds one register tile (4 rows), x is repacked into a per-thread
//    buffer of about n·in floats. It grows on demand and is kept, so only a call larger than
//    every earlier one on its thread allocates; SkinnyMatMulReserve does that up front, on
//    every thread of the compute pool.
//
// Q8_0 and Q4_0 weights (kernels/quant.h; `in` a multiple of 32). Integer dot products, as
// llama.cpp computes them, with this contract, the same bits on every path:
//  * x is quantized per row and per block of 32: amax = max|x_k|, id = 127/amax (0 when
//    amax = 0), q_k = x_k·id rounded to the nearest integer (ties to even), d_x = amax/127,
//    each operation one f32 rounding. A block with a non-finite x has d_x = NaN, q = 0.
//  * For weight row o and block b: S_b = Σ q_w·q_x over the block, an exact int32 (Q4_0's
//    q_w already has its 8 subtracted), and lane b mod 16 of 16 f32 partial sums (from +0)
//    takes fma(S_b, d_w·d_x, lane), d_w the f16 scale widened and d_w·d_x rounded to f32,
//    in increasing b. Then the 16-lane tree and the bias as above.
//  So y depends only on (x row, W row, bias, in): batch-invariant and the same on every
//  path and thread count. The paths (QuantKernel) differ in speed only: AVX-512 VNNI
//  vpdpbusd on 64 bytes, AVX2 with AVX-VNNI's 32-byte vpdpbusd, or AVX2 vpmaddubsw.
//  Per 512 weights and (x row, W row) a path does 8 byte dot-product instructions and one
//  FMA, and W rows are read once per call as for the other formats: Q4_0 is 0.5625 bytes per
//  weight, Q8_0 1.0625.
#ifndef SHARDLM_KERNELS_MATMUL_H_
#define SHARDLM_KERNELS_MATMUL_H_

#include <cstdint>
#include <vector>

#include "base/dtype.h"
#include "kernels/cpu.h"

namespace shardlm {

// The kernel's instruction-set variants are the levels of kernels/cpu.h, each with its own
// partial-sum count: portable 16, AVX2+FMA 8, AVX-512 16 (with masked K tails). Every level
// is implemented; a process uses the best one the CPU has for every call.
//
// Name of the level SkinnyMatMul uses in this process (chosen once, on first use).
const char* MatMulIsaName();
Isa SelectedMatMulIsa();
// Number of interleaved partial sums per output (L in the contract above).
int MatMulLanes(Isa path);

// How calls with BF16 weights multiply, process-wide (F32 and F16 weights are unaffected).
enum class Bf16Math {
  // The default: weights widened exactly to f32, the selected path's f32 arithmetic (the
  // contract above); a BF16 model's outputs are those of its F32 widening, bit for bit.
  kExact,
  // AVX512-BF16 dot products (vdpbf16ps, as llama.cpp and oneDNN use): x is rounded to bf16
  // (to nearest even; |x| below 2^-126 becomes ±0), and each of 16 lanes adds a pair of
  // exact bf16 products per 32 elements of `in`, lane j taking k ≡ 2j, 2j + 1 (mod 32);
  // then the lane tree and the bias as above. Twice the multiply-adds per instruction and no
  // widening: at n = 16 a call took ~0.7× the kExact time in matmul_bench (W streaming then
  // limits it), but at n = 1 on rows of ≤ 2048 it streams ~20% slower. Each x keeps a relative
  // error ≤ 2^-9; results are still batch-invariant, but differ from kExact's. Needs
  // AVX512-BF16.
  kDot,
};
const char* Bf16MathName(Bf16Math math);  // "exact", "dot"
bool Bf16MathAvailable(Bf16Math math);    // kDot: the CPU has AVX512-BF16
// Selects the mode for every later call in this process; CHECKs Bf16MathAvailable. Set it
// before decoding starts (not while a call runs on another thread).
void SetBf16Math(Bf16Math math);
Bf16Math SelectedBf16Math();  // kExact until SetBf16Math

// How far ahead the kernels prefetch the weights: StreamPrefetch (kernels/cpu.h).

// y[i][o] = Σ_k x[i][k]·w[o][k] (+ bias[o]) for i < n, o < out, k < in.
// x: [n, in] with row stride x_stride; w: [out, in] row-major, contiguous; bias: [out] or
// nullptr; y: [n, out] with row stride y_stride. Uses SelectedMatMulIsa() (and, for BF16
// weights, SelectedBf16Math()).
void SkinnyMatMul(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                  int64_t in, const float* bias, float* y, int64_t y_stride);

// The same for W of any DType: `w` points to out·in elements of `w_type`, f32 or uint16_t
// bit patterns, row-major.
void SkinnyMatMul(const float* x, int64_t n, int64_t x_stride, DType w_type, const void* w,
                  int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride);

// SkinnyMatMul with the outputs split over the compute pool (base/thread_pool.h): each thread
// computes a contiguous range of W rows (of all n x rows), so W is still read once. Each
// output's arithmetic is exactly SkinnyMatMul's, so y is bit-identical at any thread count.
// Calls too small to pay for the fork-join (under ~64 K weights) run on the calling thread.
// Must not be called from inside a compute-pool task (it then runs single-threaded).
void SkinnyMatMulParallel(const float* x, int64_t n, int64_t x_stride, DType w_type,
                          const void* w, int64_t out, int64_t in, const float* bias, float* y,
                          int64_t y_stride);

// Allocates the scratch for calls with up to `max_n` rows of up to `max_in` columns on the
// calling thread and on every thread of the current compute pool, so that the decode loop
// does not allocate. Optional; call at start-up, after SetComputeThreads (a new pool has new
// threads).
void SkinnyMatMulReserve(int64_t max_n, int64_t max_in);

// Same, on an explicitly chosen path, BF16 weights always as Bf16Math::kExact (tests compare
// every path; CHECKs that it is available).
void SkinnyMatMulWithIsa(Isa path, const float* x, int64_t n, int64_t x_stride,
                          const float* w, int64_t out, int64_t in, const float* bias, float* y,
                          int64_t y_stride);
void SkinnyMatMulWithIsa(Isa path, const float* x, int64_t n, int64_t x_stride,
                          DType w_type, const void* w, int64_t out, int64_t in,
                          const float* bias, float* y, int64_t y_stride);

// The kDot kernel directly, whatever SelectedBf16Math is (tests); CHECKs availability.
void SkinnyMatMulBf16Dot(const float* x, int64_t n, int64_t x_stride, const uint16_t* w,
                         int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride);

// Reference: plain loops, double accumulation starting from the bias, rounded once to float.
void SkinnyMatMulNaive(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                       int64_t in, const float* bias, float* y, int64_t y_stride);
// Same with W of any DType, each weight widened exactly first (Q8_0 / Q4_0: the bit-exact
// SkinnyMatMulQuantNaive).
void SkinnyMatMulNaive(const float* x, int64_t n, int64_t x_stride, DType w_type,
                       const void* w, int64_t out, int64_t in, const float* bias, float* y,
                       int64_t y_stride);

// The kernels for Q8_0 and Q4_0 weights, best first on a CPU that has them all.
enum class QuantKernel {
  kPortable,    // plain C++
  kAvx2,        // AVX2 vpmaddubsw + vpmaddwd
  kAvx2Vnni,    // AVX2 with AVX-VNNI's vpdpbusd
  kAvx512Vnni,  // AVX-512 with AVX512-VNNI's vpdpbusd
};
const char* QuantKernelName(QuantKernel kernel);  // "portable", "avx2", "avx2+vnni", "avx512+vnni"
bool QuantKernelAvailable(QuantKernel kernel);
// The one the Isa path uses for block-quantized weights: kAvx512 → AVX-512 VNNI when the CPU
// has it, else the AVX2 kernel; kAvx2Fma → AVX2 (with AVX-VNNI when present); portable.
QuantKernel QuantKernelFor(Isa path);
// SkinnyMatMul for Q8_0 / Q4_0 `w` (packed rows, kernels/quant.h) on one chosen kernel
// (tests and benches compare them); CHECKs that it is available.
void SkinnyMatMulQuantWithKernel(QuantKernel kernel, const float* x, int64_t n, int64_t x_stride,
                                 DType format, const void* w, int64_t out, int64_t in,
                                 const float* bias, float* y, int64_t y_stride);
// Reference for Q8_0 / Q4_0: the contract above in plain loops, element by element (bit-exact).
void SkinnyMatMulQuantNaive(const float* x, int64_t n, int64_t x_stride, DType format,
                            const void* w, int64_t out, int64_t in, const float* bias, float* y,
                            int64_t y_stride);

}  // namespace shardlm

#endif  // SHARDLM_KERNELS_MATMUL_H_
