// What a client asks of one sequence and what it gets back: the coordinator's interface to
// its clients (decode, score, serve), in a header of its own so that request parsers (serve's
// OpenAI API, its fuzz target) need no engine.
#ifndef SHARDLM_COORDINATOR_SEQUENCE_H_
#define SHARDLM_COORDINATOR_SEQUENCE_H_

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "coordinator/sampler.h"

namespace shardlm {

// What a client asks of one sequence.
struct SequenceRequest {
  std::vector<int32_t> prompt;   // non-empty, inside the vocabulary
  int64_t max_new_tokens = 0;    // 0: prefill only, nothing is generated (`score`)
  bool prompt_logprobs = false;  // log p(prompt_t | prompt_<t) for t ≥ 1
  SamplingParams sampling;
  std::set<int32_t> stop_ids;     // generation ends after sampling one of these
  std::vector<std::string> stop;  // ... or once the text contains one of these (not kept)
};

// A finished sequence.
struct SequenceResult {
  int64_t handle = 0;  // the client's, from Submit
  int64_t prompt_len = 0;
  std::vector<int32_t> generated;
  std::vector<double> logprobs;         // of each generated token, unmodified distribution
  std::vector<double> prompt_logprobs;  // [prompt_len − 1] when asked, else empty
  // "stop", "length", "prompt" (prefill only), or the reason given to Cancel.
  const char* finish_reason = "";
  // The generated text (special tokens skipped, cut before a stop string, invalid UTF-8
  // replaced), when the coordinator has a tokenizer.
  bool has_text = false;
  std::string text;
};

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_SEQUENCE_H_
