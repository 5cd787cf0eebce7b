#include "engine/jsonl.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "base/exit_guard.h"
#include "base/status.h"
#include "base/text.h"
#include "google/protobuf/util/json_util.h"

namespace shardlm {

absl::Status CheckJsonDepth(std::string_view json, int max_depth) {
  return CheckJsonNesting(json, max_depth);
}

absl::StatusOr<JsonObject> ParseJsonObject(const std::string& line) {
  if (absl::Status depth = CheckJsonDepth(line); !depth.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("not a JSON object: ", depth.message()));
  }
  JsonObject object;
  auto status = google::protobuf::util::JsonStringToMessage(line, &object);
  if (!status.ok()) {
    // The parser's message quotes the input, which may be invalid UTF-8; the
    // message goes into an error line that must stay valid JSON.
    return absl::InvalidArgumentError(absl::StrCat(
        "not a JSON object: ", ReplaceInvalidUtf8(std::string_view(status.message().data(),
                                                                   status.message().size()))));
  }
  return object;
}

absl::Status CheckKnownFields(const JsonObject& object, const std::vector<std::string>& allowed) {
  for (const auto& [key, value] : object.fields()) {
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown field \"", key, "\""));
    }
  }
  return absl::OkStatus();
}

const JsonValue* FindField(const JsonObject& object, const std::string& key) {
  auto it = object.fields().find(key);
  return it == object.fields().end() ? nullptr : &it->second;
}

absl::StatusOr<int64_t> GetInt(const JsonValue& value, const std::string& key) {
  if (value.kind_case() != JsonValue::kNumberValue) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be an integer"));
  }
  const double v = value.number_value();
  if (v != std::floor(v) || std::fabs(v) > 9.007199254740992e15) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be an integer, got ", v));
  }
  return static_cast<int64_t>(v);
}

absl::StatusOr<double> GetNumber(const JsonValue& value, const std::string& key) {
  if (value.kind_case() != JsonValue::kNumberValue) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a number"));
  }
  return value.number_value();
}

absl::StatusOr<std::string> GetString(const JsonValue& value, const std::string& key) {
  if (value.kind_case() != JsonValue::kStringValue) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a string"));
  }
  return value.string_value();
}

absl::StatusOr<std::vector<int64_t>> GetIntList(const JsonValue& value, const std::string& key) {
  if (value.kind_case() != JsonValue::kListValue) {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a list of integers"));
  }
  std::vector<int64_t> out;
  out.reserve(value.list_value().values_size());
  for (const JsonValue& v : value.list_value().values()) {
    auto i = GetInt(v, key);
    if (!i.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a list of integers"));
    }
    out.push_back(*i);
  }
  return out;
}

absl::StatusOr<JsonValue> GetId(const JsonValue& value) {
  if (value.kind_case() == JsonValue::kStringValue) return value;
  if (value.kind_case() == JsonValue::kNumberValue) {
    ASSIGN_OR_RETURN(int64_t id, GetInt(value, "id"));
    return NumberValue(static_cast<double>(id));
  }
  return absl::InvalidArgumentError("\"id\" must be a string or an integer");
}

JsonLine& JsonLine::Set(const std::string& key, JsonValue value) {
  for (auto& [k, v] : fields_) {
    if (k == key) {
      v = std::move(value);
      return *this;
    }
  }
  fields_.emplace_back(key, std::move(value));
  return *this;
}

std::string JsonLine::ToString() const {
  std::string out = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    std::string key, value;
    (void)google::protobuf::util::MessageToJsonString(StringValue(fields_[i].first), &key);
    (void)google::protobuf::util::MessageToJsonString(fields_[i].second, &value);
    absl::StrAppend(&out, i ? "," : "", key, ":", value);
  }
  return out + "}";
}

JsonValue NumberValue(double v) {
  JsonValue out;
  out.set_number_value(v);
  return out;
}

JsonValue StringValue(const std::string& v) {
  JsonValue out;
  out.set_string_value(v);
  return out;
}

JsonValue NumberList(const std::vector<double>& values) {
  JsonValue out;
  auto* list = out.mutable_list_value();
  for (double v : values) list->add_values()->set_number_value(v);
  return out;
}

JsonValue IntList(const std::vector<int32_t>& values) {
  JsonValue out;
  auto* list = out.mutable_list_value();
  for (int32_t v : values) list->add_values()->set_number_value(v);
  return out;
}

absl::StatusOr<std::unique_ptr<JsonlWriter>> JsonlWriter::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open output ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<JsonlWriter>(new JsonlWriter(fd, path));
}

JsonlWriter::JsonlWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {
  SetStopNote(this, [this] {
    const int64_t n = lines_.load();
    return absl::StrCat(n, n == 1 ? " finished result is" : " finished results are", " in ",
                        path_, ", each on a complete line");
  });
}

JsonlWriter::~JsonlWriter() {
  ClearStopNote(this);
  ::close(fd_);
}

absl::Status JsonlWriter::Write(const JsonLine& json) {
  const std::string line = json.ToString() + "\n";
  ExitSection section;
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(
          absl::StrCat("cannot write to ", path_, ": ", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  lines_.fetch_add(1);
  return absl::OkStatus();
}

}  // namespace shardlm
