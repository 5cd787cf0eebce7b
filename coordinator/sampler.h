// Token sampling on the coordinator (DESIGN §5): greedy, temperature, top-k,
// top-p, with a per-request random stream so results do not depend on batching.
#ifndef SHARDLM_COORDINATOR_SAMPLER_H_
#define SHARDLM_COORDINATOR_SAMPLER_H_

#include <cstdint>
#include <vector>

#include "base/rng.h"

namespace shardlm {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: whole vocabulary
  double top_p = 1.0;        // 1: no nucleus cut
  uint64_t seed = 0;
};

struct Sample {
  int32_t token = 0;
  double logprob = 0.0;  // log p(token) under the model's unmodified distribution
};

// One request's sampler: owns its random stream.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed, "sampler") {}

  // Picks the next token from one row of logits [vocab].
  Sample Next(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // scratch, reused across calls
  std::vector<double> probs_;                          // scratch, reused across calls
};

// log softmax(logits)[target] in double; the reference for every reported logprob.
double LogSoftmaxAt(const float* logits, int64_t vocab, int64_t target);
// argmax, ties to the lowest id.
int32_t ArgMax(const float* logits, int64_t vocab);

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_SAMPLER_H_
