// `shardlm score`: per-token log-probabilities of given sequences (DESIGN §6).
#ifndef SHARDLM_ENGINE_SCORE_H_
#define SHARDLM_ENGINE_SCORE_H_

#include <string>

#include "absl/status/status.h"
#include "comm/comm.h"
#include "engine/model.h"

namespace shardlm {

struct ScoreOptions {
  std::string input;
  std::string output;
  int64_t max_batch_tokens = 512;  // prefill chunk: bounds activations and logits
  int64_t page_size = 16;
  bool progress = false;
};

// Reads `{"id", "tokens" | "text"}` lines on rank 0, runs each sequence through
// all ranks and writes `{"id", "logprobs", "sum_logprob", "perplexity"}` lines
// (an "error" line for an invalid request). Called by every rank.
absl::Status RunScore(const ScoreOptions& options, Model& model, Comm& comm);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_SCORE_H_
