// Start-up of every job that runs steps (DESIGN §5): the Hello handshake that stops ranks
// running another build or another checkpoint, the page count every rank agrees on, and
// the paged KV cache itself.
#ifndef SHARDLM_COORDINATOR_HANDSHAKE_H_
#define SHARDLM_COORDINATOR_HANDSHAKE_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "attention/kv_cache.h"
#include "comm/comm.h"
#include "engine/model.h"

namespace shardlm {

// Wire protocol version of Hello and StepPlan (proto/shardlm.proto).
constexpr int kProtocolVersion = 2;

struct CacheOptions {
  int64_t page_size = 16;
  double kv_cache_mb = 256.0;  // per rank
};

// Pages of `page_size` tokens that `kv_cache_mb` holds for this rank's row width.
int64_t PagesForBudget(const ModelDims& dims, const ShardPlan& plan, double kv_cache_mb,
                       int64_t page_size);

// Called by every rank: rank 0 broadcasts its Hello and every rank checks protocol, build,
// config and weights fingerprints and page size against its own (a mismatch is an error
// naming the rank); the pool takes the smallest page count of any rank, which must hold one
// request of the model's maximum length; then the cache is mapped. Errors are agreed.
absl::StatusOr<std::unique_ptr<PagedKvCache>> StartUp(const CacheOptions& options,
                                                      const Model& model, Comm& comm);

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_HANDSHAKE_H_
