// `shardlm decode` (DESIGN §4–§6): requests from a JSONL file, fed to the coordinator
// (continuous batching over the paged KV cache on every rank, sampling on rank 0), results
// written to JSONL as each finishes.
#ifndef SHARDLM_COORDINATOR_DECODE_H_
#define SHARDLM_COORDINATOR_DECODE_H_

#include <functional>
#include <istream>
#include <string>

#include "absl/status/status.h"
#include "comm/comm.h"
#include "coordinator/coordinator.h"
#include "coordinator/handshake.h"
#include "coordinator/replicas.h"
#include "coordinator/sampler.h"
#include "engine/jsonl.h"
#include "engine/model.h"

namespace shardlm {

// The batching flags `decode` and `score` share.
struct BatchOptions {
  std::string model_dir;  // rank 0 loads the tokenizer from it
  CacheOptions cache;
  // Caps the context (prompt plus generated tokens) below the model's max_position_embeddings,
  // as vLLM's --max-model-len does; 0: the model's own.
  int64_t max_model_len = 0;
  int64_t max_batch = 32;          // sequences per step
  int64_t max_batch_tokens = 512;  // tokens per step, prefill chunks included
  bool prefix_cache = true;        // share cached full pages of common prefixes
  bool progress = false;
};

// The scheduler's options for a job's cache and swap space. Data-parallel attention splits the
// pages into one group per rank of the replica and runs without prefix cache and swap.
SchedulerOptions SchedulerOptionsFor(const BatchOptions& options, const Model& model,
                                     const PagedKvCache& cache, const KvSwap* swap);

struct DecodeOptions {
  std::string input;
  std::string output;
  BatchOptions batch;
  int64_t max_new_tokens = 64;  // default of requests that give none
  SamplingParams sampling;      // defaults of requests that give none
};

// A JSONL file job's side on rank 0: how request lines become sequences and finished
// sequences become result lines.
struct JsonlClient {
  // Reads every request line: submits the valid ones, writes an error line for each bad one
  // (the others still run) and returns how many it wrote.
  using Submit = std::function<absl::Status(int64_t handle, SequenceRequest request)>;
  std::function<absl::StatusOr<int64_t>(std::istream&, JsonlWriter*, const Submit&,
                                        const Tokenizer*)>
      read;
  std::function<JsonLine(const SequenceResult&)> result_line;
  // What the summary line counts: tokens "generated" (decode) or "scored" (score).
  bool count_generated = true;
};

// The frame of `decode` and `score`, on every rank: start-up (StartUp), rank 0 opens the
// files and reads the requests, each replica's step loop (coordinator/replicas.h), then rank
// 0's summary line on stderr (and progress while it runs, on a terminal or with --progress).
absl::Status RunJsonlJob(const char* job, const BatchOptions& options, const std::string& input,
                         const std::string& output, Model& model, const Replicas& replicas,
                         const JsonlClient& client);

// Runs the whole job; called by every rank.
absl::Status RunDecode(const DecodeOptions& options, Model& model, const Replicas& replicas);

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_DECODE_H_
