// Micro-benchmark: SkinnyMatMul vs OpenBLAS cblas_sgemm on one decode-sized weight.
//
// W is 8192 × 8192 F32 (256 MiB, far beyond L3), so every call streams W from DRAM. The
// napkin-math bound for one call is max(memory, compute), both measured in this run:
// memory = bytes(W) / plain-read bandwidth (a read-only loop over W), compute = n·in·out MACs /
// peak 16-lane FMA rate (register-only FMA chains). They meet where a weight's n FMAs take as
// long as reading its 4 bytes: n ≈ 64 B × FMA rate / bandwidth, about 14 on a Zen 5 core.
// Both libraries run single-threaded (one rank per core). Cores may be shared with other work,
// so every figure is a median of interleaved rounds: compare ratios within one run.
//
// Weights live in 4 KiB pages by default, as a std::vector in the engine does; --hugepages
// puts them in transparent huge pages (madvise), which removes a TLB miss and a stop of the
// hardware prefetcher every 4 KiB of every weight row.
//
//   matmul_bench [--all-paths] [--hugepages] [--reps N]
#include <cblas.h>
#include <sys/mman.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "base/rng.h"
#include "engine/matmul.h"

namespace shardlm {
namespace {

constexpr int64_t kOut = 8192;
constexpr int64_t kIn = 8192;
constexpr int64_t kMaxN = 16;
constexpr double kWeightBytes = static_cast<double>(kOut * kIn * sizeof(float));

double TimeMs(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Read-only pass over W with 64 independent partial sums: vectorizes without reassociation
// into several independent add chains, so it is bound by memory, not by add latency.
float ReadAll(const float* w, int64_t size) {
  float s[64] = {};
  for (int64_t k = 0; k + 64 <= size; k += 64) {
    for (int j = 0; j < 64; ++j) s[j] += w[k + j];
  }
  float total = 0;
  for (float v : s) total += v;
  return total;
}

// Register-only 16-lane FMA chains, to measure this core's peak FMA rate: 24 independent
// chains (FMA latency 4 × 2 pipes needs ≥ 8 in flight), kFmaProbeCount FMAs in all.
constexpr int kFmaChains = 24;
constexpr int64_t kFmaProbeIters = 2'000'000;
constexpr double kFmaProbeCount = kFmaChains * static_cast<double>(kFmaProbeIters);
#if defined(__x86_64__)
__attribute__((target("avx512f"))) void FmaProbeAvx512() {
  __m512 a[kFmaChains];
#pragma GCC unroll 24
  for (int j = 0; j < kFmaChains; ++j) a[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
  for (int64_t it = 0; it < kFmaProbeIters; ++it) {
#pragma GCC unroll 24
    for (int j = 0; j < kFmaChains; ++j) a[j] = _mm512_fmadd_ps(a[j], m, c);
  }
  __m512 sum = a[0];
#pragma GCC unroll 24
  for (int j = 1; j < kFmaChains; ++j) sum = _mm512_add_ps(sum, a[j]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  volatile float sink = lanes[0];  // keeps the chains alive
  (void)sink;
}
#endif
bool HaveFmaProbe() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}
void FmaProbe() {
#if defined(__x86_64__)
  FmaProbeAvx512();
#endif
}

// kOut × kIn floats, 2 MiB aligned; in transparent huge pages if asked (and the kernel allows).
struct Weights {
  explicit Weights(bool huge) {
    const size_t bytes = static_cast<size_t>(kOut * kIn) * sizeof(float);
    data = static_cast<float*>(std::aligned_alloc(size_t{2} << 20, bytes));
    if (huge && madvise(data, bytes, MADV_HUGEPAGE) != 0) std::perror("madvise");
    Rng rng(42);
    for (int64_t j = 0; j < kOut * kIn; ++j) data[j] = rng.Uniform(-1.0f, 1.0f);
  }
  ~Weights() { std::free(data); }
  Weights(const Weights&) = delete;
  Weights& operator=(const Weights&) = delete;
  float* data;
};

double GBps(double ms) { return kWeightBytes / (ms * 1e-3) / 1e9; }

int Main(int argc, char** argv) {
  bool all_paths = false, huge = false;
  int reps = 7;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--all-paths") == 0) {
      all_paths = true;
    } else if (std::strcmp(argv[a], "--hugepages") == 0) {
      huge = true;
    } else if (std::strcmp(argv[a], "--reps") == 0 && a + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++a]));
    } else {
      std::fprintf(stderr, "usage: %s [--all-paths] [--hugepages] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  openblas_set_num_threads(1);

  const Weights weights(huge);
  const float* w = weights.data;
  Rng rng(7);
  std::vector<float> x = rng.UniformVector(static_cast<size_t>(kMaxN * kIn), -1.0f, 1.0f);
  std::vector<float> y(static_cast<size_t>(kMaxN * kOut));
  SkinnyMatMulReserve(kMaxN, kIn);

  std::vector<MatMulPath> paths = {SelectedMatMulPath()};
  if (all_paths) paths = AvailableMatMulPaths();
  const int64_t ns[] = {1, 2, 4, 8, 16};
  constexpr int kNs = 5;

  // Every measurement of a round runs back to back, round after round, so that load from other
  // work on the machine hits all columns alike; each figure is the median over rounds.
  struct Series {
    std::function<void()> fn;
    std::vector<double> ms;
  };
  volatile float sink = 0;
  std::vector<Series> series;
  series.push_back({[&] { sink = sink + ReadAll(w, kOut * kIn); }, {}});
  series.push_back({FmaProbe, {}});
  for (MatMulPath path : paths) {
    for (int64_t n : ns) {
      series.push_back({[&, path, n] {
                          SkinnyMatMulWithPath(path, x.data(), n, kIn, w, kOut, kIn, nullptr,
                                               y.data(), kOut);
                        },
                        {}});
    }
  }
  for (int64_t n : ns) {
    series.push_back({[&, n] {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                                    static_cast<int>(kOut), static_cast<int>(kIn), 1.0f, x.data(),
                                    static_cast<int>(kIn), w, static_cast<int>(kIn), 0.0f, y.data(),
                                    static_cast<int>(kOut));
                      },
                      {}});
  }
  for (Series& s : series) s.fn();  // warm-up: page faults, code, x in cache
  for (int r = 0; r < reps; ++r) {
    for (Series& s : series) s.ms.push_back(TimeMs(s.fn));
  }
  auto median_of = [&](size_t i) { return Median(series[i].ms); };
  constexpr size_t kFirstPath = 2;
  const size_t blas0 = kFirstPath + paths.size() * kNs;

  const double read_ms = median_of(0);
  const double fma_per_ns = HaveFmaProbe() ? kFmaProbeCount / (median_of(1) * 1e6) : 0;
  // max(memory, compute) for one call with n rows.
  auto bound_ms = [&](int64_t n) {
    const double fma_ms = fma_per_ns > 0 ? n * kOut * kIn / 16.0 / fma_per_ns * 1e-6 : 0;
    return std::max(read_ms, fma_ms);
  };
  std::printf(
      "W %lld x %lld f32 = %.0f MiB in %s pages; plain read: %.2f ms = %.1f GB/s "
      "(the bound)\n",
      static_cast<long long>(kOut), static_cast<long long>(kIn), kWeightBytes / (1 << 20),
      huge ? "huge" : "4 KiB", read_ms, GBps(read_ms));
  std::printf("peak 16-lane FMA rate: %.2f per ns -> compute bound n·%lld·%lld/16/rate\n",
              fma_per_ns, static_cast<long long>(kOut), static_cast<long long>(kIn));
  std::printf("selected path: %s; OpenBLAS %s, 1 thread; medians of %d interleaved rounds\n\n",
              MatMulPathName(), OPENBLAS_VERSION, reps);
  std::printf("%-10s %3s | %9s %7s | %8s %7s | %9s %7s | %7s\n", "path", "n", "skinny ms", "GB/s",
              "bound ms", "t/bound", "sgemm ms", "GB/s", "speedup");
  for (size_t p = 0; p < paths.size(); ++p) {
    for (int j = 0; j < kNs; ++j) {
      const double skinny_ms = median_of(kFirstPath + p * kNs + j), blas_ms = median_of(blas0 + j);
      std::printf("%-10s %3lld | %9.2f %7.1f | %8.2f %7.2f | %9.2f %7.1f | %6.2fx\n",
                  MatMulPathName(paths[p]), static_cast<long long>(ns[j]), skinny_ms,
                  GBps(skinny_ms), bound_ms(ns[j]), skinny_ms / bound_ms(ns[j]), blas_ms,
                  GBps(blas_ms), blas_ms / skinny_ms);
    }
    std::printf("%-10s t(n=16)/t(n=1): skinny %.2f, sgemm %.2f\n\n", MatMulPathName(paths[p]),
                median_of(kFirstPath + p * kNs + kNs - 1) / median_of(kFirstPath + p * kNs),
                median_of(blas0 + kNs - 1) / median_of(blas0));
  }

  // Batch invariance on the big shape: row 5 computed alone vs inside a batch of 16.
  std::vector<float> alone(static_cast<size_t>(kOut));
  const float* x5 = x.data() + 5 * kIn;
  SkinnyMatMul(x.data(), kMaxN, kIn, w, kOut, kIn, nullptr, y.data(), kOut);
  SkinnyMatMul(x5, 1, kIn, w, kOut, kIn, nullptr, alone.data(), kOut);
  const bool skinny_same =
      std::memcmp(alone.data(), y.data() + 5 * kOut, kOut * sizeof(float)) == 0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kMaxN, kOut, kIn, 1.0f, x.data(), kIn, w,
              kIn, 0.0f, y.data(), kOut);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, kOut, kIn, 1.0f, x5, kIn, w, kIn, 0.0f,
              alone.data(), kOut);
  int64_t blas_diff = 0;
  for (int64_t o = 0; o < kOut; ++o) blas_diff += alone[o] != y[5 * kOut + o];
  std::printf("row 5 alone vs in a batch of 16: skinny %s; sgemm %lld of %lld outputs differ\n",
              skinny_same ? "bit-identical" : "DIFFERENT", static_cast<long long>(blas_diff),
              static_cast<long long>(kOut));
  return skinny_same ? 0 : 1;
}

}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) { return shardlm::Main(argc, argv); }
