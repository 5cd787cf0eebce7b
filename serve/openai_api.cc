#include "serve/openai_api.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/text.h"
#include "base/status.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using Json = nlohmann::json;

// Fills `error` and returns its status.
absl::Status Fail(ApiError* error, std::string param, std::string message, int http = 400,
                  std::string type = "invalid_request_error") {
  error->http_status = http;
  error->param = std::move(param);
  error->message = std::move(message);
  error->type = std::move(type);
  return absl::InvalidArgumentError(error->message);
}

const char* TypeName(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    case Json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

absl::Status WrongType(ApiError* error, const std::string& key, const Json& v, const char* want) {
  return Fail(error, key, absl::StrCat("\"", key, "\" must be ", want, ", not ", TypeName(v)));
}

// The fields the completions API defines; anything else is refused by name (a typo silently
// ignored would change what the client thinks it asked for).
constexpr const char* kKnownFields[] = {
    "model",     "prompt",     "max_tokens",       "temperature",       "top_p",
    "top_k",     "seed",       "stop",             "stop_token_ids",    "logprobs",
    "echo",      "stream",     "stream_options",   "n",                 "best_of",
    "user",      "suffix",     "presence_penalty", "frequency_penalty", "logit_bias",
};

}  // namespace

std::string ApiError::Body() const {
  Json e = {{"message", message}, {"type", type}, {"code", http_status}};
  e["param"] = param.empty() ? Json(nullptr) : Json(param);
  return Json{{"error", e}}.dump(-1, ' ', false, Json::error_handler_t::replace);
}

namespace {

constexpr const char* kChatFields[] = {
    "model",          "messages",    "max_tokens",       "max_completion_tokens",
    "temperature",    "top_p",       "top_k",            "seed",
    "stop",           "stop_token_ids", "logprobs",      "top_logprobs",
    "stream",         "stream_options", "n",             "user",
    "presence_penalty", "frequency_penalty", "logit_bias", "tools",
    "tool_choice",    "parallel_tool_calls",
};

// A message's content as text: a string, null, or a list of {"type": "text", "text"} parts.
absl::StatusOr<std::string> MessageText(const Json& content, size_t index, ApiError* error) {
  const std::string param = absl::StrCat("messages[", index, "].content");
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return WrongType(error, param, content, "a string or a list of parts");
  std::string text;
  for (const Json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return Fail(error, param, "only text content parts ({\"type\": \"text\", \"text\"}) are supported");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

static absl::StatusOr<CompletionRequest> ParseRequest(std::string_view body, bool chat,
                                                      const ApiLimits& limits,
                                                      const Encoder& encode,
                                                      const Decoder& decode, ApiError* error) {
  const ModelDims& dims = *limits.dims;
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Fail(error, "", "the request body is not valid JSON");
  if (!j.is_object()) return Fail(error, "", "the request body must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    bool known = false;
    if (chat) {
      for (const char* k : kChatFields) known = known || key == k;
    } else {
      for (const char* k : kKnownFields) known = known || key == k;
    }
    if (!known) return Fail(error, key, absl::StrCat("unknown field \"", Printable(key), "\""));
  }
  auto get = [&](const char* key) -> const Json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto get_int = [&](const char* key, int64_t lo, int64_t hi, int64_t* out) -> absl::Status {
    const Json* v = get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number_integer()) return WrongType(error, key, *v, "an integer");
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) {
      return Fail(error, key, absl::StrCat("\"", key, "\" must be in [", lo, ", ", hi, "], got ", x));
    }
    *out = x;
    return absl::OkStatus();
  };
  auto get_number = [&](const char* key, double lo, double hi, double* out) -> absl::Status {
    const Json* v = get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number()) return WrongType(error, key, *v, "a number");
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi)) {
      return Fail(error, key, absl::StrCat("\"", key, "\" must be in [", lo, ", ", hi, "], got ", x));
    }
    *out = x;
    return absl::OkStatus();
  };
  auto get_bool = [&](const char* key, bool* out) -> absl::Status {
    const Json* v = get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return WrongType(error, key, *v, "a boolean");
    *out = v->get<bool>();
    return absl::OkStatus();
  };

  CompletionRequest r;
  if (const Json* v = get("model")) {
    if (!v->is_string()) return WrongType(error, "model", *v, "a string");
    r.model = v->get<std::string>();
    if (r.model != limits.served_model) {
      return Fail(error, "model",
                  absl::StrCat("the model \"", Printable(r.model), "\" does not exist; this server has \"",
                               limits.served_model, "\""),
                  404, "not_found_error");
    }
  }
  // Features with one supported value.
  int64_t n = 1;
  RETURN_IF_ERROR(get_int("n", 1, 1, &n));
  RETURN_IF_ERROR(get_int("best_of", 1, 1, &n));
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    double penalty = 0.0;
    RETURN_IF_ERROR(get_number(key, 0.0, 0.0, &penalty));
  }
  if (const Json* v = get("logit_bias"); v != nullptr && !(v->is_object() && v->empty())) {
    return Fail(error, "logit_bias", "\"logit_bias\" is not supported");
  }
  if (const Json* v = get("suffix"); v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
    return Fail(error, "suffix", "\"suffix\" is not supported");
  }
  if (const Json* v = get("user"); v != nullptr && !v->is_string()) {
    return WrongType(error, "user", *v, "a string");
  }
  if (const Json* v = get("stream_options"); v != nullptr && !v->is_object()) {
    return WrongType(error, "stream_options", *v, "an object");
  }

  r.chat = chat;
  std::vector<int32_t>& ids = r.sequence.prompt;
  if (chat) {
    // The messages through the model's chat template, with the generation prompt; the text it
    // gives is tokenized without adding special tokens (the template writes them), as
    // transformers' apply_chat_template does.
    if (limits.chat_template == nullptr) {
      return Fail(error, "messages",
                  "this model has no chat template (tokenizer_config.json \"chat_template\"); "
                  "use /v1/completions",
                  400);
    }
    const Json* messages = get("messages");
    if (messages == nullptr) return Fail(error, "messages", "\"messages\" is required");
    if (!messages->is_array() || messages->empty()) {
      return Fail(error, "messages", "\"messages\" must be a non-empty list");
    }
    ChatTemplate::Json context = ChatTemplate::Json::object();
    ChatTemplate::Json list = ChatTemplate::Json::array();
    for (size_t i = 0; i < messages->size(); ++i) {
      const Json& m = (*messages)[i];
      const std::string param = absl::StrCat("messages[", i, "]");
      if (!m.is_object()) return WrongType(error, param, m, "an object");
      if (!m.contains("role") || !m["role"].is_string()) {
        return Fail(error, param + ".role", "each message needs a \"role\" string");
      }
      ChatTemplate::Json message = ChatTemplate::Json::parse(m.dump());
      if ((!m.contains("content") || m["content"].is_null()) && m["role"] != "assistant") {
        return Fail(error, param + ".content",
                    "a message needs \"content\" (only an assistant's may be null)");
      }
      if (m.contains("content")) {
        ASSIGN_OR_RETURN(std::string text, MessageText(m["content"], i, error));
        message["content"] = m["content"].is_null() ? ChatTemplate::Json() : ChatTemplate::Json(text);
      } else {
        message["content"] = ChatTemplate::Json();
      }
      list.push_back(std::move(message));
    }
    context["messages"] = std::move(list);
    context["add_generation_prompt"] = true;
    context["bos_token"] = limits.bos_token;
    context["eos_token"] = limits.eos_token;
    if (const Json* tools = get("tools")) {
      if (!tools->is_array()) return WrongType(error, "tools", *tools, "a list");
      context["tools"] = ChatTemplate::Json::parse(tools->dump());
    }
    absl::StatusOr<std::string> rendered = limits.chat_template->Render(context);
    if (!rendered.ok()) return Fail(error, "messages", std::string(rendered.status().message()));
    r.prompt_text = *rendered;
    ids = limits.encode_raw(r.prompt_text);
  } else {
  // The prompt: text, or token ids; a list of one of either (the API's batch form, one entry).
  const Json* prompt = get("prompt");
  if (prompt == nullptr) return Fail(error, "prompt", "\"prompt\" is required");
  const Json* p = prompt;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) {
    p = &(*p)[0];
  } else if (p->is_array() && !p->empty() && !(*p)[0].is_number_integer()) {
    return Fail(error, "prompt", "one prompt per request: \"prompt\" has several");
  }
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
    ids = encode(r.prompt_text);
  } else if (p->is_array()) {
    for (const Json& t : *p) {
      if (!t.is_number_integer()) return WrongType(error, "prompt", t, "a string or token ids");
      const int64_t id = t.get<int64_t>();
      if (id < 0 || id >= dims.vocab) {
        return Fail(error, "prompt", absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                                                  dims.vocab, ")"));
      }
      ids.push_back(static_cast<int32_t>(id));
    }
    r.prompt_text = decode(ids);
  } else {
    return WrongType(error, "prompt", *p, "a string or token ids");
  }
  }
  const char* prompt_param = chat ? "messages" : "prompt";
  if (ids.empty()) return Fail(error, prompt_param, "the prompt is empty");
  const int64_t prompt_len = static_cast<int64_t>(ids.size());
  if (prompt_len >= dims.max_positions) {
    return Fail(error, prompt_param,
                absl::StrCat("the prompt has ", prompt_len, " tokens; the context length is ",
                             dims.max_positions, " and at least one token must be generated"));
  }

  // OpenAI's default for completions is 16; chat completions run to the end of the context.
  int64_t max_tokens = chat ? dims.max_positions - prompt_len : 16;
  const char* max_key = chat && get("max_completion_tokens") != nullptr ? "max_completion_tokens"
                                                                       : "max_tokens";
  RETURN_IF_ERROR(get_int(max_key, 1, INT32_MAX, &max_tokens));
  if (prompt_len + max_tokens > dims.max_positions) {
    return Fail(error, max_key,
                absl::StrCat("\"", max_key, "\" ", max_tokens, " plus the prompt's ", prompt_len,
                             " tokens exceed the context length ", dims.max_positions));
  }
  r.sequence.max_new_tokens = max_tokens;

  SamplingParams& s = r.sequence.sampling;
  s.temperature = 1.0;  // OpenAI's default
  RETURN_IF_ERROR(get_number("temperature", 0.0, 1e4, &s.temperature));
  RETURN_IF_ERROR(get_number("top_p", 0.0, 1.0, &s.top_p));
  if (!(s.top_p > 0.0)) return Fail(error, "top_p", "\"top_p\" must be in (0, 1]");
  int64_t top_k = 0;
  RETURN_IF_ERROR(get_int("top_k", -1, INT32_MAX, &top_k));  // -1: off, as vLLM
  s.top_k = std::max<int64_t>(top_k, 0);
  int64_t seed = 0;
  RETURN_IF_ERROR(get_int("seed", 0, INT64_MAX, &seed));
  s.seed = static_cast<uint64_t>(seed);

  for (int64_t eos : dims.eos_token_ids) r.sequence.stop_ids.insert(static_cast<int32_t>(eos));
  if (const Json* v = get("stop_token_ids")) {
    if (!v->is_array()) return WrongType(error, "stop_token_ids", *v, "an array of token ids");
    for (const Json& t : *v) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= dims.vocab) {
        return Fail(error, "stop_token_ids", "\"stop_token_ids\" must hold ids in the vocabulary");
      }
      r.sequence.stop_ids.insert(t.get<int32_t>());
    }
  }
  if (const Json* v = get("stop")) {
    std::vector<std::string>& stop = r.sequence.stop;
    if (v->is_string()) {
      stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const Json& e : *v) {
        if (!e.is_string()) return WrongType(error, "stop", e, "a string or a list of strings");
        stop.push_back(e.get<std::string>());
      }
    } else {
      return WrongType(error, "stop", *v, "a string or a list of strings");
    }
    if (stop.size() > 16) return Fail(error, "stop", "\"stop\" has more than 16 strings");
    for (const std::string& x : stop) {
      if (x.empty()) return Fail(error, "stop", "\"stop\" strings must not be empty");
    }
  }
  int64_t logprobs = -1;
  if (chat) {
    bool want = false;
    RETURN_IF_ERROR(get_bool("logprobs", &want));
    int64_t top = 0;
    RETURN_IF_ERROR(get_int("top_logprobs", 0, 20, &top));
    if (top > 0) {
      return Fail(error, "top_logprobs",
                  "alternatives to the sampled tokens are not computed: \"top_logprobs\" must be "
                  "0 or absent");
    }
    logprobs = want ? 0 : -1;
  } else if (const Json* v = get("logprobs"); v != nullptr && v->is_boolean()) {
    logprobs = v->get<bool>() ? 0 : -1;
  } else {
    RETURN_IF_ERROR(get_int("logprobs", 0, 5, &logprobs));
  }
  if (logprobs > 0) {
    return Fail(error, "logprobs",
                "alternatives to the sampled tokens are not computed: \"logprobs\" must be 0 "
                "(the sampled tokens' logprobs) or absent");
  }
  r.logprobs = logprobs == 0;
  if (!chat) RETURN_IF_ERROR(get_bool("echo", &r.echo));
  RETURN_IF_ERROR(get_bool("stream", &r.stream));
  if (const Json* v = get("tool_choice"); v != nullptr && !(v->is_string() && (*v == "none" || *v == "auto"))) {
    return Fail(error, "tool_choice", "\"tool_choice\" may be \"auto\" or \"none\" (tool calls are not parsed out)");
  }
  return r;
}

absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view body,
                                                         const ApiLimits& limits,
                                                         const Encoder& encode,
                                                         const Decoder& decode, ApiError* error) {
  return ParseRequest(body, /*chat=*/false, limits, encode, decode, error);
}

absl::StatusOr<CompletionRequest> ParseChatRequest(std::string_view body, const ApiLimits& limits,
                                                   const Decoder& decode, ApiError* error) {
  return ParseRequest(body, /*chat=*/true, limits, limits.encode_raw, decode, error);
}

namespace {

Json Usage(const SequenceResult& result) {
  const int64_t completion = static_cast<int64_t>(result.generated.size());
  return {{"prompt_tokens", result.prompt_len},
          {"completion_tokens", completion},
          {"total_tokens", result.prompt_len + completion}};
}

// The completions API's logprobs object for `tokens` (with their logprobs), whose text starts
// at byte `offset` of the choice's text.
Json Logprobs(const std::vector<int32_t>& tokens, const std::vector<double>& logprobs,
              size_t offset, const Decoder& decode) {
  Json strings = Json::array(), values = Json::array(), offsets = Json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string piece = decode({tokens[i]});
    strings.push_back(piece);
    values.push_back(logprobs[i]);
    offsets.push_back(offset);
    offset += piece.size();
  }
  return {{"tokens", strings},
          {"token_logprobs", values},
          {"top_logprobs", nullptr},
          {"text_offset", offsets}};
}

std::string Dump(const Json& j) {
  // Generated text is valid UTF-8 (the coordinator replaces what is not); replace, never throw.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

// The chat API's logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": []}]}.
static Json ChatLogprobs(const std::vector<int32_t>& tokens, const std::vector<double>& logprobs,
                  const Decoder& decode) {
  Json content = Json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string piece = decode({tokens[i]});
    Json bytes = Json::array();
    for (unsigned char c : piece) bytes.push_back(c);
    content.push_back({{"token", piece}, {"logprob", logprobs[i]}, {"bytes", bytes},
                       {"top_logprobs", Json::array()}});
  }
  return {{"content", content}};
}

// What every response and chunk carries around its one choice.
static Json Envelope(const ResponseHeader& header, const char* object, Json choice) {
  return {{"id", header.id},
          {"object", object},
          {"created", header.created},
          {"model", header.model},
          {"choices", Json::array({std::move(choice)})}};
}

std::string CompletionBody(const ResponseHeader& header, const CompletionRequest& request,
                           const SequenceResult& result, const Decoder& decode) {
  if (request.chat) {
    Json choice = {{"index", 0},
                   {"message", {{"role", "assistant"}, {"content", result.text}}},
                   {"logprobs", nullptr},
                   {"finish_reason", result.finish_reason}};
    if (request.logprobs) choice["logprobs"] = ChatLogprobs(result.generated, result.logprobs, decode);
    Json body = Envelope(header, "chat.completion", std::move(choice));
    body["usage"] = Usage(result);
    return Dump(body);
  }
  const std::string prefix = request.echo ? request.prompt_text : std::string();
  Json choice = {{"index", 0},
                 {"text", prefix + result.text},
                 {"logprobs", nullptr},
                 {"finish_reason", result.finish_reason}};
  if (request.logprobs) {
    choice["logprobs"] = Logprobs(result.generated, result.logprobs, prefix.size(), decode);
  }
  Json body = Envelope(header, "text_completion", std::move(choice));
  body["usage"] = Usage(result);
  return Dump(body);
}

std::string CompletionChunk(const ResponseHeader& header, const CompletionRequest& request,
                            std::string_view text, const std::vector<StreamedToken>& tokens,
                            const SequenceResult* result, const Decoder& decode) {
  std::vector<int32_t> ids;
  std::vector<double> values;
  for (const StreamedToken& t : tokens) {
    ids.push_back(t.token);
    values.push_back(t.logprob);
  }
  Json choice = {{"index", 0}, {"logprobs", nullptr}};
  if (request.chat) {
    choice["delta"] = text.empty() && result != nullptr ? Json::object()
                                                        : Json{{"content", std::string(text)}};
    if (request.logprobs && !ids.empty()) choice["logprobs"] = ChatLogprobs(ids, values, decode);
  } else {
    choice["text"] = std::string(text);
    if (request.logprobs && !ids.empty()) choice["logprobs"] = Logprobs(ids, values, 0, decode);
  }
  choice["finish_reason"] = result != nullptr ? Json(result->finish_reason) : Json(nullptr);
  Json chunk = Envelope(header, request.chat ? "chat.completion.chunk" : "text_completion",
                        std::move(choice));
  if (result != nullptr) chunk["usage"] = Usage(*result);
  return absl::StrCat("data: ", Dump(chunk), "\n\n");
}

std::string ChatRoleChunk(const ResponseHeader& header) {
  Json choice = {{"index", 0},
                 {"delta", {{"role", "assistant"}, {"content", ""}}},
                 {"logprobs", nullptr},
                 {"finish_reason", nullptr}};
  return absl::StrCat("data: ", Dump(Envelope(header, "chat.completion.chunk", std::move(choice))),
                      "\n\n");
}

std::string ModelsBody(const std::string& served_model, int64_t created, int64_t max_model_len) {
  return Dump({{"object", "list"},
               {"data", Json::array({{{"id", served_model},
                                      {"object", "model"},
                                      {"created", created},
                                      {"owned_by", "shardlm"},
                                      {"max_model_len", max_model_len}}})}});
}

}  // namespace shardlm
