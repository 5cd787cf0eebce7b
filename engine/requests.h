// Request fields shared by `score` and `decode` (DESIGN §6).
#ifndef SHARDLM_ENGINE_REQUESTS_H_
#define SHARDLM_ENGINE_REQUESTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/jsonl.h"
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

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_REQUESTS_H_
