// `shardlm bench` (DESIGN §8, docs/BENCHMARKS.md): decode step time, bytes per
// rank against the measured read bandwidth, all-reduce share and cache capacity
// per (context, batch), measured on the code path a decode job runs:
// Model::Forward over a ForwardBatch of B sequences whose block tables point
// into a PagedKvCache, one new token per sequence per step.
#ifndef SHARDLM_BENCH_BENCH_H_
#define SHARDLM_BENCH_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/kv_cache.h"
#include "bench/bench_model.h"
#include "comm/comm.h"
#include "kernels/matmul.h"
#include "proto/shardlm.pb.h"
#include "shard/shard.h"

namespace shardlm {

struct BenchOptions {
  // The model: a checkpoint directory, or a preset built into `model_cache`.
  std::string model_dir;
  BenchModelSpec spec;       // used when model_dir is empty
  std::string match_params;  // family whose parameter count the MLP width matches
  std::string model_cache;   // where preset models are written and reused
  std::string label;         // "model" column; default from the preset or directory
  // The sweep.
  std::vector<int64_t> contexts = {1024, 4096, 16384};
  std::vector<int64_t> batches = {1, 8, 32};
  int64_t warmup = 2;
  int64_t steps = 10;
  int64_t page_size = 16;
  bool shuffle_pages = true;    // sequences' pages scattered over the pool (else back to back)
  double kv_cache_mb = 1024.0;  // capacity budget per rank
  KvDType kv_dtype = KvDType::kF32;  // the cache's values (--kv-dtype)
  // MLA's attention split (--mla-attention): kData runs data-parallel attention, each rank
  // holding the whole latents of the sequences b with b % ranks == its rank.
  AttentionSplit mla_attention = AttentionSplit::kTensor;
  double max_pool_mb = 8192.0;  // skip configurations whose timed pool exceeds this per rank
  int64_t prefill_tokens = 512;
  int64_t prefill_reps = 3;
  uint64_t seed = 0;  // cache contents, page order and token ids
  int threads = 1;    // compute threads per rank (base/thread_pool.h)
  Bf16Math bf16_math = Bf16Math::kExact;  // how BF16 weights multiply (kernels/matmul.h)
  StreamPrefetch prefetch = SelectedStreamPrefetch();  // (kernels/cpu.h)
  // The roofline.
  double bandwidth_gbs = 0.0;  // > 0: use this per-rank figure, skip the probe
  int64_t probe_mb = 512;
  int64_t probe_passes = 5;
  bool probe_only = false;
  // Outputs (rank 0): the table always goes to stdout.
  std::string csv;
  std::string json;
};

// Runs the sweep on every rank; rank 0 prints and writes the records.
absl::Status RunBench(const BenchOptions& options, Comm& comm);

// Helpers, exposed for bench_util_test.cc.
// "1024,4k,16K" → {1024, 4096, 16384}; every value must be in [min, max].
absl::StatusOr<std::vector<int64_t>> ParseSizeList(const std::string& text, const std::string& flag,
                                                   int64_t min, int64_t max);
// Median (mean of the middle two for an even count) and nearest-rank percentile
// (the smallest value with at least q of the values at or below it).
double Median(std::vector<double> values);
double NearestRankPercentile(std::vector<double> values, double q);
// One CSV line per record, a column per BenchRecord field in field order.
std::string CsvHeader();
std::string CsvRow(const BenchRecord& record);
// One JSON object (one line) per record, proto3 JSON mapping, field names as in the proto.
std::string RecordJsonLine(const BenchRecord& record);

}  // namespace shardlm

#endif  // SHARDLM_BENCH_BENCH_H_
