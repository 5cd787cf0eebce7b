#include "bench/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "base/status.h"
#include "base/thread_pool.h"

namespace shardlm {
namespace {

// Eight floats as one value (GCC/Clang vector extension, as attention/decode_core.h):
// lowers to AVX/AVX-512/NEON without ISA-specific intrinsics.
typedef float Vec8 __attribute__((vector_size(32)));

inline void AddLoad(const float* p, Vec8& acc) {
  Vec8 v;
  std::memcpy(&v, p, sizeof(v));
  acc += v;
}

}  // namespace

float ReadSum(const float* data, int64_t n) {
  // 8 accumulators × 8 floats: 256 bytes (4 cache lines) in flight per iteration.
  Vec8 acc[8] = {};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int k = 0; k < 8; ++k) AddLoad(data + i + 8 * k, acc[k]);
  }
  for (; i + 8 <= n; i += 8) AddLoad(data + i, acc[0]);
  Vec8 total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  float sum = 0.0f;
  for (int k = 0; k < 8; ++k) sum += total[k];
  for (; i < n; ++i) sum += data[i];
  return sum;
}

double ProbeReadGbs(const WeightVector<float>& data, int passes, float* checksum) {
  CHECK_GT(passes, 0);
  double best_seconds = 1e30;
  float sum = 0.0f;
  for (int p = 0; p < passes; ++p) {
    const auto start = std::chrono::steady_clock::now();
    // Each compute thread (--threads) reads its own contiguous part, as the kernels split
    // their work: the roofline is what this rank's threads draw together.
    std::mutex mu;
    sum = 0.0f;
    ParallelFor(static_cast<int64_t>(data.size()), 1 << 16, [&](int64_t begin, int64_t end) {
      const float part = ReadSum(data.data() + begin, end - begin);
      std::lock_guard<std::mutex> lock(mu);
      sum += part;
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best_seconds = std::min(best_seconds, seconds);
  }
  *checksum = sum;
  return static_cast<double>(data.size() * sizeof(float)) / best_seconds / 1e9;
}

absl::StatusOr<BandwidthResult> ProbeBandwidth(const BandwidthOptions& options, Comm& comm) {
  CHECK_GT(options.buffer_mb, 0);
  // Values that vary, so no pass can be folded into a constant; writing them
  // also faults every page in before the first timed pass.
  WeightVector<float> buffer(static_cast<size_t>(options.buffer_mb) * (1 << 20) / sizeof(float));
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<float>(i % 1024) * 1e-3f;
  float checksum = 0.0f;

  BandwidthResult result;
  // Rank 0 alone. The others sleep through it (for as long as the passes take
  // at a pessimistic 4 GB/s) before they enter the barrier: MPI barriers spin,
  // and a spinning rank would take a core from rank 0 or from other work.
  RETURN_IF_ERROR(comm.Barrier());
  if (comm.rank() == 0) {
    result.solo_gbs = ProbeReadGbs(buffer, options.passes, &checksum);
  } else {
    const double seconds =
        static_cast<double>(buffer.size() * sizeof(float)) * options.passes / 4e9;
    std::this_thread::sleep_for(std::chrono::duration<double>(std::max(seconds, 0.05)));
  }
  RETURN_IF_ERROR(comm.Barrier());

  // All ranks at once, pass by pass, so no rank gets the memory system to itself
  // while the others are between passes; a pass lasts until its slowest rank ends.
  std::vector<int64_t> pass_ns;
  for (int p = 0; p < options.passes; ++p) {
    RETURN_IF_ERROR(comm.Barrier());
    const auto start = std::chrono::steady_clock::now();
    checksum += ReadSum(buffer.data(), static_cast<int64_t>(buffer.size()));
    pass_ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now() - start)
                          .count());
  }
  if (!(checksum == checksum)) return absl::InternalError("bandwidth probe: NaN checksum");
  RETURN_IF_ERROR(comm.AllReduceMax(pass_ns));
  const int64_t best_ns = *std::min_element(pass_ns.begin(), pass_ns.end());
  const double bytes = static_cast<double>(buffer.size() * sizeof(float));
  result.ranks = comm.size();
  result.total_gbs = bytes * comm.size() / static_cast<double>(std::max<int64_t>(best_ns, 1));
  // Rank 0's solo figure to every rank (AllReduceMax is int64: bytes/s).
  std::vector<int64_t> solo = {comm.rank() == 0 ? static_cast<int64_t>(result.solo_gbs * 1e9) : 0};
  RETURN_IF_ERROR(comm.AllReduceMax(solo));
  result.solo_gbs = static_cast<double>(solo[0]) / 1e9;
  return result;
}

}  // namespace shardlm
