// `shardlm bench`'s command line (launch/main.cc): its flags and their parsing into
// BenchOptions (bench/bench.h).
#ifndef SHARDLM_LAUNCH_BENCH_FLAGS_H_
#define SHARDLM_LAUNCH_BENCH_FLAGS_H_

#include <vector>

#include "absl/status/status.h"
#include "bench/bench.h"
#include "launch/flags.h"

namespace shardlm {

std::vector<FlagSpec> BenchFlags();
// Errors name the flag; the same on every rank except --bf16-math's CPU check, so callers
// agree on the status.
absl::Status ParseBenchOptions(const Flags& flags, BenchOptions* options);

}  // namespace shardlm

#endif  // SHARDLM_LAUNCH_BENCH_FLAGS_H_
