// Micro-benchmark: SkinnyMatMul vs OpenBLAS cblas_sgemm on one decode-sized weight.
//
// W is 8192 × 8192 F32 (256 MiB, far beyond L3), so every call streams W from DRAM. The
// napkin-math bound for one call is bytes(W) / (plain read bandwidth), measured here in the
// same run with a read-only loop over W; the ideal kernel costs that for every n up to the point
// where the n·in·out FMAs take longer than the stream. Both libraries run single-threaded (one
// rank per core). Cores may be shared with other work: compare ratios within one run.
//
//   matmul_bench [--all-paths] [--reps N]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
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

double MedianMs(int reps, const std::function<void()>& fn) {
  fn();  // warm-up: page faults, code and x in cache
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Read-only pass over W with 16 independent partial sums (vectorizable without reassociation).
float ReadAll(const std::vector<float>& w) {
  float s[16] = {};
  for (size_t k = 0; k + 16 <= w.size(); k += 16) {
    for (int j = 0; j < 16; ++j) s[j] += w[k + j];
  }
  float total = 0;
  for (float v : s) total += v;
  return total;
}

double GBps(double ms) { return kWeightBytes / (ms * 1e-3) / 1e9; }

int Main(int argc, char** argv) {
  bool all_paths = false;
  int reps = 7;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--all-paths") == 0) {
      all_paths = true;
    } else if (std::strcmp(argv[a], "--reps") == 0 && a + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++a]));
    } else {
      std::fprintf(stderr, "usage: %s [--all-paths] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  openblas_set_num_threads(1);

  Rng rng(42);
  std::vector<float> w = rng.UniformVector(static_cast<size_t>(kOut * kIn), -1.0f, 1.0f);
  std::vector<float> x = rng.UniformVector(static_cast<size_t>(kMaxN * kIn), -1.0f, 1.0f);
  std::vector<float> y(static_cast<size_t>(kMaxN * kOut));

  volatile float sink = 0;
  const double read_ms = MedianMs(reps, [&] { sink = sink + ReadAll(w); });
  std::printf("W %lld x %lld f32 = %.0f MiB; plain read: %.2f ms = %.1f GB/s (the bound)\n",
              static_cast<long long>(kOut), static_cast<long long>(kIn), kWeightBytes / (1 << 20),
              read_ms, GBps(read_ms));
  std::printf("selected path: %s; OpenBLAS %s, 1 thread; median of %d calls\n\n",
              MatMulPathName(), OPENBLAS_VERSION, reps);

  std::vector<MatMulPath> paths = {SelectedMatMulPath()};
  if (all_paths) paths = AvailableMatMulPaths();
  const int64_t ns[] = {1, 2, 4, 8, 16};

  std::printf("%-10s %3s | %9s %7s %8s | %9s %7s | %7s\n", "path", "n", "skinny ms", "GB/s",
              "t/t_read", "sgemm ms", "GB/s", "speedup");
  for (MatMulPath path : paths) {
    double skinny_first = 0, blas_first = 0, skinny_last = 0, blas_last = 0;
    for (int64_t n : ns) {
      const double skinny_ms = MedianMs(reps, [&] {
        SkinnyMatMulWithPath(path, x.data(), n, kIn, w.data(), kOut, kIn, nullptr, y.data(),
                             kOut);
      });
      const double blas_ms = MedianMs(reps, [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                    static_cast<int>(kOut), static_cast<int>(kIn), 1.0f, x.data(),
                    static_cast<int>(kIn), w.data(), static_cast<int>(kIn), 0.0f, y.data(),
                    static_cast<int>(kOut));
      });
      std::printf("%-10s %3lld | %9.2f %7.1f %8.2f | %9.2f %7.1f | %6.2fx\n", MatMulPathName(path),
                  static_cast<long long>(n), skinny_ms, GBps(skinny_ms), skinny_ms / read_ms,
                  blas_ms, GBps(blas_ms), blas_ms / skinny_ms);
      if (n == ns[0]) skinny_first = skinny_ms, blas_first = blas_ms;
      skinny_last = skinny_ms, blas_last = blas_ms;
    }
    std::printf("%-10s t(n=16)/t(n=1): skinny %.2f, sgemm %.2f\n\n", MatMulPathName(path),
                skinny_last / skinny_first, blas_last / blas_first);
  }

  // Batch invariance on the big shape: row 5 computed alone vs inside a batch of 16.
  std::vector<float> alone(static_cast<size_t>(kOut));
  const float* x5 = x.data() + 5 * kIn;
  SkinnyMatMul(x.data(), kMaxN, kIn, w.data(), kOut, kIn, nullptr, y.data(), kOut);
  SkinnyMatMul(x5, 1, kIn, w.data(), kOut, kIn, nullptr, alone.data(), kOut);
  const bool skinny_same = std::memcmp(alone.data(), y.data() + 5 * kOut, kOut * sizeof(float)) == 0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kMaxN, kOut, kIn, 1.0f, x.data(), kIn,
              w.data(), kIn, 0.0f, y.data(), kOut);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, kOut, kIn, 1.0f, x5, kIn, w.data(), kIn,
              0.0f, alone.data(), kOut);
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
