#include "engine/requests.h"

#include "base/status.h"
#include "engine/tokenizer.h"

namespace shardlm {

absl::StatusOr<std::vector<int32_t>> RequestTokens(const JsonObject& request,
                                                   const ModelDims& dims) {
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
    if (!dims.byte_tokenizer) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", key, "\" needs a model with a tokenizer; this one takes \"tokens\" only"));
    }
    ASSIGN_OR_RETURN(std::string s, GetString(prompt != nullptr ? *prompt : *text, key));
    ids = ByteEncode(s, dims.bos_token_id);
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

std::string IdKey(const JsonValue& id) {
  return id.kind_case() == JsonValue::kStringValue ? "s:" + id.string_value()
                                                   : absl::StrCat("n:", id.number_value());
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
