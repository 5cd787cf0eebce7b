// The OpenAI completions API on ShardLM's coordinator types: request bodies parsed and checked
// into SequenceRequests, results and streamed tokens formatted as the official clients expect
// (https://platform.openai.com/docs/api-reference/completions). Pure functions: no HTTP, no
// threads, so every rule has a unit test.
#ifndef SHARDLM_SERVE_OPENAI_API_H_
#define SHARDLM_SERVE_OPENAI_API_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/sequence.h"
#include "shard/dims.h"
#include "tokenizer/chat_template.h"

namespace shardlm {

// An API error: the HTTP status and OpenAI's {"error": {message, type, param, code}} body.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field, when there is one
  std::string Body() const;
};

// A checked /v1/completions or /v1/chat/completions request.
struct CompletionRequest {
  bool chat = false;
  std::string model;
  SequenceRequest sequence;  // prompt ids, max_new_tokens, sampling, stops
  std::string prompt_text;   // the prompt as text (for echo; chat: the rendered template)
  bool stream = false;
  bool echo = false;
  bool logprobs = false;  // "logprobs": 1 (the sampled token's; no alternatives)
};

using Encoder = std::function<std::vector<int32_t>(const std::string&)>;
using Decoder = std::function<std::string(const std::vector<int32_t>&)>;

struct ApiLimits {
  const ModelDims* dims = nullptr;  // context length, vocabulary, EOS ids
  std::string served_model;         // the one name "model" may take
  // Chat: the model's template (null: none) and its bos/eos strings; `encode_raw` tokenizes
  // the rendered conversation without adding special tokens (the template wrote them).
  const ChatTemplate* chat_template = nullptr;
  std::string bos_token, eos_token;
  Encoder encode_raw;
};

// Parses and checks a /v1/completions body. `encode` turns the prompt text into ids (with the
// tokenizer's special tokens); the caller serializes access to the tokenizer.
absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view body,
                                                         const ApiLimits& limits,
                                                         const Encoder& encode,
                                                         const Decoder& decode, ApiError* error);

// Parses and checks a /v1/chat/completions body: the messages through the chat template.
absl::StatusOr<CompletionRequest> ParseChatRequest(std::string_view body, const ApiLimits& limits,
                                                   const Decoder& decode, ApiError* error);

// One streamed token, as the step loop reported it.
struct StreamedToken {
  int32_t token = 0;
  double logprob = 0.0;
  std::string text;
};

// The pieces of a response; `id` is "cmpl-…", `created` Unix seconds.
struct ResponseHeader {
  std::string id;
  int64_t created = 0;
  std::string model;
};

// The non-streaming body.
std::string CompletionBody(const ResponseHeader& header, const CompletionRequest& request,
                           const SequenceResult& result, const Decoder& decode);
// One server-sent event "data: {chunk}\n\n" carrying `text` (and the tokens' logprobs when
// asked); `finish_reason` and `usage` only on the last one (result non-null).
std::string CompletionChunk(const ResponseHeader& header, const CompletionRequest& request,
                            std::string_view text, const std::vector<StreamedToken>& tokens,
                            const SequenceResult* result, const Decoder& decode);

// A chat stream's first event: the assistant role, no content yet.
std::string ChatRoleChunk(const ResponseHeader& header);

// GET /v1/models.
std::string ModelsBody(const std::string& served_model, int64_t created, int64_t max_model_len);

}  // namespace shardlm

#endif  // SHARDLM_SERVE_OPENAI_API_H_
