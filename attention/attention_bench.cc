// Decode-attention bandwidth bench (issue 5): for each family, contexts 1k/8k/32k
// and batches 1/16, one decode token per sequence over a paged cache with
// page_size 16 (--page-size) and shuffled block tables, at 1 and 2 compute threads.
// The pool is the engine's PagedKvCache (one layer), so it is mapped and advised into
// transparent huge pages as decode's is (attention/kv_cache.cc).
//
// Decode attention is memory-bound: every cached row of a sequence's context is
// read once per step. The figure of merit is cache bytes read / time, printed
// next to a plain-read probe (the napkin bound: what one streaming pass over
// memory achieves with the same threads), measured in alternation with the
// kernel in the same run, and as a fraction of it. A second probe, `pages`, reads
// exactly the rows the kernel reads, page by page in block-table order, with no
// arithmetic: the ceiling of any kernel over shuffled pages of this size (each page
// is a jump the hardware prefetchers must find again). `of_pg` is the kernel's
// fraction of that. Timings are the best of
// several repetitions (the machine is shared). `fma/B` is the arithmetic per
// cache byte: where it is high (MLA: all 32 heads dot and accumulate the whole
// 512-float latent of every row) the kernel is FMA-bound before memory-bound.
// `of_fma` is that arithmetic per second against the FMA peak of the same threads
// (kernels/peak_probe.h, a register-only loop of 16-lane FMAs, measured right after each
// configuration): the bound of issue 16's target 4 for MLA and GLA. It counts the dot
// products and weighted sums of the cached rows only (not the softmax, nor the per-token
// W_UK/W_UV absorption, which is timed).
//
// Consecutive repetitions use disjoint block tables (≥ 256 MB apart in total),
// so no repetition finds its rows in the last-level cache, as in a real step
// that has read every other layer in between. The pool is capped (kPoolBytes);
// when a configuration needs more pages, tables reuse pool pages, but each
// sequence alone still spans far more than the last-level cache.
//
// --hot instead reuses one block-table set at contexts 64, 128 and 1024, so the rows
// come from L2 (or L3): the kernel's compute rate, which bounds what it can reach
// from memory however well its reads overlap.
//
// --kernels instead times the inner kernels alone (scores, values) on the families' blocks,
// against the FMA peak measured beside each timing (RunKernels).
//
// usage: attention_bench [--quick] [--hot] [--kernels] [--family=NAME] [--threads=T]
//                        [--page-size=N] [--kv-dtype=f32|bf16|int8] [--prefetch=near|far]
//   --prefetch: overrides the CPU's StreamPrefetch (kernels/cpu.h), to compare the two.
//   --kv-dtype: the cache's values (KvRowFormat); GB/s counts the bytes as stored, so a
//   narrow cache reads fewer bytes per row (the time is what shrinks).
//   --quick: 1k and 8k only, fewer repetitions; --family: gqa, gta, mla or gla only;
//   --threads: that thread count only (default: 1 and 2); --page-size: rows per page
//   (default 16, as `shardlm decode`)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention/decode_kernels.h"
#include "attention/gqa.h"
#include "attention/gta.h"
#include "attention/latent.h"
#include "base/rng.h"
#include "base/thread_pool.h"
#include "kernels/cpu.h"
#include "kernels/peak_probe.h"

namespace shardlm {
namespace {

constexpr int64_t kDefaultPageSize = 16;
constexpr int64_t kPoolBytes = int64_t{512} << 20;
// Floats the probe reads per repetition: 128 MB, far beyond the last-level cache.
constexpr int64_t kProbeFloats = (int64_t{128} << 20) / sizeof(float);

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// CPU clocks of the process (all threads) and of the calling thread. The machine
// is shared by several engineers (load averages above 10 on 2 cores), so wall
// time mostly measures the scheduler; CPU time counts only the time our threads
// ran, memory stalls included.
struct CpuClock {
  double process = 0.0;
  double thread = 0.0;
};
double Seconds(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
CpuClock CpuNow() {
  return {Seconds(CLOCK_PROCESS_CPUTIME_ID), Seconds(CLOCK_THREAD_CPUTIME_ID)};
}

// The time a parallel call would take on otherwise idle cores: the larger of the
// calling thread's CPU time and the mean CPU time of the pool's workers (the only
// other threads of this process). A worker that sleeps through the call adds
// nothing, so a single-threaded kernel shows no speed-up; spinning while waiting
// is counted, so imbalance shows.
double EffectiveSeconds(const CpuClock& start, const CpuClock& end, int threads) {
  const double caller = end.thread - start.thread;
  if (threads <= 1) return caller;
  const double workers = (end.process - start.process) - caller;
  return std::max(caller, workers / (threads - 1));
}

// Plain-read probe: sums `n` floats with eight independent vector accumulators
// (no FMA chain, no stores), split over the compute threads. The sum is returned
// so the reads cannot be dropped.
typedef float Vec16 __attribute__((vector_size(64)));
float ReadProbeRange(const float* p, int64_t n) {
  Vec16 acc[8] = {};
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    for (int k = 0; k < 8; ++k) {
      Vec16 v;
      std::memcpy(&v, p + i + 16 * k, sizeof(v));
      acc[k] += v;
    }
  }
  float s = 0.0f;
  for (int k = 0; k < 8; ++k) {
    for (int l = 0; l < 16; ++l) s += acc[k][l];
  }
  for (; i < n; ++i) s += p[i];
  return s;
}

float ReadProbe(const float* p, int64_t n) {
  std::vector<float> sums(64, 0.0f);
  ParallelFor(n, 1 << 16, [&](int64_t b, int64_t e) {
    sums[b * 63 / n] += ReadProbeRange(p + b, e - b);
  });
  float s = 0.0f;
  for (const float x : sums) s += x;
  return s;
}

// Reads every row each token's kernel call reads, page run by page run in block-table
// order, tokens split over the compute threads as the kernel splits its work.
float ReadPages(const CacheView& cache, std::span<const QueryToken> tokens) {
  std::vector<float> sums(tokens.size(), 0.0f);
  ParallelFor(static_cast<int64_t>(tokens.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const QueryToken& token = tokens[t];
      for (int64_t pos = 0; pos <= token.pos;) {
        const int64_t n = std::min(cache.page_size - pos % cache.page_size, token.pos - pos + 1);
        // The rows' bytes, read as floats (rows are padded to 4 bytes).
        sums[t] += ReadProbeRange(
            reinterpret_cast<const float*>(cache.RowBytes(token.block_table, pos)),
            n * cache.row_bytes / 4);
        pos += n;
      }
    }
  });
  float s = 0.0f;
  for (const float x : sums) s += x;
  return s;
}

// Best times of the kernel and of the probe, measured in alternation so that
// both see the same share of a machine shared with other work: repetitions go on
// for at least `min_seconds` (and 5 rounds), and the minimum of each is kept.
// Repetition r runs kernel(r) (a different set of pages each time, so the cache
// is streamed from memory as in a real step) and then reads probe_floats floats
// of the pool starting at a rotating offset.
struct Timing {
  double kernel_s = 1e30;  // EffectiveSeconds
  double probe_s = 1e30;
  double pages_s = 1e30;  // the page-order probe
  double kernel_wall_s = 1e30;
};
Timing Measure(const std::function<void(int)>& kernel, const std::function<float(int)>& pages,
               std::span<const float> pool, int64_t probe_floats, double min_seconds) {
  kernel(0);  // warm-up: scratch allocation, page faults
  const int threads = ComputeThreads();
  Timing best;
  float sink = 0.0f;
  const int64_t slots = static_cast<int64_t>(pool.size()) / probe_floats;
  const double start = Now();
  for (int rep = 0; rep < 5 || Now() - start < min_seconds; ++rep) {
    const double w0 = Now();
    CpuClock t0 = CpuNow();
    kernel(rep + 1);
    best.kernel_s = std::min(best.kernel_s, EffectiveSeconds(t0, CpuNow(), threads));
    best.kernel_wall_s = std::min(best.kernel_wall_s, Now() - w0);
    t0 = CpuNow();
    sink += ReadProbe(pool.data() + (rep % slots) * probe_floats, probe_floats);
    best.probe_s = std::min(best.probe_s, EffectiveSeconds(t0, CpuNow(), threads));
    t0 = CpuNow();
    sink += pages(rep + 1);
    best.pages_s = std::min(best.pages_s, EffectiveSeconds(t0, CpuNow(), threads));
  }
  if (sink == 12345.0f) std::printf(" ");
  return best;
}

struct Family {
  std::string name;
  int64_t row_floats;
  std::vector<int64_t> segments;  // the row's int8 scale segments (heads, latent heads, RoPE key)
  double fma_per_row;  // multiply-adds per cached row per query token (all local heads)
  int64_t q_floats;    // per token
  int64_t out_floats;  // per token
  std::function<void(const CacheView&, std::span<const QueryToken>, const float*, float*)> run;
};

void FillUniform(std::span<float> v, uint64_t seed) {
  Rng rng(seed);
  // A cheap generator is enough: values only need to be finite and varied.
  uint32_t x = static_cast<uint32_t>(rng.NextU64()) | 1;
  for (float& f : v) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    f = static_cast<float>(x >> 8) * 0x1p-23f - 1.0f;
  }
}

struct Options {
  bool quick = false;
  bool hot = false;    // rows from the caches: see the top comment
  bool kernels = false;  // the inner kernels alone: see RunKernels
  std::string family;  // empty: all
  int threads = 0;     // 0: 1 and 2
  int64_t page_size = kDefaultPageSize;
  KvDType kv_dtype = KvDType::kF32;
};

void RunFamily(const Family& fam, const Options& opt) {
  if (!opt.family.empty() && opt.family != fam.name) return;
  const bool quick = opt.quick;
  const int64_t page_size = opt.page_size;
  const KvRowFormat format = KvRowFormat::Make(opt.kv_dtype, fam.segments);
  const int64_t row_bytes = format.bytes;
  const int64_t num_pages = kPoolBytes / (page_size * row_bytes);
  // In huge pages, as decode's pools (a std::vector would sit in 4 KiB pages, which read
  // ~25% slower here even in one contiguous pass).
  PagedKvCache pool_memory(1, num_pages, page_size, format);
  if (!pool_memory.status().ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", pool_memory.status().ToString().c_str());
    std::exit(1);
  }
  const CacheView cache = pool_memory.Layer(0);
  // The probes read the pool's bytes as floats; the rows are filled through the format.
  const std::span<float> pool(reinterpret_cast<float*>(cache.pool),
                              static_cast<size_t>(num_pages * page_size * row_bytes / 4));
  {
    std::vector<float> rows(static_cast<size_t>(page_size * fam.row_floats));
    for (int64_t p = 0; p < num_pages; ++p) {
      FillUniform(rows, 1 + static_cast<uint64_t>(p));
      for (int64_t r = 0; r < page_size; ++r) {
        format.Store(rows.data() + r * fam.row_floats,
                     cache.pool + (p * page_size + r) * row_bytes);
      }
    }
  }
  std::vector<int32_t> ids(static_cast<size_t>(num_pages));
  for (int64_t i = 0; i < num_pages; ++i) ids[i] = static_cast<int32_t>(i);
  Rng rng(7);
  for (size_t i = ids.size(); i > 1; --i) std::swap(ids[i - 1], ids[rng.NextU64() % i]);

  const double min_seconds = quick ? 0.1 : 0.3;
  std::vector<int64_t> contexts = {1024, 8192, 32768};
  if (quick) contexts.pop_back();
  if (opt.hot) contexts = {64, 128, 1024};
  for (const int threads : {1, 2}) {
    if (opt.threads != 0 && threads != opt.threads) continue;
    SetComputeThreads(threads);
    for (const int64_t ctx : contexts) {
      for (const int64_t batch : {1, 16}) {
        const int64_t bytes = batch * ctx * row_bytes;
        if (opt.hot && bytes > (int64_t{16} << 20)) continue;  // would not stay in the caches
        // Enough disjoint table sets that consecutive repetitions touch ≥ 256 MB, far
        // beyond the last-level cache (a step reads every layer before this one again).
        const int64_t sets =
            opt.hot ? 1 : std::clamp<int64_t>((int64_t{256} << 20) / bytes, 1, 64);
        std::vector<std::vector<std::vector<int32_t>>> tables(static_cast<size_t>(sets));
        std::vector<std::vector<QueryToken>> tokens(static_cast<size_t>(sets));
        size_t next = 0;
        for (int64_t set = 0; set < sets; ++set) {
          tables[set].resize(static_cast<size_t>(batch));
          for (auto& table : tables[set]) {
            for (int64_t b = 0; b < (ctx + page_size - 1) / page_size; ++b) {
              table.push_back(ids[next++ % ids.size()]);
            }
          }
          for (const auto& table : tables[set]) tokens[set].push_back({table, ctx - 1});
        }
        std::vector<float> q(static_cast<size_t>(batch * fam.q_floats));
        std::vector<float> out(static_cast<size_t>(batch * fam.out_floats));
        FillUniform(q, 2);
        const Timing t = Measure(
            [&](int rep) { fam.run(cache, tokens[rep % sets], q.data(), out.data()); },
            [&](int rep) { return ReadPages(cache, tokens[(rep + sets / 2) % sets]); }, pool,
            kProbeFloats, min_seconds);
        const double gbps = static_cast<double>(bytes) / t.kernel_s / 1e9;
        const double probe = static_cast<double>(kProbeFloats) * sizeof(float) / t.probe_s / 1e9;
        const double pages = static_cast<double>(bytes) / t.pages_s / 1e9;
        const double wall_gbps = static_cast<double>(bytes) / t.kernel_wall_s / 1e9;
        const double fma_per_byte = fam.fma_per_row / static_cast<double>(row_bytes);
        // zmm FMAs per ns: the multiply-adds over 16 lanes.
        const double fma_rate = static_cast<double>(bytes) * fma_per_byte / 16 / t.kernel_s / 1e9;
        const double fma_peak = MeasurePeakRate(PeakProbe::kFma, 5);
        std::printf(
            "%-4s %7lld %5lld %7d %9.1f %9.3f %8.2f %8.2f %6.0f%% %8.2f %6.0f%% %6.2f %6.0f%% "
            "%8.2f\n",
            fam.name.c_str(), static_cast<long long>(ctx), static_cast<long long>(batch), threads,
            static_cast<double>(bytes) / 1e6, t.kernel_s * 1e3, gbps, probe, 100.0 * gbps / probe,
            pages, 100.0 * gbps / pages, fma_per_byte,
            fma_peak > 0.0 ? 100.0 * fma_rate / fma_peak : 0.0, wall_gbps);
        std::fflush(stdout);
      }
    }
  }
}

// --kernels: the inner kernels of decode attention (attention/decode_kernels.h, the set
// DecodeAttention uses) alone, on the four families' blocks as DecodeAttention cuts them (one
// group of heads, the rows of one block, BlockLength's length), each call given the next
// block's rows to request as it does. The blocks are cycled over about 512 KiB of rows, so
// rows and queries come from L2 or L3 and the figure is the kernels' compute rate. Each
// kernel's multiply-adds per second are divided by the FMA peak measured just before and after
// it (kernels/peak_probe.h), in 21 alternations: on a shared core both slow down together, so
// the median of these ratios holds still where either alone does not.
struct KernelShape {
  const char* family;
  std::vector<int64_t> segments;  // the row's (KvRowFormat)
  int64_t g;
  int64_t a_off, a_len, b_off, b_len, v_off, v_len;
  bool rows_first, lanes;
};

void RunKernels(KvDType kv_dtype, const std::string& family) {
  using namespace attention_internal;
  SetComputeThreads(1);  // the probe on the thread that runs the kernels, and no other
  const DecodeKernels k = ActiveDecodeKernels();
  const int kind = static_cast<int>(kv_dtype);
  std::printf(
      "decode kernels %s alone, cache %s, CPU \"%s\": multiply-adds per second / the FMA "
      "peak, median [quartiles] of 21 alternations with the peak probe\n",
      k.name, KvDTypeName(kv_dtype), CpuModelName().c_str());
  std::printf("%-4s %6s %5s %-7s %18s %18s\n", "fam", "heads", "rows", "scores", "scores of_fma",
              "values of_fma");
  std::vector<int64_t> gta_segments(8, 128);
  gta_segments.push_back(64);
  const KernelShape shapes[] = {
      // GQA-4: keys then values of 8 KV heads (d_h 128), the group's key and value parts.
      {"gqa", std::vector<int64_t>(16, 128), 4, 0, 128, 0, 0, 8 * 128, 128, true, false},
      // GTA-4: 8 tied states (d_h 128) and the RoPE key (64): the state is the value.
      {"gta", gta_segments, 4, 0, 128, 8 * 128, 64, 0, 128, false, false},
      // MLA: one latent (512) and the RoPE key, 32 heads; GLA: one of two latents of 256, 16.
      {"mla", {512, 64}, 32, 0, 512, 512, 64, 0, 512, false, true},
      {"gla", {256, 256, 64}, 16, 0, 256, 512, 64, 0, 256, false, true},
  };
  for (const KernelShape& sh : shapes) {
    if (!family.empty() && family != sh.family) continue;
    const KvRowFormat format = KvRowFormat::Make(kv_dtype, sh.segments);
    const int64_t nb = BlockLength(sh.rows_first, sh.lanes, format.bytes, sh.g, sh.v_len);
    const int64_t blocks = std::max<int64_t>(2, (int64_t{512} << 10) / (nb * format.bytes));
    // Rows of random values in the cache's format, as a paged pool holds them.
    std::vector<unsigned char> pool(static_cast<size_t>(blocks * nb * format.bytes));
    std::vector<float> row(static_cast<size_t>(format.elems));
    std::vector<const unsigned char*> rows(static_cast<size_t>(blocks * nb));
    for (int64_t r = 0; r < blocks * nb; ++r) {
      FillUniform(row, static_cast<uint64_t>(r) + 1);
      unsigned char* dst = pool.data() + r * format.bytes;
      format.Store(row.data(), dst);
      rows[static_cast<size_t>(r)] = dst;
    }
    const int64_t q_len = sh.a_len + sh.b_len;
    const int64_t stride = (sh.g + 15) / 16 * 16;
    std::vector<float> q(static_cast<size_t>(sh.g * q_len)),
        qt(static_cast<size_t>(q_len * stride));
    FillUniform(q, 7);
    TransposeQueries(q.data(), q_len, sh.a_len, q.data() + sh.a_len, q_len, sh.b_len, sh.g, stride,
                     qt.data());
    std::vector<float> scores(static_cast<size_t>(sh.g * nb)), p(scores.size());
    std::vector<float> acc(static_cast<size_t>(sh.g * sh.v_len)), alpha(sh.g, 1.0f);
    FillUniform(p, 9);
    for (float& w : p) w = 0.5f + 0.5f * w;
    ScoreArgs sa;
    sa.nb = nb;
    sa.a_off = sh.a_off;
    sa.a_len = sh.a_len;
    sa.b_off = sh.b_off;
    sa.b_len = sh.b_len;
    sa.scale_off = format.scale_offset;
    sa.a_seg = format.SegmentOf(sh.a_off);
    sa.b_seg = sh.b_len > 0 ? format.SegmentOf(sh.b_off) : 0;
    sa.qa = q.data();
    sa.qa_head = q_len;
    sa.qb = q.data() + sh.a_len;
    sa.qb_head = q_len;
    sa.g = sh.g;
    sa.scores = scores.data();
    sa.block = nb;
    sa.qt = qt.data();
    sa.qt_stride = stride;
    ValueArgs va;
    va.nb = nb;
    va.v_off = sh.v_off;
    va.v_len = sh.v_len;
    va.scale_off = format.scale_offset;
    va.v_seg = format.SegmentOf(sh.v_off);
    va.p = p.data();
    va.block = nb;
    va.alpha = alpha.data();
    va.g = sh.g;
    va.acc = acc.data();
    va.acc_head = sh.v_len;
    va.values_cached = !sh.rows_first;
    const bool lanes = sh.lanes && k.lane_scores[kind] != nullptr;
    auto run = [&](int which, int64_t calls) {
      for (int64_t c = 0; c < calls; ++c) {
        const int64_t b = c % blocks, next = (c + 1) % blocks;
        const RowsAhead ahead{rows.data() + next * nb, nb, false};
        if (which == 0) {
          sa.rows = rows.data() + b * nb;
          sa.ahead = ahead;
          (lanes ? k.lane_scores[kind] : k.scores[kind])(sa);
        } else {
          va.rows = rows.data() + b * nb;
          va.ahead = ahead;
          k.values[kind](va);
        }
      }
    };
    double median[2], q1[2], q3[2];
    for (int which = 0; which < 2; ++which) {
      const double fmas = static_cast<double>(nb * sh.g * (which == 0 ? q_len : sh.v_len));
      // Calls for about 4 ms.
      const auto t0 = std::chrono::steady_clock::now();
      run(which, 64);
      const double per_call =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 64;
      const int64_t calls = std::max<int64_t>(16, static_cast<int64_t>(4e-3 / per_call));
      std::vector<double> ratios;
      for (int i = 0; i < 21; ++i) {
        const double before = MeasurePeakRate(PeakProbe::kFma, 1);
        const auto t = std::chrono::steady_clock::now();
        run(which, calls);
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
        const double after = MeasurePeakRate(PeakProbe::kFma, 1);
        // Rates in 16-lane multiply-adds per ns, as the probe counts them.
        ratios.push_back(fmas * static_cast<double>(calls) / 16 / s / 1e9 /
                         std::max(before, after));
      }
      std::sort(ratios.begin(), ratios.end());
      median[which] = ratios[10];
      q1[which] = ratios[5];
      q3[which] = ratios[15];
    }
    std::printf("%-4s %6lld %5lld %-7s %6.0f%% [%2.0f–%2.0f%%] %6.0f%% [%2.0f–%2.0f%%]\n",
                sh.family, static_cast<long long>(sh.g), static_cast<long long>(nb),
                lanes ? "lanes" : "tree", 100 * median[0], 100 * q1[0], 100 * q3[0],
                100 * median[1], 100 * q1[1], 100 * q3[1]);
  }
}

}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) {
  using namespace shardlm;
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--hot") {
      options.hot = true;
    } else if (arg == "--kernels") {
      options.kernels = true;
    } else if (arg.rfind("--family=", 0) == 0) {
      options.family = arg.substr(9);
    } else if (arg.rfind("--threads=", 0) == 0) {
      options.threads = std::stoi(arg.substr(10));
    } else if (arg.rfind("--kv-dtype=", 0) == 0) {
      absl::StatusOr<KvDType> dtype = ParseKvDType(arg.substr(11));
      if (!dtype.ok()) {
        std::fprintf(stderr, "attention_bench: %s\n", std::string(dtype.status().message()).c_str());
        return 2;
      }
      options.kv_dtype = *dtype;
    } else if (arg.rfind("--prefetch=", 0) == 0) {
      const std::optional<StreamPrefetch> prefetch = ParseStreamPrefetch(arg.substr(11));
      if (!prefetch.has_value()) {
        std::fprintf(stderr, "attention_bench: --prefetch must be near or far\n");
        return 2;
      }
      SetStreamPrefetch(*prefetch);
    } else if (arg.rfind("--page-size=", 0) == 0) {
      options.page_size = std::stoll(arg.substr(12));
      if (options.page_size < 1 || options.page_size > 4096) {
        std::fprintf(stderr, "attention_bench: --page-size must be in [1, 4096]\n");
        return 2;
      }
    } else {
      std::fprintf(
          stderr,
          "usage: attention_bench [--quick] [--hot] [--kernels] [--family=NAME] [--threads=T] "
          "[--page-size=N] [--kv-dtype=f32|bf16|int8] [--prefetch=near|far]\n");
      return 2;
    }
  }
  if (options.kernels) {
    RunKernels(options.kv_dtype, options.family);
    return 0;
  }
  std::printf(
      "decode attention, one token per sequence, page_size %lld, shuffled pages in huge pages, "
      "cache %s, prefetch %s, CPU \"%s\"%s\n",
      static_cast<long long>(options.page_size), KvDTypeName(options.kv_dtype),
      StreamPrefetchName(SelectedStreamPrefetch()), CpuModelName().c_str(),
      options.hot ? "; --hot: one table set, rows from the caches" : "");
  std::printf(
      "ms, GB/s, probe, pages: from per-thread CPU time, best of repetitions "
      "(EffectiveSeconds); frac: GB/s / probe; of_pg: GB/s / pages; of_fma: multiply-adds "
      "per second / the FMA peak of the same threads; wall: GB/s by wall clock\n");
  std::printf("%-4s %7s %5s %7s %9s %9s %8s %8s %7s %8s %7s %6s %7s %8s\n", "fam", "context",
              "batch", "threads", "cache_MB", "ms", "GB/s", "probe", "frac", "pages", "of_pg",
              "fma/B", "of_fma", "wall");

  // GQA, paper-m-like: h_q 32, h_kv 8, d_h 128. Per row and query head: d_h for the
  // score, d_h for the value.
  {
    GqaShape s{.num_q_heads = 32, .num_kv_heads = 8, .head_dim = 128, .scale = 0.088f};
    RunFamily({"gqa", 2 * s.num_kv_heads * s.head_dim,
               std::vector<int64_t>(2 * s.num_kv_heads, s.head_dim),
               static_cast<double>(s.num_q_heads * 2 * s.head_dim), s.num_q_heads * s.head_dim,
               s.num_q_heads * s.head_dim,
               [s](const CacheView& c, std::span<const QueryToken> t, const float* q, float* o) {
                 GqaAttention(s, c, t, q, o);
               }},
              options);
  }
  // GTA: h_q 32, 8 tied states of d_h 128, shared RoPE key d_r 64.
  {
    GtaShape s{.num_q_heads = 32, .num_kv_heads = 8, .head_dim = 128, .rope_dim = 64,
               .scale = 0.088f};
    std::vector<int64_t> segments(s.num_kv_heads, s.head_dim);
    segments.push_back(s.rope_dim);
    RunFamily({"gta", s.num_kv_heads * s.head_dim + s.rope_dim, segments,
               static_cast<double>(s.num_q_heads * 2 * s.head_dim), s.num_q_heads * s.head_dim,
               s.num_q_heads * s.head_dim,
               [s](const CacheView& c, std::span<const QueryToken> t, const float* q, float* o) {
                 GtaAttention(s, c, t, q, o);
               }},
              options);
  }
  // MLA (one latent, d_c 512) and GLA (2 latent heads, d_c 256): h_q 32, d_r 64,
  // d_n = d_v = 128, absorbed form. Per row and query head: d_c + d_r for the score,
  // d_c for the value. The W_UK/W_UV absorption (per token, not per row) is timed
  // too but not counted as bytes.
  for (const int64_t h_c : {1, 2}) {
    LatentShape s{.num_q_heads = 32, .num_latent_heads = h_c, .latent_dim = 512 / h_c,
                  .nope_dim = 128, .rope_dim = 64, .v_head_dim = 128, .scale = 0.072f};
    Linear kv_b;  // [h_q · (d_n + d_v), d_c], f32
    kv_b.out = s.num_q_heads * (s.nope_dim + s.v_head_dim);
    kv_b.in = s.latent_dim;
    std::vector<float> values(static_cast<size_t>(kv_b.out * kv_b.in));
    FillUniform(values, 3);
    for (float& w : values) w *= 0.05f;
    kv_b.w.assign(values.begin(), values.end());
    auto up = std::make_shared<LatentUpProjection>(SplitKvB(kv_b, s.nope_dim, s.v_head_dim));
    std::vector<int64_t> segments(s.num_latent_heads, s.latent_dim);
    segments.push_back(s.rope_dim);
    RunFamily({h_c == 1 ? "mla" : "gla", s.num_latent_heads * s.latent_dim + s.rope_dim, segments,
               static_cast<double>(s.num_q_heads * (2 * s.latent_dim + s.rope_dim)),
               s.num_q_heads * (s.nope_dim + s.rope_dim), s.num_q_heads * s.v_head_dim,
               [s, up](const CacheView& c, std::span<const QueryToken> t, const float* q,
                       float* o) { LatentAttention(s, c, t, q, *up, o); }},
              options);
  }
  return 0;
}
