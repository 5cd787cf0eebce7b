#include "kernels/peak_probe.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>

#include "base/thread_pool.h"
#include "kernels/cpu.h"

namespace shardlm {
namespace {

// 24 independent chains: latency 4 × 2 pipes needs ≥ 8 in flight.
constexpr int kChains = 24;
constexpr int64_t kIters = 2'000'000;

// Reads a probe's final sum through a volatile, so that its chains are not optimized away.
template <typename V>
void KeepAlive(const V& sum) {
  unsigned char bytes[sizeof(V)];
  std::memcpy(bytes, &sum, sizeof(V));
  volatile unsigned char sink = bytes[0];
  (void)sink;
}

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
  KeepAlive(sum);
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
  KeepAlive(sum);
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
  KeepAlive(sum);
}

// The same probes for CPUs without AVX-512 (kernels/matmul_x86.cc's Avx2Fma and
// matmul_quant_x86.cc's QuantAvx2), each counted in the AVX-512 instructions' units so that
// every bound divides by one rate: a ymm FMA is half a 16-lane FMA, and 32 byte products half
// a vpdpbusd.
__attribute__((target("avx2,fma"))) void FmaProbeAvx2() {
  __m256 a[kChains];
#pragma GCC unroll 24
  for (int j = 0; j < kChains; ++j) a[j] = _mm256_set1_ps(static_cast<float>(j));
  const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
  for (int64_t it = 0; it < 2 * kIters; ++it) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) asm("vfmadd213ps %2, %1, %0" : "+x"(a[j]) : "x"(m), "x"(c));
  }
  __m256 sum = a[0];
#pragma GCC unroll 24
  for (int j = 1; j < kChains; ++j) sum = _mm256_add_ps(sum, a[j]);
  KeepAlive(sum);
}

// 32 byte products into int32 lanes as QuantAvx2::Dot does: AVX-VNNI's vpdpbusd where the
// CPU has it, else vpmaddubsw, vpmaddwd by ones and vpaddd.
template <bool kVnni>
__attribute__((target("avx2,fma"))) inline void DotAvx2(__m256i& acc, __m256i u, __m256i v,
                                                        __m256i ones) {
  if constexpr (kVnni) {
    (void)ones;
    asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(v));
  } else {
    // One statement that updates acc: separate ones on the constant u and v would be
    // computed once and hoisted by the compiler.
    __m256i t;
    asm("vpmaddubsw %3, %2, %1\n\tvpmaddwd %4, %1, %1\n\tvpaddd %1, %0, %0"
        : "+x"(acc), "=&x"(t)
        : "x"(u), "x"(v), "x"(ones));
  }
}

// 12 chains: the plain form's three instructions have 5 or more cycles of latency in all.
template <bool kVnni>
__attribute__((target("avx2,fma"))) void DotProbeAvx2() {
  constexpr int kDotChains = 12;
  __m256i a[kDotChains];
#pragma GCC unroll 12
  for (int j = 0; j < kDotChains; ++j) a[j] = _mm256_set1_epi32(j);
  const __m256i u = _mm256_set1_epi8(3), v = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  for (int64_t it = 0; it < 2 * kIters * kChains / kDotChains; ++it) {
#pragma GCC unroll 12
    for (int j = 0; j < kDotChains; ++j) DotAvx2<kVnni>(a[j], u, v, ones);
  }
  __m256i sum = a[0];
#pragma GCC unroll 12
  for (int j = 1; j < kDotChains; ++j) sum = _mm256_add_epi32(sum, a[j]);
  KeepAlive(sum);
}

// The AVX2 quantized tile's arithmetic per (x row, weight row) pair and half chunk (8 blocks):
// with AVX-VNNI 8 vpdpbusd; without, Q4_0's 8 vpmaddubsw added in 16-bit lanes and one
// vpmaddwd (Q8_0 takes a vpsignb, a vpmaddwd and a vpaddd more per 32 bytes: this is the
// cheaper of the two formats' mixes); then the fold, as in QuantFoldProbeAvx512.
template <bool kVnni>
__attribute__((target("avx2,fma"))) void QuantFoldProbeAvx2() {
  constexpr int kPairsAvx2 = 4;
  __m256i s[kPairsAvx2];
  __m256 a[kPairsAvx2];
#pragma GCC unroll 4
  for (int p = 0; p < kPairsAvx2; ++p) {
    s[p] = _mm256_setzero_si256();
    a[p] = _mm256_set1_ps(static_cast<float>(p));
  }
  const __m256i u = _mm256_setzero_si256(), v = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  const __m256 dw = _mm256_set1_ps(0.5f), dx = _mm256_set1_ps(0.25f);
  for (int64_t it = 0; it < 2 * kFoldIters * kPairs / kPairsAvx2; ++it) {
#pragma GCC unroll 8
    for (int k = 0; k < kDotsPerFold; ++k) {
#pragma GCC unroll 4
      for (int p = 0; p < kPairsAvx2; ++p) {
        if constexpr (kVnni) {
          DotAvx2<true>(s[p], u, v, ones);
        } else {
          __m256i t;  // one statement, as in DotAvx2
          asm("vpmaddubsw %3, %2, %1\n\tvpaddw %1, %0, %0" : "+x"(s[p]), "=&x"(t) : "x"(u), "x"(v));
        }
      }
    }
#pragma GCC unroll 4
    for (int p = 0; p < kPairsAvx2; ++p) {
      __m256i w = s[p];
      if constexpr (!kVnni) asm volatile("vpmaddwd %2, %1, %0" : "=x"(w) : "x"(s[p]), "x"(ones));
      __m256 f, d;
      asm volatile("vcvtdq2ps %1, %0" : "=x"(f) : "x"(w));
      asm volatile("vmulps %2, %1, %0" : "=x"(d) : "x"(dw), "x"(dx));
      asm volatile("vfmadd231ps %2, %1, %0" : "+x"(a[p]) : "x"(f), "x"(d));
    }
  }
  __m256 sum = a[0];
#pragma GCC unroll 4
  for (int p = 1; p < kPairsAvx2; ++p) {
    sum = _mm256_add_ps(sum, _mm256_add_ps(a[p], _mm256_cvtepi32_ps(s[p])));
  }
  KeepAlive(sum);
}
#endif

// Which form of a probe runs: the AVX-512 one where the CPU has its instructions, else the
// AVX2 one (with AVX-VNNI where present), as the matmul picks its kernels.
enum class ProbeForm { kNone, kAvx512, kAvx2, kAvx2Vnni };

ProbeForm FormOf(PeakProbe probe) {
  const CpuFeatures& cpu = Cpu();
  if (probe == PeakProbe::kFma ? cpu.avx512 : cpu.avx512_vnni) return ProbeForm::kAvx512;
  if (!cpu.avx2_fma) return ProbeForm::kNone;
  return probe != PeakProbe::kFma && cpu.avx_vnni ? ProbeForm::kAvx2Vnni : ProbeForm::kAvx2;
}

}  // namespace

bool HavePeakProbe(PeakProbe probe) { return FormOf(probe) != ProbeForm::kNone; }

void RunPeakProbe(PeakProbe probe) {
#if defined(__x86_64__)
  const ProbeForm form = FormOf(probe);
  if (form == ProbeForm::kNone) return;
  const bool vnni = form == ProbeForm::kAvx2Vnni;
  switch (probe) {
    case PeakProbe::kFma:
      form == ProbeForm::kAvx512 ? FmaProbeAvx512() : FmaProbeAvx2();
      break;
    case PeakProbe::kDot:
      form == ProbeForm::kAvx512 ? DotProbeAvx512()
      : vnni                     ? DotProbeAvx2<true>()
                                 : DotProbeAvx2<false>();
      break;
    case PeakProbe::kQuantFold:
      form == ProbeForm::kAvx512 ? QuantFoldProbeAvx512()
      : vnni                     ? QuantFoldProbeAvx2<true>()
                                 : QuantFoldProbeAvx2<false>();
      break;
  }
#else
  (void)probe;
#endif
}

// In AVX-512 units either way: the AVX2 forms run twice the instructions per count (see
// FmaProbeAvx2).
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
