#include "coordinator/requests.h"

#include "base/status.h"
#include "coordinator/token_codec.h"

namespace shardlm {

absl::StatusOr<std::vector<int32_t>> RequestTokens(const JsonObject& request, const ModelDims& dims,
                                                   const Tokenizer* tokenizer) {
  const JsonValue* tokens = FindField(request, "tokens");
  const JsonValue* prompt = FindField(request, "prompt");
  const JsonValue* text = FindField(request, "text");
  const int given = (tokens != nullptr) + (prompt != nullptr) + (text != nullptr);
  if (given != 1) {
    return absl::InvalidArgumentError("give exactly one of \"tokens\", \"prompt\" and \"text\"");
  }
  std::vector<int64_t> ids;
  if (tokens != nullptr) {
    ASSIGN_OR_RETURN(ids, GetIntList(*tokens, "tokens"));
  } else {
    const char* key = prompt != nullptr ? "prompt" : "text";
    if (tokenizer == nullptr && !dims.byte_tokenizer) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", key, "\" needs a model with a tokenizer; this one takes \"tokens\" only"));
    }
    ASSIGN_OR_RETURN(std::string s, GetString(prompt != nullptr ? *prompt : *text, key));
    if (tokenizer != nullptr) {
      for (const int32_t id : tokenizer->Encode(s, /*add_special_tokens=*/true)) ids.push_back(id);
    } else {
      ids = ByteEncode(s, dims.bos_token_id);
    }
  }
  if (ids.empty()) return absl::InvalidArgumentError("empty prompt");
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (int64_t t : ids) {
    if (t < 0 || t >= dims.vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", t, " is outside the vocabulary [0, ", dims.vocab, ")"));
    }
    out.push_back(static_cast<int32_t>(t));
  }
  return out;
}

absl::StatusOr<ScoreRequest> ParseScoreRequest(const JsonObject& object, const ModelDims& dims,
                                               const Tokenizer* tokenizer) {
  RETURN_IF_ERROR(CheckKnownFields(object, {"id", "tokens", "text", "prompt"}));
  ScoreRequest request;
  const JsonValue* id = FindField(object, "id");
  if (id == nullptr) return absl::InvalidArgumentError("missing \"id\"");
  ASSIGN_OR_RETURN(request.id, GetId(*id));
  ASSIGN_OR_RETURN(request.tokens, RequestTokens(object, dims, tokenizer));
  if (static_cast<int64_t>(request.tokens.size()) > dims.max_positions) {
    return absl::InvalidArgumentError(
        absl::StrCat(request.tokens.size(), " tokens exceed the context length ",
                     dims.max_positions, " (max_position_embeddings, or --max-model-len)"));
  }
  return request;
}

absl::StatusOr<DecodeRequest> ParseDecodeRequest(const JsonObject& object, const ModelDims& dims,
                                                 int64_t default_max_new_tokens,
                                                 const SamplingParams& default_sampling,
                                                 const Tokenizer* tokenizer) {
  RETURN_IF_ERROR(
      CheckKnownFields(object, {"id", "prompt", "text", "tokens", "max_new_tokens", "temperature",
                                "top_k", "top_p", "seed", "stop_token_ids", "stop"}));
  DecodeRequest r;
  const JsonValue* id = FindField(object, "id");
  if (id == nullptr) return absl::InvalidArgumentError("missing \"id\"");
  ASSIGN_OR_RETURN(r.id, GetId(*id));
  ASSIGN_OR_RETURN(r.prompt, RequestTokens(object, dims, tokenizer));
  const int64_t prompt_len = static_cast<int64_t>(r.prompt.size());
  if (prompt_len >= dims.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt of ", prompt_len, " tokens leaves no room to generate within the context length ",
        dims.max_positions, " (max_position_embeddings, or --max-model-len)"));
  }
  r.max_new_tokens = default_max_new_tokens;
  r.sampling = default_sampling;
  if (const JsonValue* v = FindField(object, "max_new_tokens")) {
    ASSIGN_OR_RETURN(r.max_new_tokens, GetInt(*v, "max_new_tokens"));
    if (r.max_new_tokens < 1 || r.max_new_tokens > dims.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"max_new_tokens\" must be in [1, ", dims.max_positions, "], got ", r.max_new_tokens));
    }
  }
  if (const JsonValue* v = FindField(object, "temperature")) {
    ASSIGN_OR_RETURN(r.sampling.temperature, GetNumber(*v, "temperature"));
    if (!(r.sampling.temperature >= 0) || r.sampling.temperature > 1e4) {
      return absl::InvalidArgumentError("\"temperature\" must be in [0, 10000]");
    }
  }
  if (const JsonValue* v = FindField(object, "top_k")) {
    ASSIGN_OR_RETURN(r.sampling.top_k, GetInt(*v, "top_k"));
    if (r.sampling.top_k < 0) return absl::InvalidArgumentError("\"top_k\" must be >= 0");
  }
  if (const JsonValue* v = FindField(object, "top_p")) {
    ASSIGN_OR_RETURN(r.sampling.top_p, GetNumber(*v, "top_p"));
    if (!(r.sampling.top_p > 0 && r.sampling.top_p <= 1)) {
      return absl::InvalidArgumentError("\"top_p\" must be in (0, 1]");
    }
  }
  if (const JsonValue* v = FindField(object, "seed")) {
    ASSIGN_OR_RETURN(int64_t seed, GetInt(*v, "seed"));
    if (seed < 0) return absl::InvalidArgumentError("\"seed\" must be >= 0");
    r.sampling.seed = static_cast<uint64_t>(seed);
  }
  for (int64_t eos : dims.eos_token_ids) r.stop_ids.insert(static_cast<int32_t>(eos));
  if (const JsonValue* v = FindField(object, "stop_token_ids")) {
    ASSIGN_OR_RETURN(std::vector<int64_t> stops, GetIntList(*v, "stop_token_ids"));
    for (int64_t t : stops) {
      if (t < 0 || t >= dims.vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("stop token id ", t, " is outside the vocabulary [0, ", dims.vocab, ")"));
      }
      r.stop_ids.insert(static_cast<int32_t>(t));
    }
  }
  if (const JsonValue* v = FindField(object, "stop")) {
    // A string or a list of strings (as OpenAI's "stop"), each non-empty; at most 16.
    if (v->kind_case() == JsonValue::kStringValue) {
      r.stop.push_back(v->string_value());
    } else if (v->kind_case() == JsonValue::kListValue) {
      for (const JsonValue& e : v->list_value().values()) {
        ASSIGN_OR_RETURN(std::string stop, GetString(e, "stop"));
        r.stop.push_back(std::move(stop));
      }
    } else {
      return absl::InvalidArgumentError("\"stop\" must be a string or a list of strings");
    }
    if (r.stop.size() > 16) return absl::InvalidArgumentError("\"stop\" has more than 16 strings");
    for (const std::string& stop : r.stop) {
      if (stop.empty()) return absl::InvalidArgumentError("\"stop\" strings must not be empty");
    }
    if (!r.stop.empty() && tokenizer == nullptr && !dims.byte_tokenizer) {
      return absl::InvalidArgumentError("\"stop\" needs a model with a tokenizer");
    }
  }
  return r;
}

std::string IdKey(const JsonValue& id) {
  // GetId leaves numeric ids exact integers below 2^53. Printed as a double they
  // kept 6 significant digits, so ids 1000001 and 1000002 were "duplicates".
  return id.kind_case() == JsonValue::kStringValue
             ? "s:" + id.string_value()
             : absl::StrCat("n:", static_cast<int64_t>(id.number_value()));
}

absl::Status OpenRequestFiles(const std::string& input_path, const std::string& output_path,
                              std::ifstream* input, std::unique_ptr<JsonlWriter>* writer) {
  input->open(input_path);
  if (!*input) return absl::NotFoundError(absl::StrCat("cannot open input ", input_path));
  ASSIGN_OR_RETURN(*writer, JsonlWriter::Open(output_path));
  return absl::OkStatus();
}

JsonLine ErrorLine(const JsonValue* id, const std::string& message) {
  JsonLine out;
  if (id != nullptr) out.Set("id", *id);
  out.Set("error", StringValue(message));
  return out;
}

}  // namespace shardlm
