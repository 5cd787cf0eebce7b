// `shardlm decode` (DESIGN §4–§6): requests from JSONL, continuous batching over
// the paged KV cache on every rank, sampling on rank 0, results streamed to JSONL.
#ifndef SHARDLM_ENGINE_DECODE_H_
#define SHARDLM_ENGINE_DECODE_H_

#include <string>

#include "absl/status/status.h"
#include "comm/comm.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace shardlm {

constexpr int kProtocolVersion = 1;

struct DecodeOptions {
  std::string input;
  std::string output;
  int64_t page_size = 16;
  double kv_cache_mb = 256.0;       // per rank
  int64_t max_batch = 32;
  int64_t max_batch_tokens = 512;
  int64_t max_new_tokens = 64;      // default of requests that give none
  SamplingParams sampling;          // defaults of requests that give none
  bool progress = false;
};

// Pages of `page_size` tokens that `kv_cache_mb` holds for this rank's row width.
int64_t PagesForBudget(const ModelDims& dims, const ShardPlan& plan, double kv_cache_mb,
                       int64_t page_size);

// Runs the whole job; called by every rank.
absl::Status RunDecode(const DecodeOptions& options, Model& model, Comm& comm);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_DECODE_H_
