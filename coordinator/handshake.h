// Start-up of every job that runs steps (DESIGN §5): the Hello handshake that stops ranks
// running another build or another checkpoint, the page count every rank agrees on, and
// the paged KV cache itself.
#ifndef SHARDLM_COORDINATOR_HANDSHAKE_H_
#define SHARDLM_COORDINATOR_HANDSHAKE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "attention/kv_cache.h"
#include "attention/kv_swap.h"
#include "comm/comm.h"
#include "engine/model.h"

namespace shardlm {

// Wire protocol version of Hello and StepPlan (proto/shardlm.proto).
constexpr int kProtocolVersion = 4;

struct CacheOptions {
  int64_t page_size = 16;
  double kv_cache_mb = 256.0;  // per rank
  KvDType kv_dtype = KvDType::kF32;
  // Swap space of preempted sequences, per rank: host memory, then a file under swap_dir.
  double swap_mb = 256.0;
  std::string swap_dir;        // empty: no file
  double swap_file_mb = 1024.0;
  SwapFault swap_fault = SwapFault::kNone;  // tests: injected on the last rank
};

// This rank's cache row layout in `dtype`.
KvRowFormat CacheRowFormat(const ModelDims& dims, const ShardPlan& plan, KvDType dtype);

// Pages of `page_size` tokens that `kv_cache_mb` holds for this rank's rows in `dtype`.
int64_t PagesForBudget(const ModelDims& dims, const ShardPlan& plan, double kv_cache_mb,
                       int64_t page_size, KvDType dtype = KvDType::kF32);

// Called by every rank: rank 0 broadcasts its Hello and every rank checks protocol, build,
// config and weights fingerprints and page size against its own (a mismatch is an error
// naming the rank); the pool takes the smallest page count of any rank, which must hold one
// request of the model's maximum length; then the cache is mapped. Errors are agreed.
absl::StatusOr<std::unique_ptr<PagedKvCache>> StartUp(const CacheOptions& options,
                                                      const Model& model, Comm& comm);

// Called by every rank after StartUp: the swap space for `cache`'s pages, with the slot
// counts of the smallest budget of any rank (slots differ in size where row widths do); null
// when swap_mb and the file hold no slot. Errors (an unusable --swap-dir) are agreed.
absl::StatusOr<std::unique_ptr<KvSwap>> StartSwap(const CacheOptions& options,
                                                  const PagedKvCache& cache, Comm& comm);

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_HANDSHAKE_H_
