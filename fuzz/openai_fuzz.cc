// Fuzz target: request bodies of `serve` (serve/openai_api.h), /v1/completions and
// /v1/chat/completions (the first input byte chooses), against a small model with a byte
// tokenizer and a chat template.
// Contract: every body gives either a request within the model's limits (a non-empty prompt
// inside the vocabulary, 1 <= max_tokens, prompt + max_tokens within the context, sampling
// parameters in range) or an error with an HTTP status of 400 or 404, a message, and a body
// that is valid JSON; responses built from a request are valid JSON; no crash, hang or
// undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "fuzz/fuzz_check.h"
#include "nlohmann/json.hpp"
#include "serve/openai_api.h"

namespace shardlm {
namespace {

using Json = nlohmann::json;

const ModelDims& Dims() {
  static const ModelDims dims = [] {
    ModelDims d;
    d.vocab = 259;
    d.max_positions = 48;
    d.bos_token_id = 256;
    d.eos_token_ids = {257};
    d.byte_tokenizer = true;
    return d;
  }();
  return dims;
}

std::vector<int32_t> Bytes(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

std::string Text(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (id >= 0 && id < 256) s.push_back(static_cast<char>(id));
  }
  return s;
}

void Check(std::string_view body, bool chat) {
  static const auto tmpl = ChatTemplate::Parse(
      "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}");
  // Built once (assigning short literals into fresh strings trips GCC 12's -Wrestrict).
  static const ApiLimits limits = [] {
    ApiLimits l;
    l.dims = &Dims();
    l.served_model = std::string(1, 'm');
    l.chat_template = tmpl->get();
    l.bos_token = std::string(1, '^');
    l.encode_raw = Bytes;
    return l;
  }();
  ApiError error;
  absl::StatusOr<CompletionRequest> r =
      chat ? ParseChatRequest(body, limits, Text, &error)
           : ParseCompletionRequest(body, limits, Bytes, Text, &error);
  if (!r.ok()) {
    FUZZ_CHECK(error.http_status == 400 || error.http_status == 404,
               absl::StrCat("status ", error.http_status));
    FUZZ_CHECK(!error.message.empty(), "an error without a message");
    FUZZ_CHECK(Json::accept(error.Body()), error.Body());
    return;
  }
  const ModelDims& d = Dims();
  const SequenceRequest& s = r->sequence;
  FUZZ_CHECK(!s.prompt.empty(), "empty prompt accepted");
  for (int32_t t : s.prompt) FUZZ_CHECK(t >= 0 && t < d.vocab, absl::StrCat("token ", t));
  FUZZ_CHECK(s.max_new_tokens >= 1, absl::StrCat("max_new_tokens ", s.max_new_tokens));
  FUZZ_CHECK(static_cast<int64_t>(s.prompt.size()) + s.max_new_tokens <= d.max_positions,
             absl::StrCat(s.prompt.size(), " + ", s.max_new_tokens));
  FUZZ_CHECK(s.sampling.temperature >= 0 && s.sampling.top_p > 0 && s.sampling.top_p <= 1 &&
                 s.sampling.top_k >= 0,
             "sampling out of range");
  for (const std::string& stop : s.stop) FUZZ_CHECK(!stop.empty(), "empty stop string");
  FUZZ_CHECK(r->chat == chat, "chat flag");
  SequenceResult result;
  result.prompt_len = static_cast<int64_t>(s.prompt.size());
  result.generated = {65, 66};
  result.logprobs = {-1.0, -2.0};
  result.text = std::string("AB");
  result.finish_reason = "length";
  const ResponseHeader header{"x", 0, "m"};
  FUZZ_CHECK(Json::accept(CompletionBody(header, *r, result, Text)), "response body");
  const std::string chunk = CompletionChunk(header, *r, "A", {{65, -1.0, "A"}}, &result, Text);
  FUZZ_CHECK(chunk.rfind("data: ", 0) == 0 && Json::accept(chunk.substr(6)), chunk);
}

}  // namespace
}  // namespace shardlm

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  shardlm::Check(body, (data[0] & 1) != 0);
  return 0;
}
