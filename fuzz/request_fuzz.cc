// Fuzz target: request lines of `score` and `decode` (coordinator/requests.h), the
// way the coordinator reads a requests file: one JSON object per line, each
// validated against the model's dims, ids checked for duplicates, invalid lines
// answered with an error line.
// Contract: every line gives either a request within the model's limits or an
// error line that is itself valid JSON carrying the request's id; distinct ids
// never count as duplicates; no crash, hang or undefined behaviour.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "engine/jsonl.h"
#include "coordinator/requests.h"
#include "fuzz/fuzz_check.h"
#include "google/protobuf/util/message_differencer.h"

namespace shardlm {
namespace {

// Two small models: one with the byte tokenizer (so "prompt"/"text" work), one
// that takes "tokens" only and has a short context.
ModelDims BytesModel() {
  ModelDims d;
  d.vocab = 259;  // bytes, BOS 256, EOS 257, one spare
  d.max_positions = 48;
  d.bos_token_id = 256;
  d.eos_token_ids = {257};
  d.byte_tokenizer = true;
  return d;
}

ModelDims TokensModel() {
  ModelDims d;
  d.vocab = 40;
  d.max_positions = 6;
  d.eos_token_ids = {0, 39};
  return d;
}

constexpr int64_t kDefaultMaxNewTokens = 16;

bool InVocab(int64_t t, const ModelDims& dims) { return t >= 0 && t < dims.vocab; }

// An id as the engine must tell it apart: kind and exact value.
std::string ExactId(const JsonValue& id) {
  if (id.kind_case() == JsonValue::kStringValue) return "s" + id.string_value();
  return absl::StrCat("n", static_cast<int64_t>(id.number_value()));
}

// The line must be one JSON object whose "id" (if `id` is given) reads back
// unchanged; returns the parsed object.
JsonObject CheckLine(const JsonLine& line, const JsonValue* id) {
  const std::string text = line.ToString();
  absl::StatusOr<JsonObject> parsed = ParseJsonObject(text);
  FUZZ_CHECK(parsed.ok(),
             absl::StrCat("output line is not JSON: ", parsed.status().ToString(), "\n", text));
  if (id != nullptr) {
    const JsonValue* out_id = FindField(*parsed, "id");
    FUZZ_CHECK(
        out_id != nullptr && google::protobuf::util::MessageDifferencer::Equals(*out_id, *id),
        absl::StrCat("id does not survive the output line: ", text));
  }
  return *parsed;
}

// One parser's view of the file: ids seen so far, by IdKey.
struct Seen {
  std::map<std::string, std::string> exact_by_key;  // IdKey → ExactId

  // True if `id` repeats an earlier one; checks IdKey is exact.
  bool Duplicate(const JsonValue& id) {
    const auto [it, inserted] = exact_by_key.emplace(IdKey(id), ExactId(id));
    FUZZ_CHECK(inserted || it->second == ExactId(id),
               absl::StrCat("ids ", it->second, " and ", ExactId(id), " share IdKey ", it->first));
    return !inserted;
  }
};

void CheckError(const JsonObject* object, int64_t line_number, const absl::Status& status) {
  FUZZ_CHECK(!status.message().empty(), "error without a message");
  const JsonValue* raw_id = object != nullptr ? FindField(*object, "id") : nullptr;
  JsonLine line = ErrorLine(raw_id, absl::StrCat("line ", line_number, ": ", status.message()));
  line.Set("finish_reason", StringValue("error"));
  const JsonObject out = CheckLine(line, raw_id);
  FUZZ_CHECK(FindField(out, "error") != nullptr, "error line without \"error\"");
}

void Score(const JsonObject& object, const ModelDims& dims, int64_t line_number, Seen& seen) {
  absl::StatusOr<ScoreRequest> r = ParseScoreRequest(object, dims);
  if (r.ok() && seen.Duplicate(r->id)) r = absl::InvalidArgumentError("duplicate id");
  if (!r.ok()) return CheckError(&object, line_number, r.status());
  FUZZ_CHECK(!r->tokens.empty(), "empty score request accepted");
  FUZZ_CHECK(static_cast<int64_t>(r->tokens.size()) <= dims.max_positions,
             absl::StrCat(r->tokens.size(), " tokens accepted"));
  for (int32_t t : r->tokens) FUZZ_CHECK(InVocab(t, dims), absl::StrCat("token ", t));
  CheckLine(JsonLine().Set("id", r->id).Set("logprobs", NumberList({})), &r->id);
}

void Decode(const JsonObject& object, const ModelDims& dims, int64_t line_number, Seen& seen) {
  absl::StatusOr<DecodeRequest> r =
      ParseDecodeRequest(object, dims, kDefaultMaxNewTokens, SamplingParams());
  if (r.ok() && seen.Duplicate(r->id)) r = absl::InvalidArgumentError("duplicate id");
  if (!r.ok()) return CheckError(&object, line_number, r.status());
  FUZZ_CHECK(!r->prompt.empty(), "empty prompt accepted");
  FUZZ_CHECK(static_cast<int64_t>(r->prompt.size()) < dims.max_positions,
             absl::StrCat(r->prompt.size(), "-token prompt accepted"));
  for (int32_t t : r->prompt) FUZZ_CHECK(InVocab(t, dims), absl::StrCat("prompt token ", t));
  FUZZ_CHECK(r->max_new_tokens >= 1, absl::StrCat("max_new_tokens ", r->max_new_tokens));
  const SamplingParams& s = r->sampling;
  FUZZ_CHECK(std::isfinite(s.temperature) && s.temperature >= 0,
             absl::StrCat("temperature ", s.temperature));
  FUZZ_CHECK(s.top_k >= 0, absl::StrCat("top_k ", s.top_k));
  FUZZ_CHECK(s.top_p > 0 && s.top_p <= 1, absl::StrCat("top_p ", s.top_p));
  for (int32_t t : r->stop_ids) FUZZ_CHECK(InVocab(t, dims), absl::StrCat("stop id ", t));
  for (int64_t eos : dims.eos_token_ids) {
    FUZZ_CHECK(r->stop_ids.count(static_cast<int32_t>(eos)) == 1, "EOS is not a stop id");
  }
  CheckLine(JsonLine().Set("id", r->id).Set("finish_reason", StringValue("length")), &r->id);
}

}  // namespace
}  // namespace shardlm

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;  // NOLINT(build/namespaces): a C entry point
  static const ModelDims* const kModels[] = {new ModelDims(BytesModel()),
                                             new ModelDims(TokensModel())};
  Seen seen[2][2];  // [model][score, decode]
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  int64_t line_number = 0;
  for (size_t begin = 0; begin < input.size();) {
    size_t end = input.find('\n', begin);
    if (end == std::string_view::npos) end = input.size();
    const std::string line(input.substr(begin, end - begin));
    begin = end + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // as the engine does
    const absl::StatusOr<JsonObject> object = ParseJsonObject(line);
    if (!object.ok()) {
      CheckError(nullptr, line_number, object.status());
      continue;
    }
    for (int m = 0; m < 2; ++m) {
      Score(*object, *kModels[m], line_number, seen[m][0]);
      Decode(*object, *kModels[m], line_number, seen[m][1]);
    }
  }
  return 0;
}
