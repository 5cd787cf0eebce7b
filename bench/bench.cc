#include "bench/bench.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "attention/attention.h"
#include "base/rng.h"
#include "base/status.h"
#include "base/thread_pool.h"
#include "bench/bandwidth.h"
#include "coordinator/handshake.h"
#include "engine/config.h"
#include "engine/model.h"
#include "kernels/cpu.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/peak_probe.h"
#include "engine/safetensors.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"

namespace shardlm {
namespace {

using Clock = std::chrono::steady_clock;

int64_t Nanos(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

constexpr double kMiB = 1024.0 * 1024.0;

// Every rank's `mine` (≥ 0), on every rank: AllReduceMax of a vector that is
// zero except at this rank's slot.
absl::StatusOr<std::vector<int64_t>> AllRanks(Comm& comm, int64_t mine) {
  CHECK_GE(mine, 0);
  std::vector<int64_t> all(static_cast<size_t>(comm.size()), 0);
  all[comm.rank()] = mine;
  RETURN_IF_ERROR(comm.AllReduceMax(all));
  return all;
}

int64_t MaxOf(const std::vector<int64_t>& v) { return *std::max_element(v.begin(), v.end()); }
int64_t MinOf(const std::vector<int64_t>& v) { return *std::min_element(v.begin(), v.end()); }
int64_t SumOf(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Synthetic context (DESIGN §8): every row of every page uniform in [-1, 1),
// deterministic per (seed, rank, layer). Not zeros: softmax over equal scores
// and all-zero values would let a kernel skip work or hide a wrong read.
void FillSynthetic(PagedKvCache& cache, int64_t layers, uint64_t seed, int rank) {
  for (int64_t l = 0; l < layers; ++l) {
    const CacheView view = cache.Layer(l);
    Rng rng(seed, absl::StrCat("bench-cache/", rank, "/", l));
    std::vector<float> row(static_cast<size_t>(view.row_floats));
    for (int64_t r = 0; r < view.num_pages * view.page_size; ++r) {
      for (float& x : row) x = rng.Uniform(-1.0f, 1.0f);
      unsigned char* dst = view.pool + r * view.row_bytes;
      if (view.format == nullptr) {
        std::memcpy(dst, row.data(), row.size() * sizeof(float));
      } else {
        view.format->Store(row.data(), dst);
      }
    }
  }
}

// The pool's page ids in the order the sequences get them. Shuffled (the
// default): a deterministic permutation, so each sequence's pages are scattered
// over the pool as after a while of continuous batching. Contiguous: sequence b
// owns pages [b·P, (b+1)·P), the best case. Every rank computes the same ids
// (page ids are global, DESIGN §4).
std::vector<int32_t> PageOrder(int64_t num_pages, bool shuffled, uint64_t seed) {
  std::vector<int32_t> pages(static_cast<size_t>(num_pages));
  std::iota(pages.begin(), pages.end(), 0);
  if (!shuffled) return pages;
  Rng rng(seed, "bench-pages");
  for (int64_t i = num_pages - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.NextU64() % static_cast<uint64_t>(i + 1));
    std::swap(pages[i], pages[j]);
  }
  return pages;
}

// What one timed series of forward passes gave.
struct Timing {
  std::vector<double> step_seconds;  // per timed step: the max over ranks
  // Mean over ranks of (time inside AllReduceSum / own step time). Includes
  // waiting for the slower rank: that wait is what TP costs on this step.
  double allreduce_share = 0.0;
  double gather_share = 0.0;                // the same for the logits Gatherv to rank 0
  double allreduce_seconds_per_step = 0.0;  // mean over ranks
  // The same share without the waiting: each all-reduce call's time on the rank that arrived
  // last, which barely waits (the minimum over ranks of that call's time), summed over the
  // calls, over each rank's step time and averaged over ranks. What the transfer itself costs
  // a step; allreduce_share minus this is the load imbalance between ranks that the
  // collective absorbed (neighbours on a shared machine, uneven shards). ≤ allreduce_share.
  double allreduce_transfer_share = 0.0;
};

// Runs `warmup` + `steps` forward passes of `batch`, each after a barrier, and
// times the steps after the warm-up on every rank. Collective.
absl::StatusOr<Timing> TimeForward(Model& model, const ForwardBatch& batch, PagedKvCache& cache,
                                   Comm& comm, int64_t warmup, int64_t steps) {
  std::vector<float> logits;
  std::vector<int64_t> step_ns;
  int64_t own_ns = 0;
  model.stats().record_allreduce_calls = true;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    if (s == warmup) model.stats().Reset();  // the stats cover the timed steps only
    RETURN_IF_ERROR(comm.Barrier());
    const Clock::time_point start = Clock::now();
    RETURN_IF_ERROR(model.Forward(batch, cache, comm, &logits));
    const int64_t ns = Nanos(Clock::now() - start);
    if (s >= warmup) {
      step_ns.push_back(ns);
      own_ns += ns;
    }
  }
  // A wrong read (a page outside the context, an unfilled row) would show here.
  absl::Status finite;
  for (float v : logits) {
    if (!std::isfinite(v)) {
      finite = absl::InternalError("bench: a forward pass produced non-finite logits");
      break;
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm, finite));

  ForwardStats& stats = model.stats();
  stats.record_allreduce_calls = false;
  // Every rank makes the same all-reduce calls in the same order (they are collective), so
  // the lists line up; the minimum over ranks is the negated maximum of the negated times.
  std::vector<int64_t> call_ns = std::move(stats.allreduce_call_ns);
  stats.allreduce_call_ns.clear();
  ASSIGN_OR_RETURN(std::vector<int64_t> calls,
                   AllRanks(comm, static_cast<int64_t>(call_ns.size())));
  if (*std::min_element(calls.begin(), calls.end()) !=
      *std::max_element(calls.begin(), calls.end())) {
    return absl::InternalError("bench: the ranks made different numbers of all-reduce calls");
  }
  // stats.allreduce_ns is the sum of the same integer call times, so the sum of the per-call
  // minima can never exceed it.
  for (int64_t& ns : call_ns) ns = -ns;
  RETURN_IF_ERROR(comm.AllReduceMax(call_ns));
  int64_t transfer_ns = 0;
  for (const int64_t ns : call_ns) transfer_ns -= ns;
  RETURN_IF_ERROR(comm.AllReduceMax(step_ns));
  ASSIGN_OR_RETURN(std::vector<int64_t> own, AllRanks(comm, own_ns));
  ASSIGN_OR_RETURN(std::vector<int64_t> allreduce, AllRanks(comm, stats.allreduce_ns));
  ASSIGN_OR_RETURN(std::vector<int64_t> gather,
                   AllRanks(comm, static_cast<int64_t>(stats.gather_seconds * 1e9)));
  Timing t;
  for (int64_t ns : step_ns) t.step_seconds.push_back(static_cast<double>(ns) * 1e-9);
  const double ranks = comm.size();
  for (int r = 0; r < comm.size(); ++r) {
    const double own_r = std::max<double>(static_cast<double>(own[r]), 1.0);
    t.allreduce_share += static_cast<double>(allreduce[r]) / own_r / ranks;
    t.allreduce_transfer_share += static_cast<double>(transfer_ns) / own_r / ranks;
    t.gather_share += static_cast<double>(gather[r]) / own_r / ranks;
  }
  t.allreduce_seconds_per_step =
      static_cast<double>(SumOf(allreduce)) * 1e-9 / ranks / static_cast<double>(steps);
  return t;
}

// Prefill tokens/s: one sequence of `tokens` tokens from position 0 as one chunk
// through Model::Forward (logits of the last token only, as decode's scheduler
// asks for), the median of `reps` after one warm-up. Collective.
absl::StatusOr<double> MeasurePrefill(Model& model, Comm& comm, int64_t tokens, int64_t reps,
                                      int64_t page_size, KvDType kv_dtype, uint64_t seed) {
  const ModelDims& dims = model.dims();
  PagedKvCache cache(dims.layers, CeilDiv(tokens, page_size), page_size,
                     CacheRowFormat(dims, model.plan(), kv_dtype));
  RETURN_IF_ERROR(AgreeOnStatus(comm, cache.status()));
  std::vector<int32_t> table(static_cast<size_t>(cache.num_pages()));
  std::iota(table.begin(), table.end(), 0);
  Rng rng(seed, "bench-prefill-tokens");
  ForwardBatch batch;
  for (int64_t t = 0; t < tokens; ++t) {
    batch.token_ids.push_back(
        static_cast<int32_t>(rng.NextU64() % static_cast<uint64_t>(dims.vocab)));
    batch.slots.push_back({table, t});
  }
  batch.logit_rows.push_back(static_cast<int32_t>(tokens - 1));
  if (model.plan().data_parallel_attention() && comm.rank() == 0) {  // rank 0 owns it
    for (int64_t t = 0; t < tokens; ++t) batch.attention_rows.push_back(static_cast<int32_t>(t));
  }
  ASSIGN_OR_RETURN(Timing timing, TimeForward(model, batch, cache, comm, 1, reps));
  return static_cast<double>(tokens) / Median(timing.step_seconds);
}

// 2 · Σ out·in over this rank's linear layers: the matmul FLOPs one token costs in the
// layer loop (the LM head is left out: prefill asks for one token's logits).
int64_t LayerLinearFlopsPerToken(const ModelWeights& weights) {
  int64_t macs = 0;
  for (const LayerWeights& layer : weights.layers) {
    std::vector<const Linear*> linears = layer.attn->Linears();
    linears.insert(linears.end(), {&layer.gate, &layer.up, &layer.down});
    for (const Linear* w : linears) macs += w->out * w->in;
  }
  return 2 * macs;
}

// A step's arithmetic on this rank and its time at the measured peaks (BenchRecord's compute
// bound): `rows` tokens through every linear (an attention linear: `attention_rows`, the
// rank's own under data-parallel attention), each of the `attention_rows` attending over L
// positions. ms is 0 when a rate the step needs is 0 (the CPU lacks the probe).
struct StepArithmetic {
  int64_t matmul_macs = 0;
  int64_t attention_macs = 0;
  double ms = 0.0;
};
StepArithmetic MeasureStepArithmetic(const Model& model, double fma_per_ns, double fold_per_ns,
                                     int64_t rows, int64_t attention_rows, int64_t L) {
  StepArithmetic a;
  double ns = 0.0;
  bool known = true;
  // Instructions per multiply-add and their rate, by the path the weights take.
  const auto add = [&](const Linear& w, int64_t n) {
    const int64_t macs = n * w.out * w.in;
    a.matmul_macs += macs;
    const bool quant = IsBlockQuantized(w.dtype);
    const bool dot = w.dtype == DType::kBF16 && SelectedBf16Math() == Bf16Math::kDot;
    const double rate = quant ? fold_per_ns : fma_per_ns;
    known = known && (macs == 0 || rate > 0);
    if (rate > 0) ns += static_cast<double>(macs) / (quant ? 64 : dot ? 32 : 16) / rate;
  };
  const ModelWeights& weights = model.weights();
  for (const LayerWeights& layer : weights.layers) {
    for (const Linear* w : layer.attn->Linears()) add(*w, attention_rows);
    for (const Linear* w : {&layer.gate, &layer.up, &layer.down}) add(*w, rows);
  }
  add(weights.lm_head, rows);
  const ModelDims& dims = model.dims();
  a.attention_macs = attention_rows * L * dims.layers *
                     AttentionFamily::Of(dims.type).DecodeMacsPerPosition(dims, model.plan());
  known = known && fma_per_ns > 0;
  if (fma_per_ns > 0) ns += static_cast<double>(a.attention_macs) / 16 / fma_per_ns;
  a.ms = known ? ns * 1e-6 : 0.0;
  return a;
}

// OpenBLAS sgemm GFLOP/s on [m, k] x [k, n] (B stored [n, k], as weights are) with the
// compute pool's thread count: the GEMM rate prefill is compared with. Best of `reps`
// after one warm-up.
double MeasureSgemmGflops(int64_t m, int64_t n, int64_t k, int reps, uint64_t seed) {
  openblas_set_num_threads(ComputeThreads());
  Rng rng(seed, "bench-sgemm");
  std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k)),
      c(static_cast<size_t>(m * n));
  for (float& v : a) v = rng.Uniform() - 0.5f;
  for (float& v : b) v = rng.Uniform() - 0.5f;
  double best = 1e30;
  for (int r = 0; r <= reps; ++r) {
    const Clock::time_point start = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, a.data(), static_cast<int>(k), b.data(),
                static_cast<int>(k), 0.0f, c.data(), static_cast<int>(n));
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (r > 0) best = std::min(best, seconds);
  }
  CHECK(std::isfinite(c[0]));
  return 2.0 * static_cast<double>(m * n * k) / best / 1e9;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

// Parameters as `inspect` counts them (SafetensorsDir::Parameters).
absl::StatusOr<int64_t> CheckpointParameters(const std::string& model_dir) {
  ASSIGN_OR_RETURN(auto dir, SafetensorsDir::Open(model_dir));
  return dir->Parameters();
}

// The llama-bench-style table on stdout: one markdown row per configuration,
// each figure beside its bound (step time beside the bandwidth bound, GB/s
// beside its fraction of the roofline).
struct Column {
  std::string header;
  int width;
  bool left;
  std::function<std::string(const BenchRecord&)> cell;
};

std::string Fixed(double v, int digits) { return absl::StrFormat("%.*f", digits, v); }

std::vector<Column> TableColumns(int label_width) {
  return {
      {"model", label_width, true, [](const BenchRecord& r) { return r.model(); }},
      {"params", 7, false,
       [](const BenchRecord& r) { return Fixed(r.parameters() / 1e6, 1) + "M"; }},
      {"attn", 6, true, [](const BenchRecord& r) { return r.attention(); }},
      {"tp", 2, false, [](const BenchRecord& r) { return absl::StrCat(r.tp()); }},
      {"ctx", 6, false, [](const BenchRecord& r) { return absl::StrCat(r.context()); }},
      {"B", 3, false, [](const BenchRecord& r) { return absl::StrCat(r.batch()); }},
      {"step ms", 8, false, [](const BenchRecord& r) { return Fixed(r.step_ms_median(), 2); }},
      {"p90 ms", 8, false, [](const BenchRecord& r) { return Fixed(r.step_ms_p90(), 2); }},
      {"bound ms", 8, false, [](const BenchRecord& r) { return Fixed(r.bound_step_ms(), 2); }},
      {"compute ms", 10, false,
       [](const BenchRecord& r) { return Fixed(r.compute_bound_step_ms(), 2); }},
      {"tok/s", 8, false, [](const BenchRecord& r) { return Fixed(r.tokens_per_s(), 1); }},
      {"pp tok/s", 8, false,
       [](const BenchRecord& r) { return Fixed(r.prefill_tokens_per_s(), 1); }},
      {"cache B/tok/rank", 16, false,
       [](const BenchRecord& r) { return absl::StrCat(r.cache_bytes_per_token_per_rank()); }},
      {"weights MiB/rank", 16, false,
       [](const BenchRecord& r) { return Fixed(r.weight_bytes_per_rank() / kMiB, 1); }},
      {"read MiB/step/rank", 18, false,
       [](const BenchRecord& r) { return Fixed(r.bytes_read_per_step_per_rank() / kMiB, 1); }},
      {"GB/s/rank", 9, false,
       [](const BenchRecord& r) { return Fixed(r.achieved_gbs_per_rank(), 2); }},
      {"% roof", 6, false,
       [](const BenchRecord& r) { return Fixed(100 * r.roofline_fraction(), 1); }},
      {"AR %", 5, false, [](const BenchRecord& r) { return Fixed(100 * r.allreduce_share(), 1); }},
      {"seqs fit", 8, false,
       [](const BenchRecord& r) { return absl::StrCat(r.capacity_sequences()); }},
  };
}

std::string TableLine(const std::vector<Column>& columns,
                      const std::function<std::string(const Column&)>& text) {
  std::string line = "|";
  for (const Column& c : columns) {
    const std::string t = text(c);
    const std::string pad(t.size() < static_cast<size_t>(c.width) ? c.width - t.size() : 0, ' ');
    absl::StrAppend(&line, " ", c.left ? t + pad : pad + t, " |");
  }
  return line + "\n";
}

void PrintTableHeader(const std::vector<Column>& columns) {
  std::string out = TableLine(columns, [](const Column& c) { return c.header; });
  out += TableLine(columns, [](const Column& c) {
    return c.left ? std::string(c.width, '-') : std::string(c.width - 1, '-') + ":";
  });
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

void PrintTableRow(const std::vector<Column>& columns, const BenchRecord& record) {
  std::fputs(TableLine(columns, [&](const Column& c) { return c.cell(record); }).c_str(), stdout);
  std::fflush(stdout);
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// `--probe-only`: the roofline alone, on stdout (and as one JSON object in --json).
absl::Status RunProbeOnly(const BenchOptions& options, Comm& comm) {
  ASSIGN_OR_RETURN(
      BandwidthResult bw,
      ProbeBandwidth({options.probe_mb, static_cast<int>(options.probe_passes)}, comm));
  if (comm.rank() != 0) return absl::OkStatus();
  std::printf("read bandwidth, %lld MiB per rank, best of %lld passes (1 GB = 1e9 bytes)\n",
              static_cast<long long>(options.probe_mb),
              static_cast<long long>(options.probe_passes));
  std::printf("  rank 0 alone:           %7.2f GB/s\n", bw.solo_gbs);
  std::printf("  %d rank(s) at once:      %7.2f GB/s per rank, %.2f GB/s in total\n", comm.size(),
              bw.PerRankGbs(), bw.total_gbs);
  if (!options.json.empty()) {
    std::ofstream out(options.json, std::ios::trunc);
    out << absl::StrFormat(
        "{\"tp\": %d, \"probe_mb\": %d, \"passes\": %d, \"solo_gbs\": %.4f, "
        "\"per_rank_gbs\": %.4f, \"total_gbs\": %.4f, \"host\": \"%s\"}\n",
        comm.size(), options.probe_mb, options.probe_passes, bw.solo_gbs, bw.PerRankGbs(),
        bw.total_gbs, HostName());
    out.close();
    if (!out) return absl::DataLossError(absl::StrCat("cannot write ", options.json));
  }
  return absl::OkStatus();
}

// Opens rank 0's output files before the sweep, so a bad path fails in seconds.
absl::Status OpenOutputs(const BenchOptions& options, std::ofstream* csv, std::ofstream* json) {
  if (!options.csv.empty()) {
    csv->open(options.csv, std::ios::trunc);
    if (!*csv) return absl::NotFoundError(absl::StrCat("cannot write --csv ", options.csv));
    *csv << CsvHeader() << "\n";
  }
  if (!options.json.empty()) {
    json->open(options.json, std::ios::trunc);
    if (!*json) return absl::NotFoundError(absl::StrCat("cannot write --json ", options.json));
  }
  return absl::OkStatus();
}

// What a run measures once and every record of it carries.
struct RunFacts {
  std::string label;
  int64_t parameters = 0;
  BandwidthResult bandwidth;  // empty when --bandwidth-gbs is given
  double roofline_gbs = 0.0;  // per rank
  int64_t prefill_tokens = 0;
  double prefill_tokens_per_s = 0.0;
  double prefill_gflops = 0.0;  // per rank, max over ranks (see BenchRecord)
  double sgemm_gflops = 0.0;    // per rank, min over ranks
  int64_t resident_weight_bytes = 0;  // this rank's ModelWeights::bytes()
  int64_t embed_bytes = 0;            // this rank's slice of an untied embedding table
  int64_t embed_row_bytes = 0;        // one row of it
  int64_t max_weight_bytes = 0;       // over ranks
  int64_t budget_pages = 0;           // PagesForBudget, min over ranks
  // Arithmetic peaks (kernels/peak_probe.h) per ns over a rank's threads, min over ranks.
  double fma_per_ns = 0.0;
  double quant_fold_per_ns = 0.0;
};

// The model directory: --model, or the preset written once by rank 0 into the
// model cache (ranks on other hosts need that directory on a shared file
// system; else use --model). Sets the table's label. Collective.
absl::StatusOr<std::string> ResolveModel(const BenchOptions& options, Comm& comm,
                                         std::string* label) {
  *label = options.label;
  if (!options.model_dir.empty()) {
    if (label->empty()) {
      std::string dir = options.model_dir;
      while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
      *label = dir.substr(dir.find_last_of('/') + 1);
    }
    return options.model_dir;
  }
  BenchModelSpec spec = options.spec;
  std::string model_dir;
  absl::Status status;
  if (comm.rank() == 0) {
    if (!options.match_params.empty()) {
      absl::StatusOr<int64_t> width = MatchedIntermediate(spec, options.match_params);
      if (width.ok()) spec.intermediate = *width;
      status = width.status();
    }
    if (status.ok()) {
      std::fprintf(stderr, "bench: model %s/%s\n", options.model_cache.c_str(),
                   BenchModelName(spec).c_str());
      absl::StatusOr<std::string> dir = EnsureBenchModel(spec, options.model_cache);
      if (dir.ok()) model_dir = *dir;
      status = dir.status();
    }
  }
  RETURN_IF_ERROR(AgreeOnStatus(comm, status));
  RETURN_IF_ERROR(comm.Broadcast(&model_dir, 0));
  if (label->empty()) {
    ASSIGN_OR_RETURN(ModelConfig config, BenchModelConfig(spec));
    *label = absl::StrCat(spec.preset, "-L", config.num_hidden_layers());
  }
  return model_dir;
}

// One configuration: B sequences at context L through the decode path. The
// returned record is complete on rank 0 only. Collective.
absl::StatusOr<BenchRecord> MeasureDecode(Model& model, Comm& comm, const BenchOptions& options,
                                          const RunFacts& facts, int64_t L, int64_t B) {
  const ModelDims& dims = model.dims();
  const int64_t page_size = options.page_size;
  const int64_t pages_per_seq = CeilDiv(L, page_size);
  // Data-parallel attention: sequence b lives on rank b % ranks only.
  const bool dp = model.plan().data_parallel_attention();
  auto owned = [&](int64_t b) { return !dp || b % comm.size() == comm.rank(); };
  int64_t own_seqs = 0;
  for (int64_t b = 0; b < B; ++b) own_seqs += owned(b) ? 1 : 0;
  const int64_t num_pages = std::max<int64_t>(own_seqs * pages_per_seq, 1);
  // The timed pool holds exactly this rank's contexts: its size is the allocation.
  PagedKvCache cache(dims.layers, num_pages, page_size,
                     CacheRowFormat(dims, model.plan(), options.kv_dtype));
  RETURN_IF_ERROR(AgreeOnStatus(comm, cache.status()));
  FillSynthetic(cache, dims.layers, options.seed, comm.rank());
  const std::vector<int32_t> pages = PageOrder(num_pages, options.shuffle_pages, options.seed);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(B));  // outlive the batch
  for (int64_t b = 0, local = 0; b < B; ++b) {
    if (!owned(b)) continue;  // another rank's: its slots are not read here
    tables[b].assign(pages.begin() + local * pages_per_seq,
                     pages.begin() + (local + 1) * pages_per_seq);
    ++local;
  }
  Rng token_rng(options.seed, "bench-decode-tokens");
  ForwardBatch batch;
  for (int64_t b = 0; b < B; ++b) {
    // Positions 0..L-2 hold the synthetic context; the step writes row L-1 and
    // attends over all L rows.
    batch.token_ids.push_back(
        static_cast<int32_t>(token_rng.NextU64() % static_cast<uint64_t>(dims.vocab)));
    batch.slots.push_back({tables[b], L - 1});
    batch.logit_rows.push_back(static_cast<int32_t>(b));
    if (dp && owned(b)) batch.attention_rows.push_back(static_cast<int32_t>(b));
  }
  ASSIGN_OR_RETURN(Timing timing,
                   TimeForward(model, batch, cache, comm, options.warmup, options.steps));

  // A step reads every weight but the embedding table, of which it reads B rows, and the pool.
  const int64_t cache_bytes = cache.bytes();
  const int64_t read_bytes = facts.resident_weight_bytes - facts.embed_bytes +
                             B * facts.embed_row_bytes + cache_bytes;
  ASSIGN_OR_RETURN(std::vector<int64_t> cache_all, AllRanks(comm, cache_bytes));
  ASSIGN_OR_RETURN(std::vector<int64_t> read_all, AllRanks(comm, read_bytes));
  const int64_t read_max = MaxOf(read_all);
  const StepArithmetic arithmetic = MeasureStepArithmetic(
      model, facts.fma_per_ns, facts.quant_fold_per_ns, B, dp ? own_seqs : B, L);
  ASSIGN_OR_RETURN(std::vector<int64_t> compute_ns_all,
                   AllRanks(comm, static_cast<int64_t>(std::llround(arithmetic.ms * 1e6))));
  const double median_s = Median(timing.step_seconds);
  const double roofline = facts.roofline_gbs;

  BenchRecord r;
  r.set_model(facts.label);
  r.set_attention(dp ? "mla-dp" : AttentionTypeName(dims.type));
  r.set_tp(comm.size());
  r.set_layers(static_cast<int32_t>(dims.layers));
  r.set_hidden_size(static_cast<int32_t>(dims.hidden));
  r.set_intermediate_size(static_cast<int32_t>(dims.intermediate));
  r.set_kv_heads(static_cast<int32_t>(dims.num_kv_heads));
  r.set_parameters(facts.parameters);
  r.set_context(static_cast<int32_t>(L));
  r.set_batch(static_cast<int32_t>(B));
  r.set_page_size(static_cast<int32_t>(page_size));
  r.set_warmup_steps(static_cast<int32_t>(options.warmup));
  r.set_timed_steps(static_cast<int32_t>(options.steps));
  r.set_step_ms_median(1e3 * median_s);
  r.set_step_ms_p90(1e3 * NearestRankPercentile(timing.step_seconds, 0.9));
  r.set_step_ms_min(1e3 *
                    *std::min_element(timing.step_seconds.begin(), timing.step_seconds.end()));
  r.set_tokens_per_s(static_cast<double>(B) / median_s);
  r.set_prefill_tokens(static_cast<int32_t>(facts.prefill_tokens));
  r.set_prefill_tokens_per_s(facts.prefill_tokens_per_s);
  r.set_weight_bytes_per_rank(facts.max_weight_bytes);
  ASSIGN_OR_RETURN(std::vector<int64_t> pages_all, AllRanks(comm, num_pages));
  r.set_cache_pages_per_rank(MaxOf(pages_all));
  r.set_cache_bytes_per_rank(MaxOf(cache_all));
  // A token's rows on the rank that holds them (every rank under TP, its owner under DP).
  r.set_cache_bytes_per_token_per_rank(cache_bytes / (num_pages * page_size));
  r.set_bytes_read_per_step_per_rank(read_max);
  r.set_bytes_read_per_step_all_ranks(SumOf(read_all));
  r.set_bandwidth_gbs_per_rank(roofline);
  r.set_bound_step_ms(1e3 * static_cast<double>(read_max) / (roofline * 1e9));
  r.set_achieved_gbs_per_rank(static_cast<double>(read_max) / median_s / 1e9);
  r.set_roofline_fraction(r.achieved_gbs_per_rank() / roofline);
  r.set_allreduce_share(timing.allreduce_share);
  r.set_allreduce_transfer_share(timing.allreduce_transfer_share);
  r.set_allreduce_ms_per_step(1e3 * timing.allreduce_seconds_per_step);
  r.set_gather_share(timing.gather_share);
  r.set_kv_cache_mb(options.kv_cache_mb);
  r.set_kv_dtype(KvDTypeName(options.kv_dtype));
  r.set_matmul_macs_per_step_per_rank(arithmetic.matmul_macs);
  r.set_attention_macs_per_step_per_rank(arithmetic.attention_macs);
  r.set_fma_per_ns(facts.fma_per_ns);
  r.set_quant_fold_per_ns(facts.quant_fold_per_ns);
  r.set_compute_bound_step_ms(static_cast<double>(MaxOf(compute_ns_all)) / 1e6);
  r.set_budget_pages(facts.budget_pages);
  // Sequences of length L the job holds: under DP every rank holds its own.
  r.set_capacity_sequences(facts.budget_pages / pages_per_seq * (dp ? comm.size() : 1));
  r.set_bandwidth_source(options.bandwidth_gbs > 0 ? "flag" : "probe");
  r.set_bandwidth_gbs_solo(facts.bandwidth.solo_gbs);
  r.set_host(HostName());
  r.set_cpu(CpuModelName());
  r.set_matmul_path(MatMulIsaName());
  r.set_quant_kernel(QuantKernelName(QuantKernelFor(SelectedMatMulIsa())));
  r.set_page_order(options.shuffle_pages ? "shuffled" : "contiguous");
  r.set_threads(options.threads);
  r.set_bf16_math(Bf16MathName(options.bf16_math));
  r.set_prefill_gflops_per_rank(facts.prefill_gflops);
  r.set_sgemm_gflops_per_rank(facts.sgemm_gflops);
  r.set_prefill_sgemm_fraction(facts.sgemm_gflops > 0 ? facts.prefill_gflops / facts.sgemm_gflops
                                                       : 0.0);
  return r;
}

// The lines under the table: what the roofline, the timing, "read" and the
// capacity column mean for this run.
void PrintFooter(const BenchOptions& options, const RunFacts& facts, int ranks,
                 const std::vector<std::string>& skipped) {
  std::printf("\n");
  if (options.bandwidth_gbs > 0) {
    std::printf("roofline: %.2f GB/s per rank (--bandwidth-gbs)\n", facts.roofline_gbs);
  } else {
    std::printf(
        "roofline: %.2f GB/s per rank with %d rank(s) reading at once (%.2f GB/s in "
        "total; rank 0 alone %.2f GB/s); probe %lld MiB/rank, best of %lld passes\n",
        facts.roofline_gbs, ranks, facts.bandwidth.total_gbs, facts.bandwidth.solo_gbs,
        static_cast<long long>(options.probe_mb), static_cast<long long>(options.probe_passes));
  }
  std::printf(
      "cpu: %s; matmul path %s, quantized (Q8_0/Q4_0) kernel %s, prefetch %s, %d "
      "thread(s) per rank\n",
      CpuModelName().c_str(), MatMulIsaName(), QuantKernelName(QuantKernelFor(SelectedMatMulIsa())),
      StreamPrefetchName(SelectedStreamPrefetch()), options.threads);
  std::printf(
      "step: median and p90 of %lld timed steps after %lld warm-up, each the slowest "
      "rank after a barrier; bound = read/step/rank / roofline\n",
      static_cast<long long>(options.steps), static_cast<long long>(options.warmup));
  std::printf(
      "read/step/rank: weights except the embedding table (%.1f MiB; B rows read) + the "
      "B contexts' pages (%s over the pool); context = synthetic rows 0..L-2, the step "
      "writes row L-1\n",
      facts.embed_bytes / kMiB, options.shuffle_pages ? "shuffled" : "contiguous");
  std::printf(
      "compute: a step's multiply-adds at the measured peaks per rank (kernels/peak_probe.h): "
      "%.2f G 16-lane FMAs/s (F32, F16, BF16 weights; attention), %.2f G vpdpbusd/s with the "
      "quantized kernels' fold (Q8_0, Q4_0)\n",
      facts.fma_per_ns, facts.quant_fold_per_ns);
  if (facts.prefill_tokens > 0) {
    std::printf("pp: one %lld-token chunk from position 0, median of %lld\n",
                static_cast<long long>(facts.prefill_tokens),
                static_cast<long long>(options.prefill_reps));
    std::printf(
        "prefill as GEMM: %.1f GFLOP/s per rank in the layers' linear weights vs OpenBLAS sgemm "
        "%.1f GFLOP/s on [%lld, d] x [d, intermediate_l] with %d thread(s): %.0f%%\n",
        facts.prefill_gflops, facts.sgemm_gflops, static_cast<long long>(facts.prefill_tokens),
        options.threads, facts.sgemm_gflops > 0 ? 100 * facts.prefill_gflops / facts.sgemm_gflops
                                                : 0.0);
  }
  std::printf(
      "seqs fit: sequences of length ctx in --kv-cache-mb %.0f per rank (%lld pages of "
      "%lld tokens, decode's PagesForBudget, min over ranks)\n",
      options.kv_cache_mb, static_cast<long long>(facts.budget_pages),
      static_cast<long long>(options.page_size));
  for (const std::string& s : skipped) std::printf("skipped: %s\n", s.c_str());
  std::fflush(stdout);
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ParseSizeList(const std::string& text, const std::string& flag,
                                                   int64_t min, int64_t max) {
  std::vector<int64_t> values;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::string item(absl::StripAsciiWhitespace(part));
    int64_t scale = 1;
    if (!item.empty() && (item.back() == 'k' || item.back() == 'K')) {
      scale = 1024;
      item.pop_back();
    }
    int64_t v = 0;
    if (!absl::SimpleAtoi(item, &v) || v * scale < min || v * scale > max) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": \"", std::string(part),
                                                     "\" is not an integer in [", min, ", ", max,
                                                     "] (a k suffix means ×1024)"));
    }
    values.push_back(v * scale);
  }
  if (values.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return values;
}

double Median(std::vector<double> values) {
  CHECK(!values.empty());
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double NearestRankPercentile(std::vector<double> values, double q) {
  CHECK(!values.empty());
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

std::string CsvHeader() {
  const google::protobuf::Descriptor* d = BenchRecord::descriptor();
  std::vector<std::string> names;
  for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
  return absl::StrJoin(names, ",");
}

std::string CsvRow(const BenchRecord& record) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Descriptor* d = BenchRecord::descriptor();
  const google::protobuf::Reflection* r = BenchRecord::GetReflection();
  std::vector<std::string> cells;
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        cells.push_back(absl::StrCat(r->GetInt32(record, f)));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        cells.push_back(absl::StrCat(r->GetInt64(record, f)));
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        cells.push_back(absl::StrFormat("%.9g", r->GetDouble(record, f)));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        cells.push_back(CsvField(r->GetString(record, f)));
        break;
      default:
        CHECK_MSG(false, "BenchRecord field ", f->name(), " has a type the CSV writer lacks");
    }
  }
  return absl::StrJoin(cells, ",");
}

std::string RecordJsonLine(const BenchRecord& record) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(record, &json, options);
  return json;
}

absl::Status RunBench(const BenchOptions& options, Comm& comm) {
  SetComputeThreads(options.threads);
  SetBf16Math(options.bf16_math);
  SetStreamPrefetch(options.prefetch);
  if (options.probe_only) return AgreeOnStatus(comm, RunProbeOnly(options, comm));
  const bool rank0 = comm.rank() == 0;

  RunFacts facts;
  ASSIGN_OR_RETURN(std::string model_dir, ResolveModel(options, comm, &facts.label));
  const Clock::time_point load_start = Clock::now();
  // --mla-attention applies to MLA models; other families run tensor-parallel.
  absl::StatusOr<ModelConfig> config = ReadModelConfig(model_dir);
  absl::StatusOr<ModelDims> dims_only =
      config.ok() ? ResolveDims(*config, model_dir) : absl::StatusOr<ModelDims>(config.status());
  RETURN_IF_ERROR(AgreeOnStatus(comm, dims_only.status()));
  const AttentionSplit split =
      dims_only->type == AttentionType::kMla ? options.mla_attention : AttentionSplit::kTensor;
  auto loaded = Model::Load(model_dir, comm.rank(), comm.size(), split);
  RETURN_IF_ERROR(AgreeOnStatus(comm, loaded.status()));
  Model& model = **loaded;
  const ModelDims& dims = model.dims();
  if (rank0) {
    std::fprintf(stderr, "bench: loaded %s on %d rank(s) in %.1f s\n", model_dir.c_str(),
                 comm.size(), std::chrono::duration<double>(Clock::now() - load_start).count());
  }
  for (int64_t L : options.contexts) {
    if (L > dims.max_positions) {
      return AgreeOnStatus(
          comm, absl::InvalidArgumentError(
                    absl::StrCat("--contexts ", L, " exceeds the model's max_position_embeddings ",
                                 dims.max_positions)));
    }
  }
  absl::StatusOr<int64_t> params =
      rank0 ? CheckpointParameters(model_dir) : absl::StatusOr<int64_t>(0);
  RETURN_IF_ERROR(AgreeOnStatus(comm, params.status()));
  facts.parameters = *params;

  std::ofstream csv, json;
  RETURN_IF_ERROR(
      AgreeOnStatus(comm, rank0 ? OpenOutputs(options, &csv, &json) : absl::OkStatus()));

  // The roofline: every rank probes at once (ranks on one host share it).
  facts.roofline_gbs = options.bandwidth_gbs;
  if (facts.roofline_gbs <= 0) {
    ASSIGN_OR_RETURN(
        facts.bandwidth,
        ProbeBandwidth({options.probe_mb, static_cast<int>(options.probe_passes)}, comm));
    facts.roofline_gbs = facts.bandwidth.PerRankGbs();
  }
  // The arithmetic peaks, every rank at once (ranks on one host share its cores), passed to
  // AllRanks as integers in millionths per ns.
  for (auto [probe, rate] : {std::pair{PeakProbe::kFma, &facts.fma_per_ns},
                             std::pair{PeakProbe::kQuantFold, &facts.quant_fold_per_ns}}) {
    RETURN_IF_ERROR(comm.Barrier());
    const double mine = MeasurePeakRate(probe, 3);
    ASSIGN_OR_RETURN(std::vector<int64_t> all,
                     AllRanks(comm, static_cast<int64_t>(std::llround(mine * 1e6))));
    *rate = static_cast<double>(MinOf(all)) / 1e6;
  }
  facts.prefill_tokens = std::min(options.prefill_tokens, dims.max_positions);
  if (facts.prefill_tokens > 0) {
    ASSIGN_OR_RETURN(facts.prefill_tokens_per_s,
                     MeasurePrefill(model, comm, facts.prefill_tokens, options.prefill_reps,
                                    options.page_size, options.kv_dtype, options.seed));
    ASSIGN_OR_RETURN(std::vector<int64_t> flops_all,
                     AllRanks(comm, LayerLinearFlopsPerToken(model.weights())));
    facts.prefill_gflops =
        static_cast<double>(MaxOf(flops_all)) * facts.prefill_tokens_per_s / 1e9;
    // Every rank at once, as the prefill ran; the slowest rank's rate is the bound.
    RETURN_IF_ERROR(comm.Barrier());
    const int64_t sgemm_mflops = static_cast<int64_t>(
        1e3 * MeasureSgemmGflops(facts.prefill_tokens, model.plan().mlp_cols.size(), dims.hidden,
                                 options.prefill_reps, options.seed));
    ASSIGN_OR_RETURN(std::vector<int64_t> sgemm_all, AllRanks(comm, sgemm_mflops));
    facts.sgemm_gflops = static_cast<double>(MinOf(sgemm_all)) / 1e3;
  }
  // Per-rank sizes that do not depend on the configuration.
  facts.resident_weight_bytes = model.weights().bytes();
  // A tied table is the head, which a step streams anyway: only untied tables are skipped.
  facts.embed_bytes = model.weights().embed.bytes();
  const Linear& table = model.weights().embedding();
  facts.embed_row_bytes = table.out > 0 ? table.bytes() / table.out : 0;
  ASSIGN_OR_RETURN(std::vector<int64_t> weights_all, AllRanks(comm, facts.resident_weight_bytes));
  facts.max_weight_bytes = MaxOf(weights_all);
  ASSIGN_OR_RETURN(
      std::vector<int64_t> budget_all,
      AllRanks(comm, PagesForBudget(dims, model.plan(), options.kv_cache_mb, options.page_size,
                                    options.kv_dtype)));
  facts.budget_pages = MinOf(budget_all);  // what decode's coordinator allocates from

  const std::vector<Column> columns =
      TableColumns(std::max<int>(5, static_cast<int>(facts.label.size())));
  if (rank0) PrintTableHeader(columns);
  std::vector<std::string> skipped;
  for (int64_t L : options.contexts) {
    for (int64_t B : options.batches) {
      const int64_t seqs_per_rank =
          model.plan().data_parallel_attention() ? CeilDiv(B, comm.size()) : B;
      const double pool_mb = static_cast<double>(dims.layers) * seqs_per_rank *
                             CeilDiv(L, options.page_size) *
                             options.page_size *
                             static_cast<double>(
                                 CacheRowFormat(dims, model.plan(), options.kv_dtype).bytes) /
                             kMiB;
      if (pool_mb > options.max_pool_mb) {  // same on every rank: rows are equally wide
        skipped.push_back(
            absl::StrFormat("ctx %d batch %d (pool %.0f MiB/rank > --max-pool-mb %.0f)", L, B,
                            pool_mb, options.max_pool_mb));
        continue;
      }
      if (rank0) {
        std::fprintf(stderr, "bench: ctx %lld batch %lld: filling %.0f MiB of pages\n",
                     static_cast<long long>(L), static_cast<long long>(B), pool_mb);
      }
      ASSIGN_OR_RETURN(BenchRecord r, MeasureDecode(model, comm, options, facts, L, B));
      if (!rank0) continue;
      PrintTableRow(columns, r);
      if (csv.is_open()) csv << CsvRow(r) << "\n" << std::flush;
      if (json.is_open()) json << RecordJsonLine(r) << "\n" << std::flush;
    }
  }
  absl::Status written;
  if (rank0) {
    PrintFooter(options, facts, comm.size(), skipped);
    for (std::ofstream* out : {&csv, &json}) {
      if (!out->is_open()) continue;
      out->close();
      if (out->fail()) written = absl::DataLossError("cannot finish writing --csv/--json");
    }
  }
  return AgreeOnStatus(comm, written);
}

}  // namespace shardlm
