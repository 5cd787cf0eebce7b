// JSON Lines helpers for requests and results: one JSON object per line,
// parsed with protobuf's JSON parser into a Struct, typed field access with
// errors that name the field.
#ifndef SHARDLM_ENGINE_JSONL_H_
#define SHARDLM_ENGINE_JSONL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/struct.pb.h"

namespace shardlm {

using JsonObject = google::protobuf::Struct;
using JsonValue = google::protobuf::Value;

// protobuf's JSON parser takes time quadratic in nesting depth (a line of a few
// thousand '[' takes seconds, a 1 MB one hours), so every parser of untrusted
// JSON calls this first. Real requests nest 2 deep and HF configs about 4.
constexpr int kMaxJsonDepth = 32;
absl::Status CheckJsonDepth(std::string_view json, int max_depth = kMaxJsonDepth);

// Checks the depth, then parses.
absl::StatusOr<JsonObject> ParseJsonObject(const std::string& line);


// Fails if the object has a key outside `allowed` (names the key).
absl::Status CheckKnownFields(const JsonObject& object, const std::vector<std::string>& allowed);
const JsonValue* FindField(const JsonObject& object, const std::string& key);
// Integral number in int64 range (doubles beyond 2^53 are rejected).
absl::StatusOr<int64_t> GetInt(const JsonValue& value, const std::string& key);
absl::StatusOr<double> GetNumber(const JsonValue& value, const std::string& key);
absl::StatusOr<std::string> GetString(const JsonValue& value, const std::string& key);
absl::StatusOr<std::vector<int64_t>> GetIntList(const JsonValue& value, const std::string& key);
// A request id: a string or an integer; returned as the canonical JSON value.
absl::StatusOr<JsonValue> GetId(const JsonValue& value);

// One output line: keys stay in the order they were set (readable results).
class JsonLine {
 public:
  JsonLine& Set(const std::string& key, JsonValue value);
  std::string ToString() const;  // one line of compact JSON, no newline

 private:
  std::vector<std::pair<std::string, JsonValue>> fields_;
};

JsonValue NumberValue(double v);
JsonValue StringValue(const std::string& v);
JsonValue NumberList(const std::vector<double>& values);
JsonValue IntList(const std::vector<int32_t>& values);

// Writes a results file line by line; each line goes out in one write(2) call
// straight to the file (no user-space buffer), so a job that is killed leaves
// only complete lines. Each write is an ExitSection (base/exit_guard.h), and
// while the writer is open the stop note says how many lines the file holds.
class JsonlWriter {
 public:
  static absl::StatusOr<std::unique_ptr<JsonlWriter>> Open(const std::string& path);
  ~JsonlWriter();
  absl::Status Write(const JsonLine& line);
  int64_t lines() const { return lines_.load(); }

 private:
  JsonlWriter(int fd, std::string path);
  int fd_;
  std::string path_;
  std::atomic<int64_t> lines_{0};
};

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_JSONL_H_
