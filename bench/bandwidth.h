// The machine's read bandwidth, measured (DESIGN §8): a STREAM-like probe whose
// result `shardlm bench` uses as its roofline. Decode reads every weight and
// every cached row once per step, so "bytes read / read bandwidth" is the step
// time a perfect kernel would reach.
#ifndef SHARDLM_BENCH_BANDWIDTH_H_
#define SHARDLM_BENCH_BANDWIDTH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "base/weight_alloc.h"
#include "comm/comm.h"

namespace shardlm {

struct BandwidthOptions {
  // Per rank. Must dwarf the last-level cache (≥ 8×) so every pass streams from DRAM.
  int64_t buffer_mb = 512;
  int passes = 5;  // the best pass counts (least disturbed by other work)
};

struct BandwidthResult {
  // Best pass of rank 0 while every other rank waits at a barrier: what one
  // core draws on its own.
  double solo_gbs = 0.0;
  // Every rank reading its own buffer at the same time, each pass started by a
  // barrier and ended by the slowest rank: all ranks' bytes / that time, best
  // pass. On one host the ranks share the memory system, so total_gbs / ranks
  // (not solo_gbs) is the bandwidth one rank can count on.
  double total_gbs = 0.0;
  int ranks = 1;
  double PerRankGbs() const { return total_gbs / ranks; }
};

// Sum of n floats, vectorized with independent accumulators so the loop is
// limited by loads, not by the add latency. The read kernel of the probe.
float ReadSum(const float* data, int64_t n);

// Best GB/s (1e9 bytes/s) of `passes` ReadSum passes over `data` in this process
// alone, split over the compute threads (base/thread_pool.h). `checksum` receives the last sum
// (keeps the reads observable).
double ProbeReadGbs(const WeightVector<float>& data, int passes, float* checksum);

// The probe above on every rank: first rank 0 alone, then all ranks at once.
// Collective: every rank must call it. Allocates and frees buffer_mb per rank, with the
// weights' allocator (base/weight_alloc.h), so it reads pages of the size the weights are in.
absl::StatusOr<BandwidthResult> ProbeBandwidth(const BandwidthOptions& options, Comm& comm);

}  // namespace shardlm

#endif  // SHARDLM_BENCH_BANDWIDTH_H_
