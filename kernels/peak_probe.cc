#include "kernels/peak_probe.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "base/thread_pool.h"
#include "kernels/cpu.h"

namespace shardlm {
namespace {

// 24 independent chains: latency 4 × 2 pipes needs ≥ 8 in flight.
constexpr int kChains = 24;
constexpr int64_t kIters = 2'000'000;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) void FmaProbeAvx512() {
  __m512 a[kChains];
#pragma GCC unroll 24
  for (int j = 0; j < kChains; ++j) a[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
  for (int64_t it = 0; it < kIters; ++it) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) a[j] = _mm512_fmadd_ps(a[j], m, c);
  }
  __m512 sum = a[0];
#pragma GCC unroll 24
  for (int j = 1; j < kChains; ++j) sum = _mm512_add_ps(sum, a[j]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  volatile float sink = lanes[0];  // keeps the chains alive
  (void)sink;
}

// vpdpbusd is written as assembly: with the intrinsic, GCC spilled the accumulators to the
// stack every round (vpdpbusd overwrites its accumulator operand, and GCC copied each one
// first), and the probe measured a third to a half of the real rate (1.3–1.6 per ns on a Zen
// 4 core, where this one gives 3.65, the FMA rate).
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void DotProbeAvx512() {
  __m512i a[kChains];
#pragma GCC unroll 24
  for (int j = 0; j < kChains; ++j) a[j] = _mm512_set1_epi32(j);
  const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
  for (int64_t it = 0; it < kIters; ++it) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) asm("vpdpbusd %2, %1, %0" : "+v"(a[j]) : "v"(u), "v"(v));
  }
  __m512i sum = a[0];
#pragma GCC unroll 24
  for (int j = 1; j < kChains; ++j) sum = _mm512_add_epi32(sum, a[j]);
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, sum);
  volatile int32_t sink = lanes[0];
  (void)sink;
}

// The quantized kernels' arithmetic (kernels/matmul_quant_x86.cc, Chunk): kPairs (x row,
// weight row) pairs; per round each pair's int32 sums take 8 vpdpbusd, then the fold: the
// sums to f32, the scales' product, one FMA into the pair's f32 sums. All as assembly, so
// that nothing is hoisted out of the loop or spilled. The sums stay zero (u = 0): the rates
// do not depend on the values, and the f32 chains stay finite.
constexpr int kPairs = 8;
constexpr int kDotsPerFold = 8;
constexpr int64_t kFoldIters = kIters * kChains / (kPairs * kDotsPerFold);

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void QuantFoldProbeAvx512() {
  __m512i s[kPairs];
  __m512 a[kPairs];
#pragma GCC unroll 8
  for (int p = 0; p < kPairs; ++p) {
    s[p] = _mm512_setzero_si512();
    a[p] = _mm512_set1_ps(static_cast<float>(p));
  }
  const __m512i u = _mm512_setzero_si512(), v = _mm512_set1_epi8(-2);
  const __m512 dw = _mm512_set1_ps(0.5f), dx = _mm512_set1_ps(0.25f);
  for (int64_t it = 0; it < kFoldIters; ++it) {
#pragma GCC unroll 8
    for (int k = 0; k < kDotsPerFold; ++k) {
#pragma GCC unroll 8
      for (int p = 0; p < kPairs; ++p) asm("vpdpbusd %2, %1, %0" : "+v"(s[p]) : "v"(u), "v"(v));
    }
#pragma GCC unroll 8
    for (int p = 0; p < kPairs; ++p) {
      __m512 f, d;
      asm volatile("vcvtdq2ps %1, %0" : "=v"(f) : "v"(s[p]));
      asm volatile("vmulps %2, %1, %0" : "=v"(d) : "v"(dw), "v"(dx));
      asm volatile("vfmadd231ps %2, %1, %0" : "+v"(a[p]) : "v"(f), "v"(d));
    }
  }
  __m512 sum = a[0];
#pragma GCC unroll 8
  for (int p = 1; p < kPairs; ++p) {
    sum = _mm512_add_ps(sum, _mm512_add_ps(a[p], _mm512_maskz_cvtepi32_ps(0xffff, s[p])));
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  volatile float sink = lanes[0];
  (void)sink;
}
#endif

}  // namespace

bool HavePeakProbe(PeakProbe probe) {
  return probe == PeakProbe::kFma ? Cpu().avx512 : Cpu().avx512_vnni;
}

void RunPeakProbe(PeakProbe probe) {
#if defined(__x86_64__)
  if (!HavePeakProbe(probe)) return;
  switch (probe) {
    case PeakProbe::kFma:
      FmaProbeAvx512();
      break;
    case PeakProbe::kDot:
      DotProbeAvx512();
      break;
    case PeakProbe::kQuantFold:
      QuantFoldProbeAvx512();
      break;
  }
#else
  (void)probe;
#endif
}

double PeakProbeCount(PeakProbe probe) {
  if (probe == PeakProbe::kQuantFold) {
    return static_cast<double>(kFoldIters) * kPairs * kDotsPerFold;
  }
  return static_cast<double>(kIters) * kChains;
}

double MeasurePeakRate(PeakProbe probe, int reps) {
  if (!HavePeakProbe(probe)) return 0.0;
  const auto run = [probe] {
    ParallelFor(ComputeThreads(), 1, [probe](int64_t, int64_t) { RunPeakProbe(probe); });
  };
  run();  // warm-up: wakes the pool's threads and the vector units
  double best = 1e30;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return PeakProbeCount(probe) * ComputeThreads() / (best * 1e9);
}

}  // namespace shardlm
