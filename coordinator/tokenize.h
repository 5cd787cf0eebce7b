// `shardlm tokenize`: text ↔ token ids with a model directory's tokenizer, no weights needed.
#ifndef SHARDLM_COORDINATOR_TOKENIZE_H_
#define SHARDLM_COORDINATOR_TOKENIZE_H_

#include <string>

#include "absl/status/status.h"

namespace shardlm {

struct TokenizeOptions {
  std::string model_dir;  // config.json and tokenizer.json (or "tokenizer": "bytes")
  std::string input;      // JSONL: {"id", "text"} or {"id", "tokens"}
  std::string output;     // JSONL: {"id", "tokens"} or {"id", "text"}; {"id", "error"} if bad
  bool add_special_tokens = false;
};

absl::Status RunTokenize(const TokenizeOptions& options);

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_TOKENIZE_H_
