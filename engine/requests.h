// Request fields shared by `score` and `decode` (DESIGN §6).
#ifndef SHARDLM_ENGINE_REQUESTS_H_
#define SHARDLM_ENGINE_REQUESTS_H_

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/jsonl.h"
#include "engine/sampler.h"
#include "shard/dims.h"

namespace shardlm {

// The request's tokens: "tokens" used exactly as given, or "prompt"/"text"
// tokenized (byte tokenizer) with bos_token_id in front. Exactly one of them;
// non-empty; every id inside the vocabulary.
absl::StatusOr<std::vector<int32_t>> RequestTokens(const JsonObject& request,
                                                   const ModelDims& dims);

// Distinct keys for string ids and integer ids ("7" and 7 are different ids).
std::string IdKey(const JsonValue& id);

// {"id", "error": message}; the id is omitted when the line had none.
JsonLine ErrorLine(const JsonValue* id, const std::string& message);

// A validated `score` line: {"id", "tokens" | "text" | "prompt"}.
struct ScoreRequest {
  JsonValue id;
  std::vector<int32_t> tokens;
};
absl::StatusOr<ScoreRequest> ParseScoreRequest(const JsonObject& object, const ModelDims& dims);

// A validated `decode` line; fields it omits take the job's defaults.
struct DecodeRequest {
  JsonValue id;
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 0;
  SamplingParams sampling;
  std::set<int32_t> stop_ids;  // EOS ids and the request's stop_token_ids
};
absl::StatusOr<DecodeRequest> ParseDecodeRequest(const JsonObject& object, const ModelDims& dims,
                                                 int64_t default_max_new_tokens,
                                                 const SamplingParams& default_sampling);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_REQUESTS_H_
