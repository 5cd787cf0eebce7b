// `shardlm score`: per-token log-probabilities of given sequences (DESIGN §6), as
// prefill-only requests through the coordinator's step loop.
#ifndef SHARDLM_COORDINATOR_SCORE_H_
#define SHARDLM_COORDINATOR_SCORE_H_

#include <string>

#include "absl/status/status.h"
#include "comm/comm.h"
#include "coordinator/decode.h"
#include "engine/model.h"

namespace shardlm {

struct ScoreOptions {
  std::string input;
  std::string output;
  BatchOptions batch;
};

// Reads `{"id", "tokens" | "text"}` lines on rank 0, runs them through all ranks (batched
// like decode's prompts) and writes `{"id", "logprobs", "sum_logprob", "perplexity"}` lines
// as each finishes (an "error" line at once for an invalid request). Called by every rank.
absl::Status RunScore(const ScoreOptions& options, Model& model, const Replicas& replicas);

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_SCORE_H_
