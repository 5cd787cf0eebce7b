// Micro-benchmark: SkinnyMatMul vs OpenBLAS cblas_sgemm on one decode-sized weight, with W in
// F32, BF16, F16, Q8_0 and Q4_0.
//
// W is 8192 × 8192 (256 MiB in F32, 128 MiB in BF16/F16, far beyond L3), so every call streams
// W from DRAM. --shape OUTxIN times another W instead: a model's own shape (1024 inputs for a
// d 1024 model), or one small enough to stay in the last-level cache; with --from-cache, which
// times back-to-back calls, the latter gives the kernel's rate from cache (the "read" bound is
// then the cache's). The napkin-math bound for one call is max(memory, compute), both
// measured in this run: memory = bytes(W) / plain-read bandwidth (a read-only loop over the
// F32 W, split over the same threads), compute = n·in·out MACs / peak 16-lane FMA rate
// (register-only FMA chains, × threads); for Q8_0 and Q4_0 n·in·out / 64 / the rate of
// vpdpbusd with the kernels' fold (kernels/peak_probe.h; t/vpdp: against vpdpbusd alone).
// They meet where a weight's n FMAs take as long as reading it: for F32, n ≈ 64 B × FMA rate
// / bandwidth, about 14 on a Zen 5 core; 16-bit weights halve the bytes, so their n = 1 call
// should take about half the F32 time and meet the compute bound near n = 7. With --threads T
// the skinny calls split the outputs over T threads (SkinnyMatMulParallel) and OpenBLAS gets
// T threads. Cores may be shared with other work, so every figure is a median of interleaved
// rounds: compare ratios within one run.
//
// Weights live in 4 KiB pages by default, as a std::vector in the engine does; --hugepages
// puts them in transparent huge pages (madvise), which removes a TLB miss and a stop of the
// hardware prefetcher every 4 KiB of every weight row.
//
// --prefill instead times large n (128…1024) on model-sized shapes in GFLOP/s (prefill and
// scoring run whole prompts through the same kernel): F32 W against cblas_sgemm and the FMA
// peak, Q8_0 and Q4_0 W against the vpdpbusd peak with the quantized kernels' fold
// (kernels/peak_probe.h; --formats picks among the three).
//
// --formats F32,Q4_0 times only those weight formats (the first one is the ratio base).
// --prefetch near|far overrides the CPU's choice of how far ahead W is prefetched
// (kernels/cpu.h, StreamPrefetch), to compare the two.
//
//   matmul_bench [--all-paths] [--hugepages] [--reps N] [--threads T] [--prefill]
//                [--formats LIST] [--prefetch near|far] [--shape OUTxIN] [--from-cache]
#include <cblas.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/half.h"
#include "base/rng.h"
#include "base/thread_pool.h"
#include "kernels/matmul.h"
#include "kernels/peak_probe.h"
#include "kernels/quant.h"

namespace shardlm {
namespace {

// W is out_dim × in_dim: 8192 × 8192 unless --shape says otherwise (set once, in Main).
int64_t out_dim = 8192;
int64_t in_dim = 8192;
constexpr int64_t kMaxN = 16;

// Time of one call of fn.
double TimeMs(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// --from-cache: the mean of back-to-back calls of fn filling at least 2 ms (at least one), as
// ggml's test-backend-ops times its cases. A W that fits in the last-level cache stays there
// across the calls; at 2048² F32, n = 1, that took 82–91 ps per weight where one call after
// the other formats' calls took 148.
double TimeRepeatedMs(const std::function<void()>& fn) {
  constexpr double kMinMs = 2.0;
  const auto t0 = std::chrono::steady_clock::now();
  double ms = 0;
  int calls = 0;
  do {
    fn();
    ++calls;
    ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  } while (ms < kMinMs);
  return ms / calls;
}

// Whether `name` is one of the comma-separated names in `list` (--formats).
bool Listed(absl::string_view list, absl::string_view name) {
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    if (item == name) return true;
  }
  return false;
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

// The arithmetic peaks both modes time beside the kernels (kernels/peak_probe.h), in this order.
constexpr PeakProbe kProbes[] = {PeakProbe::kFma, PeakProbe::kDot, PeakProbe::kQuantFold};

// out_dim × in_dim weights of every type (the 16-bit ones rounded from the F32 values), 2 MiB
// aligned; in transparent huge pages if asked (and the kernel allows).
struct Weights {
  explicit Weights(bool huge) {
    const size_t count = static_cast<size_t>(out_dim * in_dim);
    f32 = static_cast<float*>(Alloc(count * sizeof(float), huge));
    bf16 = static_cast<uint16_t*>(Alloc(count * sizeof(uint16_t), huge));
    f16 = static_cast<uint16_t*>(Alloc(count * sizeof(uint16_t), huge));
    q8 = static_cast<uint8_t*>(Alloc(out_dim * WeightRowBytes(DType::kQ8_0, in_dim), huge));
    q4 = static_cast<uint8_t*>(Alloc(out_dim * WeightRowBytes(DType::kQ4_0, in_dim), huge));
    Rng rng(42);
    for (size_t j = 0; j < count; ++j) {
      f32[j] = rng.Uniform(-1.0f, 1.0f);
      bf16[j] = F32ToBf16(f32[j]);
      f16[j] = F32ToF16(f32[j]);
    }
    std::vector<uint8_t> quants(in_dim);
    std::vector<uint16_t> scales(in_dim / 32);
    for (DType type : {DType::kQ8_0, DType::kQ4_0}) {
      uint8_t* dst = type == DType::kQ8_0 ? q8 : q4;
      for (int64_t o = 0; o < out_dim; ++o) {
        QuantizeRow(type, f32 + o * in_dim, in_dim, quants.data(), scales.data());
        PackQuantRow(type, quants.data(), scales.data(), in_dim,
                     dst + o * WeightRowBytes(type, in_dim));
      }
    }
  }
  ~Weights() {
    std::free(f32);
    std::free(bf16);
    std::free(f16);
    std::free(q8);
    std::free(q4);
  }
  Weights(const Weights&) = delete;
  Weights& operator=(const Weights&) = delete;
  static void* Alloc(size_t bytes, bool huge) {
    constexpr size_t kAlign = size_t{2} << 20;
    bytes = (bytes + kAlign - 1) / kAlign * kAlign;  // aligned_alloc wants a multiple
    void* p = std::aligned_alloc(kAlign, bytes);
    if (huge && madvise(p, bytes, MADV_HUGEPAGE) != 0) std::perror("madvise");
    return p;
  }
  const void* Get(DType type) const {
    switch (type) {
      case DType::kF32:
        return f32;
      case DType::kBF16:
        return bf16;
      case DType::kF16:
        return f16;
      case DType::kQ8_0:
        return q8;
      case DType::kQ4_0:
        return q4;
      default:
        return nullptr;
    }
  }
  float* f32;
  uint16_t* bf16;
  uint16_t* f16;
  uint8_t* q8;
  uint8_t* q4;
};

// Bytes of W as stored (the scales included).
double Bytes(DType type) { return static_cast<double>(out_dim * WeightRowBytes(type, in_dim)); }
double GBps(double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; }

// Prefill: large n on model shapes, in GFLOP/s (2 flops per MAC): F32 W against cblas_sgemm
// and the FMA peak, Q8_0 / Q4_0 W (the same values, quantized) against the vpdpbusd peak
// (64 byte products per instruction, 128 flops).
int Prefill(int reps, int threads, const std::vector<DType>& types) {
  struct Shape {
    int64_t out, in;
  };
  const Shape shapes[] = {{2048, 2048}, {8192, 2048}, {2048, 8192}};
  const int64_t ns[] = {128, 256, 512, 1024};
  constexpr int64_t kMaxPrefillN = 1024, kMaxDim = 8192;
  Rng rng(11);
  const std::vector<float> w = rng.UniformVector(static_cast<size_t>(8192 * 2048), -1, 1);
  const std::vector<float> x =
      rng.UniformVector(static_cast<size_t>(kMaxPrefillN * kMaxDim), -1, 1);
  std::vector<float> y(static_cast<size_t>(kMaxPrefillN * kMaxDim));
  SkinnyMatMulReserve(kMaxPrefillN, kMaxDim);
  // Packed rows of w viewed as each shape, per quantized format.
  std::vector<std::vector<uint8_t>> packed(std::size(shapes) * types.size());
  for (size_t si = 0; si < std::size(shapes); ++si) {
    for (size_t ti = 0; ti < types.size(); ++ti) {
      if (!IsBlockQuantized(types[ti])) continue;
      const int64_t out = shapes[si].out, in = shapes[si].in;
      const int64_t row = WeightRowBytes(types[ti], in);
      std::vector<uint8_t>& dst = packed[si * types.size() + ti];
      dst.resize(static_cast<size_t>(out * row));
      std::vector<uint8_t> quants(static_cast<size_t>(in));
      std::vector<uint16_t> scales(static_cast<size_t>(in / kQuantBlock));
      for (int64_t o = 0; o < out; ++o) {
        QuantizeRow(types[ti], w.data() + o * in, in, quants.data(), scales.data());
        PackQuantRow(types[ti], quants.data(), scales.data(), in, dst.data() + o * row);
      }
    }
  }
  struct Series {
    size_t shape;
    size_t type;  // index into types
    int64_t n;
    bool blas;
    std::vector<double> ms;
  };
  std::vector<Series> series;
  for (size_t si = 0; si < std::size(shapes); ++si) {
    for (int64_t n : ns) {
      for (size_t ti = 0; ti < types.size(); ++ti) {
        series.push_back({si, ti, n, false, {}});
        if (types[ti] == DType::kF32) series.push_back({si, ti, n, true, {}});
      }
    }
  }
  auto run = [&](const Series& s) {
    const int64_t out = shapes[s.shape].out, in = shapes[s.shape].in;
    const DType type = types[s.type];
    if (s.blas) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(s.n),
                  static_cast<int>(out), static_cast<int>(in), 1.0f, x.data(),
                  static_cast<int>(in), w.data(), static_cast<int>(in), 0.0f, y.data(),
                  static_cast<int>(out));
    } else if (type == DType::kF32) {
      SkinnyMatMulParallel(x.data(), s.n, in, DType::kF32, w.data(), out, in, nullptr,
                           y.data(), out);
    } else {
      SkinnyMatMulParallel(x.data(), s.n, in, type, packed[s.shape * types.size() + s.type].data(),
                           out, in, nullptr, y.data(), out);
    }
  };
  std::vector<double> probe_ms[std::size(kProbes)];
  for (Series& s : series) run(s);  // warm-up
  for (int r = 0; r < reps; ++r) {
    for (size_t p = 0; p < std::size(kProbes); ++p) {
      if (!HavePeakProbe(kProbes[p])) continue;
      probe_ms[p].push_back(TimeMs([&] {
        ParallelFor(ComputeThreads(), 1, [&](int64_t, int64_t) { RunPeakProbe(kProbes[p]); });
      }));
    }
    for (Series& s : series) s.ms.push_back(TimeMs([&] { run(s); }));
  }
  // GFLOP/s: 2 per multiply-add, 16 per FMA and 64 per vpdpbusd.
  const auto gflops = [&](size_t p, double macs) {
    return probe_ms[p].empty()
               ? 0
               : PeakProbeCount(kProbes[p]) * macs * 2 * threads / (Median(probe_ms[p]) * 1e6);
  };
  const double fma_gflops = gflops(0, 16), dot_gflops = gflops(1, 64), fold_gflops = gflops(2, 64);
  std::printf(
      "prefill: %d thread(s), path %s, quantized kernel %s, OpenBLAS %s; cpu: %s; "
      "medians of %d rounds\n",
      threads, MatMulIsaName(), QuantKernelName(QuantKernelFor(SelectedMatMulIsa())),
      OPENBLAS_VERSION, CpuModelName().c_str(), reps);
  std::printf(
      "peak FMA rate (register-only chains): %.1f GFLOP/s; peak vpdpbusd rate: %.1f "
      "GFLOP/s alone (64 byte products each), %.1f with the quantized kernels' fold "
      "(kernels/peak_probe.h: Q8_0 and Q4_0 \"of peak\" is against this one)\n\n",
      fma_gflops, dot_gflops, fold_gflops);
  std::printf("%-11s %-5s %5s | %10s %8s | %10s %8s | %12s %9s\n", "out x in", "W", "n",
              "skinny ms", "GFLOP/s", "sgemm ms", "GFLOP/s", "skinny/sgemm", "of peak");
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& sk = series[i];
    const Series* bl = i + 1 < series.size() && series[i + 1].blas ? &series[i + 1] : nullptr;
    const Shape& shape = shapes[sk.shape];
    const DType type = types[sk.type];
    const double flops = 2.0 * sk.n * shape.out * shape.in;
    const double sk_ms = Median(sk.ms), sk_gf = flops / (sk_ms * 1e6);
    const double peak = type == DType::kF32 ? fma_gflops : fold_gflops;
    const std::string name = std::to_string(shape.out) + "x" + std::to_string(shape.in);
    if (bl != nullptr) {
      const double bl_ms = Median(bl->ms), bl_gf = flops / (bl_ms * 1e6);
      std::printf("%-11s %-5s %5lld | %10.2f %8.1f | %10.2f %8.1f | %11.0f%% %8.0f%%\n",
                  name.c_str(), DTypeName(type), static_cast<long long>(sk.n), sk_ms, sk_gf,
                  bl_ms, bl_gf, 100 * sk_gf / bl_gf, peak > 0 ? 100 * sk_gf / peak : 0.0);
      ++i;
    } else {
      std::printf("%-11s %-5s %5lld | %10.2f %8.1f | %10s %8s | %12s %8.0f%%\n", name.c_str(),
                  DTypeName(type), static_cast<long long>(sk.n), sk_ms, sk_gf, "", "", "",
                  peak > 0 ? 100 * sk_gf / peak : 0.0);
    }
  }
  return 0;
}

int Main(int argc, char** argv) {
  bool all_paths = false, huge = false, prefill = false, shape_given = false, from_cache = false;
  std::string only;
  int reps = 7, threads = 1;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--all-paths") == 0) {
      all_paths = true;
    } else if (std::strcmp(argv[a], "--hugepages") == 0) {
      huge = true;
    } else if (std::strcmp(argv[a], "--prefill") == 0) {
      prefill = true;
    } else if (std::strcmp(argv[a], "--reps") == 0 && a + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++a]));
    } else if (std::strcmp(argv[a], "--formats") == 0 && a + 1 < argc) {
      only = argv[++a];
    } else if (std::strcmp(argv[a], "--threads") == 0 && a + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++a]));
    } else if (std::strcmp(argv[a], "--from-cache") == 0) {
      from_cache = true;
    } else if (std::strcmp(argv[a], "--shape") == 0 && a + 1 < argc) {
      long long o = 0, i = 0;
      char tail = 0;
      if (std::sscanf(argv[++a], "%lldx%lld%c", &o, &i, &tail) != 2 || o < 1 || i < 32 ||
          i % 32 != 0 || o > (int64_t{1} << 20) || i > (int64_t{1} << 20)) {
        std::fprintf(stderr, "--shape wants OUTxIN, IN a multiple of 32 (whole quant blocks), "
                             "both at most 2^20: got %s\n", argv[a]);
        return 2;
      }
      out_dim = o;
      in_dim = i;
      shape_given = true;
    } else if (std::strcmp(argv[a], "--prefetch") == 0 && a + 1 < argc &&
               ParseStreamPrefetch(argv[a + 1]).has_value()) {
      SetStreamPrefetch(*ParseStreamPrefetch(argv[++a]));
    } else {
      std::fprintf(stderr,
                   "usage: %s [--all-paths] [--hugepages] [--reps N] [--threads T] [--prefill] "
                   "[--formats F32,BF16,…] [--prefetch near|far] [--shape OUTxIN] [--from-cache]\n",
                   argv[0]);
      return 2;
    }
  }
  if (all_paths && threads > 1) {
    std::fprintf(stderr, "--all-paths times each path single-threaded; drop --threads\n");
    return 2;
  }
  if (prefill && (shape_given || from_cache)) {
    std::fprintf(stderr,
                 "--prefill times its own model-sized shapes; drop --shape and --from-cache\n");
    return 2;
  }
  SetComputeThreads(threads);
  openblas_set_num_threads(threads);
  if (prefill) {
    // F32 (against sgemm) and the quantized formats, or those of --formats among them.
    std::vector<DType> types;
    for (const auto& [name, type] : {std::pair<const char*, DType>{"F32", DType::kF32},
                                     {"Q8_0", DType::kQ8_0}, {"Q4_0", DType::kQ4_0}}) {
      if (only.empty() || Listed(only, name)) types.push_back(type);
    }
    if (types.empty()) {
      std::fprintf(stderr, "--prefill times F32, Q8_0 and Q4_0: --formats names none of them\n");
      return 2;
    }
    return Prefill(reps, threads, types);
  }

  const Weights weights(huge);
  Rng rng(7);
  std::vector<float> x = rng.UniformVector(static_cast<size_t>(kMaxN * in_dim), -1.0f, 1.0f);
  std::vector<float> y(static_cast<size_t>(kMaxN * out_dim));
  SkinnyMatMulReserve(kMaxN, in_dim);

  std::vector<Isa> paths = {SelectedMatMulIsa()};
  if (all_paths) paths = AvailableIsas();
  // Weight formats; BF16 twice when the CPU has AVX512-BF16: exact (widened) and Bf16Math::kDot.
  struct Format {
    DType type;
    bool dot;
    const char* name;
  };
  std::vector<Format> formats = {{DType::kF32, false, "F32"},
                                 {DType::kBF16, false, "BF16"},
                                 {DType::kF16, false, "F16"}};
  if (Bf16MathAvailable(Bf16Math::kDot)) formats.push_back({DType::kBF16, true, "BF16dot"});
  formats.push_back({DType::kQ8_0, false, "Q8_0"});
  formats.push_back({DType::kQ4_0, false, "Q4_0"});
  if (!only.empty()) {
    std::vector<Format> chosen;
    for (const Format& f : formats) {
      if (Listed(only, f.name)) chosen.push_back(f);
    }
    if (chosen.empty()) {
      std::fprintf(stderr, "--formats: none of F32, BF16, F16, BF16dot, Q8_0, Q4_0 given\n");
      return 2;
    }
    formats = chosen;
  }
  const int kFormats = static_cast<int>(formats.size());
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
  // The plain read, split over the threads as the skinny calls are.
  std::vector<float> partial(static_cast<size_t>(threads) * 16);
  series.push_back({[&] {
                      constexpr int64_t kChunk = 1 << 16;
                      const int64_t total = out_dim * in_dim;
                      const int64_t chunks = (total + kChunk - 1) / kChunk;
                      ParallelFor(chunks, 1, [&](int64_t begin, int64_t end) {
                        partial[static_cast<size_t>(begin * threads / chunks) * 16] =
                            ReadAll(weights.f32 + begin * kChunk,
                                    std::min(end * kChunk, total) - begin * kChunk);
                      });
                      sink = sink + partial[0];
                    },
                    {}});
  for (PeakProbe probe : kProbes) {
    series.push_back(
        {[&, probe] { ParallelFor(threads, 1, [&](int64_t, int64_t) { RunPeakProbe(probe); }); },
         {}});
  }
  for (Isa path : paths) {
    for (const Format& format : formats) {
      for (int64_t n : ns) {
        const DType type = format.type;
        series.push_back({[&, path, format, type, n] {
                            const void* w = weights.Get(type);
                            if (format.dot) {
                              SkinnyMatMulBf16Dot(x.data(), n, in_dim, weights.bf16, out_dim,
                                                  in_dim, nullptr, y.data(), out_dim);
                            } else if (paths.size() == 1) {
                              SkinnyMatMulParallel(x.data(), n, in_dim, type, w, out_dim, in_dim,
                                                   nullptr, y.data(), out_dim);
                            } else {
                              SkinnyMatMulWithIsa(path, x.data(), n, in_dim, type, w, out_dim,
                                                  in_dim, nullptr, y.data(), out_dim);
                            }
                          },
                          {}});
      }
    }
  }
  for (int64_t n : ns) {
    series.push_back({[&, n] {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                                    static_cast<int>(out_dim), static_cast<int>(in_dim), 1.0f,
                                    x.data(), static_cast<int>(in_dim), weights.f32,
                                    static_cast<int>(in_dim), 0.0f, y.data(),
                                    static_cast<int>(out_dim));
                      },
                      {}});
  }
  for (Series& s : series) s.fn();  // warm-up: page faults, code, x in cache
  // By default each timing is one call, after the other series' calls: with the formats' W
  // together far beyond the last-level cache (the 8192² default), every call streams its W
  // from memory. --from-cache times each series after an untimed call of its own, as the mean
  // of back-to-back calls (TimeRepeatedMs): a W that fits in the cache is then read from it.
  for (int r = 0; r < reps; ++r) {
    for (Series& s : series) {
      if (from_cache) {
        s.fn();
        s.ms.push_back(TimeRepeatedMs(s.fn));
      } else {
        s.ms.push_back(TimeMs(s.fn));
      }
    }
  }
  auto median_of = [&](size_t i) { return Median(series[i].ms); };
  constexpr size_t kFirstPath = 4;
  const size_t kPerPath = kFormats * kNs;
  const size_t blas0 = kFirstPath + paths.size() * kPerPath;
  auto skinny_ms = [&](size_t p, int t, int j) {
    return median_of(kFirstPath + p * kPerPath + t * kNs + j);
  };

  const double read_ms = median_of(0);
  const double bandwidth = GBps(Bytes(DType::kF32), read_ms);  // GB/s
  // Each probe runs PeakProbeCount of its instruction on every thread.
  const auto rate_per_ns = [&](size_t i) {
    return HavePeakProbe(kProbes[i])
               ? PeakProbeCount(kProbes[i]) * threads / (median_of(1 + i) * 1e6)
               : 0;
  };
  const double fma_per_ns = rate_per_ns(0), dot_per_ns = rate_per_ns(1),
               fold_per_ns = rate_per_ns(2);
  // max(memory, compute) for one call with n rows and W of `type`. The dot kernel does 32
  // multiply-adds per instruction, at the FMA's rate; the quantized kernels 64 byte products
  // per vpdpbusd, at the rate of the probe with their fold (`alone`: of vpdpbusd alone, the
  // bound earlier tables used).
  auto bound_ms = [&](const Format& format, int64_t n, bool alone = false) {
    const double mem_ms = Bytes(format.type) / (bandwidth * 1e9) * 1e3;
    const bool quant = IsBlockQuantized(format.type);
    const double macs_per_op = quant ? 64.0 : format.dot ? 32.0 : 16.0;
    const double rate = quant ? (alone ? dot_per_ns : fold_per_ns) : fma_per_ns;
    const double fma_ms = rate > 0 ? n * out_dim * in_dim / macs_per_op / rate * 1e-6 : 0;
    return std::max(mem_ms, fma_ms);
  };
  std::printf(
      "W %lld x %lld in %s pages (F32 %.0f MiB, BF16/F16 %.0f MiB); plain read of F32 W: "
      "%.2f ms = %.1f GB/s (the bound), %d thread(s)\n",
      static_cast<long long>(out_dim), static_cast<long long>(in_dim), huge ? "huge" : "4 KiB",
      Bytes(DType::kF32) / (1 << 20), Bytes(DType::kBF16) / (1 << 20), read_ms, bandwidth, threads);
  std::printf(
      "peak 16-lane FMA rate: %.2f per ns over %d thread(s) -> compute bound "
      "n·%lld·%lld/16/rate\n",
      fma_per_ns, threads, static_cast<long long>(out_dim), static_cast<long long>(in_dim));
  std::printf(
      "peak vpdpbusd rate: %.2f per ns with the quantized kernels' fold, %.2f alone "
      "(Q8_0/Q4_0 compute bound n·%lld·%lld/64/rate, t/bound with the fold, t/vpdp "
      "alone); quantized kernel %s\n",
      fold_per_ns, dot_per_ns, static_cast<long long>(out_dim), static_cast<long long>(in_dim),
      QuantKernelName(QuantKernelFor(SelectedMatMulIsa())));
  std::printf("cpu: %s\n", CpuModelName().c_str());
  std::printf(
      "selected path: %s, prefetch %s; OpenBLAS %s, %d thread(s); medians of %d "
      "interleaved rounds\n\n",
      MatMulIsaName(), StreamPrefetchName(SelectedStreamPrefetch()), OPENBLAS_VERSION, threads,
      reps);
  std::printf("%-10s %-7s %3s | %9s %7s %8s | %8s %7s %6s | %9s %7s | %7s\n", "path", "W", "n",
              "skinny ms", "GB/s", "of read", "bound ms", "t/bound", "t/vpdp", "sgemm ms", "GB/s",
              "speedup");
  for (size_t p = 0; p < paths.size(); ++p) {
    for (int t = 0; t < kFormats; ++t) {
      const DType type = formats[t].type;
      for (int j = 0; j < kNs; ++j) {
        const double ms = skinny_ms(p, t, j), blas_ms = median_of(blas0 + j);
        const double gbps = GBps(Bytes(type), ms);
        const std::string vpdp =
            IsBlockQuantized(type)
                ? absl::StrFormat("%6.2f", ms / bound_ms(formats[t], ns[j], /*alone=*/true))
                : std::string(6, ' ');
        std::printf(
            "%-10s %-7s %3lld | %9.2f %7.1f %7.0f%% | %8.2f %7.2f %s | %9.2f %7.1f | %6.2fx\n",
            IsaName(paths[p]), formats[t].name, static_cast<long long>(ns[j]), ms, gbps,
            100 * gbps / bandwidth, bound_ms(formats[t], ns[j]), ms / bound_ms(formats[t], ns[j]),
            vpdp.c_str(), blas_ms, GBps(Bytes(DType::kF32), blas_ms), blas_ms / ms);
      }
    }
    for (int t = 0; t < kFormats; ++t) {
      std::printf(
          "%-10s %-7s t(n=16)/t(n=1) %.2f;  n=1: %.1f GB/s = %.0f%% of read, time %.2fx %s's\n",
          IsaName(paths[p]), formats[t].name, skinny_ms(p, t, kNs - 1) / skinny_ms(p, t, 0),
          GBps(Bytes(formats[t].type), skinny_ms(p, t, 0)),
          100 * GBps(Bytes(formats[t].type), skinny_ms(p, t, 0)) / bandwidth,
          skinny_ms(p, t, 0) / skinny_ms(p, 0, 0), formats[0].name);
    }
    std::printf("sgemm      F32  t(n=16)/t(n=1) %.2f\n\n",
                median_of(blas0 + kNs - 1) / median_of(blas0));
  }

  // Batch invariance on the big shape: row 5 computed alone vs inside a batch of 16.
  const float* w = weights.f32;
  std::vector<float> alone(static_cast<size_t>(out_dim));
  const float* x5 = x.data() + 5 * in_dim;
  SkinnyMatMul(x.data(), kMaxN, in_dim, w, out_dim, in_dim, nullptr, y.data(), out_dim);
  SkinnyMatMul(x5, 1, in_dim, w, out_dim, in_dim, nullptr, alone.data(), out_dim);
  const bool skinny_same =
      std::memcmp(alone.data(), y.data() + 5 * out_dim, out_dim * sizeof(float)) == 0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kMaxN, out_dim, in_dim, 1.0f, x.data(),
              in_dim, w, in_dim, 0.0f, y.data(), out_dim);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, out_dim, in_dim, 1.0f, x5, in_dim, w,
              in_dim, 0.0f, alone.data(), out_dim);
  int64_t blas_diff = 0;
  for (int64_t o = 0; o < out_dim; ++o) blas_diff += alone[o] != y[5 * out_dim + o];
  std::printf("row 5 alone vs in a batch of 16: skinny %s; sgemm %lld of %lld outputs differ\n",
              skinny_same ? "bit-identical" : "DIFFERENT", static_cast<long long>(blas_diff),
              static_cast<long long>(out_dim));
  return skinny_same ? 0 : 1;
}

}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) { return shardlm::Main(argc, argv); }
