// Request fields shared by `score` and `decode` (DESIGN §6).
#ifndef SHARDLM_COORDINATOR_REQUESTS_H_
#define SHARDLM_COORDINATOR_REQUESTS_H_

#include <cstdint>
#include <fstream>
#include <functional>
#include <istream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "coordinator/sampler.h"
#include "engine/jsonl.h"
#include "shard/dims.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {

// The request's tokens: "tokens" used exactly as given, or "prompt"/"text"
// tokenized (byte tokenizer) with bos_token_id in front. Exactly one of them;
// non-empty; every id inside the vocabulary.
// `tokenizer` (rank 0's, from the model directory) encodes text with the special tokens its
// files add (BOS, …); without one, a model with "tokenizer": "bytes" uses the byte codec.
absl::StatusOr<std::vector<int32_t>> RequestTokens(const JsonObject& request, const ModelDims& dims,
                                                   const Tokenizer* tokenizer = nullptr);

// Distinct keys for string ids and integer ids ("7" and 7 are different ids).
std::string IdKey(const JsonValue& id);

// {"id", "error": message}; the id is omitted when the line had none.
JsonLine ErrorLine(const JsonValue* id, const std::string& message);

// A validated `score` line: {"id", "tokens" | "text" | "prompt"}.
struct ScoreRequest {
  JsonValue id;
  std::vector<int32_t> tokens;
};
absl::StatusOr<ScoreRequest> ParseScoreRequest(const JsonObject& object, const ModelDims& dims,
                                               const Tokenizer* tokenizer = nullptr);

// A validated `decode` line; fields it omits take the job's defaults.
struct DecodeRequest {
  JsonValue id;
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 0;
  SamplingParams sampling;
  std::set<int32_t> stop_ids;     // EOS ids and the request's stop_token_ids
  std::vector<std::string> stop;  // "stop": strings that end generation, matched on the text
};
absl::StatusOr<DecodeRequest> ParseDecodeRequest(const JsonObject& object, const ModelDims& dims,
                                                 int64_t default_max_new_tokens,
                                                 const SamplingParams& default_sampling,
                                                 const Tokenizer* tokenizer = nullptr);

// Rank 0's two files for `decode` and `score`: opens the requests for reading
// and creates (truncates) the results file. Errors name the file.
absl::Status OpenRequestFiles(const std::string& input_path, const std::string& output_path,
                              std::ifstream* input, std::unique_ptr<JsonlWriter>* writer);

// Reads a requests file one line at a time for `decode` and `score`: skips blank
// lines, parses each line as a JSON object, checks it with `parse`, rejects a
// repeated id, and writes an error line {"id"?, "error": "line N: …"} (plus
// "finish_reason": `error_finish_reason` when that is set) for every bad line.
// `Request` has an `id` member (a JsonValue from GetId).
template <typename Request>
class RequestReader {
 public:
  using Parser = std::function<absl::StatusOr<Request>(const JsonObject&)>;

  RequestReader(std::istream& input, std::string input_name, JsonlWriter* writer, Parser parse,
                const char* error_finish_reason = nullptr)
      : input_(input),
        input_name_(std::move(input_name)),
        writer_(writer),
        parse_(std::move(parse)),
        error_finish_reason_(error_finish_reason) {}

  // The next valid request, or nullopt at the end of the input. Errors: the
  // input cannot be read, or an error line cannot be written.
  absl::StatusOr<std::optional<Request>> Next() {
    std::string line;
    while (std::getline(input_, line)) {
      ++line_number_;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      absl::StatusOr<JsonObject> object = ParseJsonObject(line);
      absl::StatusOr<Request> request = object.ok() ? parse_(*object) : object.status();
      if (request.ok() && !seen_ids_.insert(IdKey(request->id)).second) {
        request = absl::InvalidArgumentError("duplicate id");
      }
      if (request.ok()) return std::optional<Request>(std::move(*request));
      JsonLine error =
          ErrorLine(object.ok() ? FindField(*object, "id") : nullptr,
                    absl::StrCat("line ", line_number_, ": ", request.status().message()));
      if (error_finish_reason_ != nullptr) {
        error.Set("finish_reason", StringValue(error_finish_reason_));
      }
      ++errors_;
      if (absl::Status written = writer_->Write(error); !written.ok()) return written;
    }
    if (input_.bad()) return absl::DataLossError(absl::StrCat("cannot read ", input_name_));
    return std::optional<Request>();
  }

  // Error lines written so far.
  int64_t errors() const { return errors_; }

 private:
  std::istream& input_;
  const std::string input_name_;
  JsonlWriter* writer_;
  Parser parse_;
  const char* error_finish_reason_;
  int64_t line_number_ = 0;
  int64_t errors_ = 0;
  std::set<std::string> seen_ids_;
};

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_REQUESTS_H_
