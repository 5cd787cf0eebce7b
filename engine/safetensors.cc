#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/half.h"
#include "base/status.h"
#include "base/text.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace shardlm {

// Safetensors data is little-endian; values are read and written with memcpy
// in host order, so a big-endian port would need byte swaps here.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

namespace {

constexpr int64_t kLengthFieldBytes = 8;
// Same limit as the reference implementation. protobuf's Struct takes ~20× the
// JSON size in memory, so this also bounds the transient cost of parsing.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A safetensors header nests 3 deep (object → entry → shape); protobuf's JSON
// parser is quadratic in array nesting depth (minutes for a few MB of '['), so
// deeper input is rejected before it reaches the parser.
constexpr int kMaxJsonDepth = 16;
// JSON numbers arrive as doubles; below 2^53 every integer is exact.
constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
// Elements converted per write call, bounding the staging buffer.
constexpr int64_t kWriteChunk = 1 << 16;

// Debian's abseil has its own string_view type, distinct from std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status FileError(std::string_view path, absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(Sv(path), ": ", msg));
}

absl::Status TensorError(std::string_view path, std::string_view name, absl::string_view msg) {
  return absl::InvalidArgumentError(
      absl::StrCat(Sv(path), ": tensor \"", Printable(name), "\": ", msg));
}

// Checks that `json` starts with '{' and nests at most kMaxJsonDepth deep.
absl::Status CheckJsonOutline(std::string_view json, std::string_view path) {
  const size_t first = json.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos || json[first] != '{') {
    return FileError(path, "header is not a JSON object");
  }
  if (absl::Status nesting = CheckJsonNesting(json.substr(first), kMaxJsonDepth); !nesting.ok()) {
    return FileError(path, absl::StrCat("header is not valid JSON: ", nesting.message(),
                                        "; not a safetensors header"));
  }
  return absl::OkStatus();
}

// A non-negative integer below 2^53 (NaN fails every comparison).
bool IsExactIndex(const google::protobuf::Value& v) {
  if (v.kind_case() != google::protobuf::Value::kNumberValue) return false;
  const double x = v.number_value();
  return x >= 0 && x < kMaxExactInteger && std::floor(x) == x;
}

std::string ValueString(const google::protobuf::Value& v) {
  if (v.kind_case() == google::protobuf::Value::kNumberValue) return absl::StrCat(v.number_value());
  return "a non-number";
}

// Converts n elements of `dtype` at `src` (any alignment) to f32.
void ConvertToF32(const uint8_t* src, DType dtype, int64_t n, float* out) {
  if (n == 0) return;
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, sizeof(h));
        out[i] = Bf16ToF32(h);
      }
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, sizeof(h));
        out[i] = F16ToF32(h);
      }
      return;
    case DType::kI8:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int8_t>(src[i]);
      return;
    case DType::kU8:
      for (int64_t i = 0; i < n; ++i) out[i] = src[i];
      return;
    case DType::kQ8_0:
    case DType::kQ4_0:
      break;  // never a file's element type (ParseDType)
  }
}

// JSON string literal for a tensor name (control characters as \u00XX).
std::string JsonQuote(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&out, "\\u00", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

}  // namespace

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  // O_NONBLOCK: a FIFO named *.safetensors must fail below, not block in open().
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return FileError(path, S_ISDIR(st.st_mode) ? "is a directory, not a safetensors file"
                                               : "is not a regular file");
  }
  if (st.st_size == 0) {
    close(fd);
    return FileError(path, "file is empty (0 bytes), not a safetensors file");
  }
  // The mapping outlives the descriptor. A file truncated by someone else while
  // mapped faults on access (SIGBUS); checkpoints must not change while loaded.
  void* mapping = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  close(fd);
  if (mapping == MAP_FAILED) return absl::ErrnoToStatus(err, absl::StrCat("cannot mmap ", path));

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile);
  file->path_ = path;
  file->mapping_ = mapping;
  file->data_ = static_cast<const uint8_t*>(mapping);
  file->size_ = st.st_size;
  RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(
    std::string_view bytes, const std::string& name) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile);
  file->path_ = name;
  file->data_ = reinterpret_cast<const uint8_t*>(bytes.data());
  file->size_ = static_cast<int64_t>(bytes.size());
  RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, static_cast<size_t>(size_));
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::ParseHeader() {
  // Framing: [u64 little-endian N][N bytes of JSON][data section].
  if (size_ < kLengthFieldBytes) {
    return FileError(path_, absl::StrCat("file is ", size_,
                                         " bytes, shorter than the 8-byte header length field"));
  }
  uint64_t header_len = 0;
  for (int i = kLengthFieldBytes - 1; i >= 0; --i) header_len = (header_len << 8) | data_[i];
  const uint64_t after_length = static_cast<uint64_t>(size_ - kLengthFieldBytes);
  if (header_len > static_cast<uint64_t>(INT64_MAX)) {
    return FileError(path_, absl::StrCat("header length ", static_cast<int64_t>(header_len),
                                         " is negative; not a safetensors file"));
  }
  if (header_len == 0) return FileError(path_, "header length is 0; not a safetensors file");
  if (header_len > kMaxHeaderBytes) {
    return FileError(path_, absl::StrCat("header length ", header_len, " exceeds the limit of ",
                                         kMaxHeaderBytes, " bytes; not a safetensors file"));
  }
  if (header_len > after_length) {
    return FileError(path_,
                     absl::StrCat("header length ", header_len, " exceeds the ", after_length,
                                  " bytes after the length field (truncated?)"));
  }
  const int64_t data_begin = kLengthFieldBytes + static_cast<int64_t>(header_len);
  const int64_t data_size = size_ - data_begin;
  const std::string_view json(reinterpret_cast<const char*>(data_ + kLengthFieldBytes),
                              static_cast<size_t>(header_len));

  RETURN_IF_ERROR(CheckJsonOutline(json, path_));
  google::protobuf::Struct header;
  const auto parsed = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &header);
  if (!parsed.ok()) {
    const auto msg = parsed.message();
    return FileError(path_, absl::StrCat("header is not valid JSON: ",
                                         Printable(std::string_view(msg.data(), msg.size()), 200)));
  }

  tensors_.clear();
  tensors_.reserve(static_cast<size_t>(header.fields_size()));
  for (const auto& [name, value] : header.fields()) {
    if (name == "__metadata__") continue;
    if (value.kind_case() != google::protobuf::Value::kStructValue) {
      return TensorError(path_, name, "entry is not a JSON object");
    }
    const auto& fields = value.struct_value().fields();
    TensorInfo info;
    info.name = name;

    const auto dtype_it = fields.find("dtype");
    if (dtype_it == fields.end()) return TensorError(path_, name, "missing \"dtype\"");
    if (dtype_it->second.kind_case() != google::protobuf::Value::kStringValue) {
      return TensorError(path_, name, "\"dtype\" is not a string");
    }
    const auto dtype = ParseDType(dtype_it->second.string_value());
    if (!dtype.ok()) return TensorError(path_, name, dtype.status().message());
    info.dtype = *dtype;

    const auto shape_it = fields.find("shape");
    if (shape_it == fields.end()) return TensorError(path_, name, "missing \"shape\"");
    if (shape_it->second.kind_case() != google::protobuf::Value::kListValue) {
      return TensorError(path_, name, "\"shape\" is not an array");
    }
    for (const auto& dim : shape_it->second.list_value().values()) {
      if (!IsExactIndex(dim)) {
        return TensorError(path_, name,
                           absl::StrCat("shape[", info.shape.size(), "] is ", ValueString(dim),
                                        ", not a non-negative integer below 2^53"));
      }
      info.shape.push_back(static_cast<int64_t>(dim.number_value()));
    }
    // Multiplying from the last dimension checks every suffix product, so the
    // column count of ReadF32's 2-D view fits in int64 even when shape[0] is 0.
    info.bytes = DTypeBytes(info.dtype);
    for (auto d = info.shape.rbegin(); d != info.shape.rend(); ++d) {
      if (__builtin_mul_overflow(info.bytes, *d, &info.bytes)) {
        return TensorError(path_, name,
                           absl::StrCat("shape ", ShapeString(info.shape),
                                        " has too many elements (int64 overflow)"));
      }
    }

    const auto offsets_it = fields.find("data_offsets");
    if (offsets_it == fields.end()) return TensorError(path_, name, "missing \"data_offsets\"");
    const auto& offsets = offsets_it->second;
    if (offsets.kind_case() != google::protobuf::Value::kListValue ||
        offsets.list_value().values_size() != 2 || !IsExactIndex(offsets.list_value().values(0)) ||
        !IsExactIndex(offsets.list_value().values(1))) {
      return TensorError(path_, name,
                         "\"data_offsets\" is not [begin, end] with non-negative integers");
    }
    const auto begin = static_cast<int64_t>(offsets.list_value().values(0).number_value());
    const auto end = static_cast<int64_t>(offsets.list_value().values(1).number_value());
    if (begin > end) {
      return TensorError(path_, name,
                         absl::StrCat("data_offsets [", begin, ", ", end, "] has begin > end"));
    }
    if (end > data_size) {
      return TensorError(path_, name,
                         absl::StrCat("data_offsets end ", end, " is beyond the ", data_size,
                                      "-byte data section (truncated file?)"));
    }
    if (end - begin != info.bytes) {
      return TensorError(path_, name,
                         absl::StrCat("data_offsets [", begin, ", ", end, "] hold ", end - begin,
                                      " bytes but ", DTypeName(info.dtype), " ",
                                      ShapeString(info.shape), " needs ", info.bytes, " bytes"));
    }
    info.offset = data_begin + begin;
    tensors_.push_back(std::move(info));
  }

  // File order; ties (empty tensors) by name so the order is deterministic.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.offset, a.name) < std::tie(b.offset, b.name);
  });
  // Empty ranges cannot overlap anything; among the rest, sorted by start, each
  // must begin at or after the end of the previous one.
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : tensors_) {
    if (t.bytes == 0) continue;
    if (previous != nullptr && t.offset < previous->offset + previous->bytes) {
      return TensorError(path_, t.name,
                         absl::StrCat("data overlaps tensor \"", Printable(previous->name), "\""));
    }
    previous = &t;
  }
  index_.clear();
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return absl::OkStatus();
}

absl::Status SafetensorsFile::ReadF32(const TensorInfo& tensor, int64_t row_begin, int64_t row_end,
                                      int64_t col_begin, int64_t col_end, float* out) const {
  return ReadBlock(tensor, row_begin, row_end, col_begin, col_end, /*to_f32=*/true, out);
}

absl::Status SafetensorsFile::ReadBits16(const TensorInfo& tensor, int64_t row_begin,
                                         int64_t row_end, int64_t col_begin, int64_t col_end,
                                         uint16_t* out) const {
  if (DTypeBytes(tensor.dtype) != 2) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", Printable(tensor.name),
                                                   "\" is ", DTypeName(tensor.dtype),
                                                   ", not a 16-bit type"));
  }
  return ReadBlock(tensor, row_begin, row_end, col_begin, col_end, /*to_f32=*/false, out);
}

absl::Status SafetensorsFile::ReadStored(const TensorInfo& tensor, int64_t row_begin,
                                         int64_t row_end, int64_t col_begin, int64_t col_end,
                                         void* out) const {
  return ReadBlock(tensor, row_begin, row_end, col_begin, col_end, /*to_f32=*/false, out);
}

absl::Status SafetensorsFile::ReadBlock(const TensorInfo& tensor, int64_t row_begin,
                                        int64_t row_end, int64_t col_begin, int64_t col_end,
                                        bool to_f32, void* out) const {
  // `tensor` may be a copy; its offset and size are trusted only if they match
  // this file's own entry, which the header validation covered.
  const TensorInfo* own = Find(tensor.name);
  if (own == nullptr || own->offset != tensor.offset || own->bytes != tensor.bytes ||
      own->dtype != tensor.dtype || own->shape != tensor.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", Printable(tensor.name), "\" is not a tensor of ", path_));
  }
  // 2-D view [rows, cols]: [shape[0], rest] for rank ≥ 2, [1, n] for 1-D, [1, 1]
  // for scalars. The header check bounded every suffix product of the shape.
  int64_t rows = 1, view_cols = 1;
  for (size_t i = 0; i < own->shape.size(); ++i) {
    if (i == 0 && own->shape.size() >= 2) {
      rows = own->shape[0];
    } else {
      view_cols *= own->shape[i];
    }
  }
  if (row_begin < 0 || row_begin > row_end || row_end > rows || col_begin < 0 ||
      col_begin > col_end || col_end > view_cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor \"", Printable(tensor.name), "\": block rows [", row_begin,
                     ", ", row_end, ") × cols [", col_begin, ", ", col_end,
                     ") is outside its 2-D view [", rows, ", ", view_cols, "]"));
  }
  const int64_t block_rows = row_end - row_begin, block_cols = col_end - col_begin;
  if (block_rows == 0 || block_cols == 0) return absl::OkStatus();
  if (out == nullptr) return absl::InvalidArgumentError("ReadF32: out is null");
  const int64_t esize = DTypeBytes(own->dtype);
  const uint8_t* base = data_ + own->offset;
  // `count` elements from `src` to element `offset` of out.
  auto copy = [&](const uint8_t* src, int64_t count, int64_t offset) {
    if (to_f32) {
      ConvertToF32(src, own->dtype, count, static_cast<float*>(out) + offset);
    } else {
      std::memcpy(static_cast<uint8_t*>(out) + offset * esize, src,
                  static_cast<size_t>(count * esize));
    }
  };
  if (block_cols == view_cols) {
    // Full rows are one contiguous run of bytes.
    copy(base + row_begin * view_cols * esize, block_rows * view_cols, 0);
    return absl::OkStatus();
  }
  for (int64_t r = 0; r < block_rows; ++r) {
    copy(base + ((row_begin + r) * view_cols + col_begin) * esize, block_cols, r * block_cols);
  }
  return absl::OkStatus();
}

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";

// The index of a sharded checkpoint: {"metadata": …, "weight_map": {tensor: file}}. Returns
// the map; files must be plain names in the directory.
absl::StatusOr<std::map<std::string, std::string, std::less<>>> ReadIndex(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  RETURN_IF_ERROR(CheckJsonNesting(text.str(), 16));
  google::protobuf::Struct root;
  if (!google::protobuf::util::JsonStringToMessage(text.str(), &root).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a valid JSON object"));
  }
  const auto it = root.fields().find("weight_map");
  if (it == root.fields().end() ||
      it->second.kind_case() != google::protobuf::Value::kStructValue) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"weight_map\" object"));
  }
  std::map<std::string, std::string, std::less<>> map;
  for (const auto& [tensor, file] : it->second.struct_value().fields()) {
    const std::string& name = file.string_value();
    if (file.kind_case() != google::protobuf::Value::kStringValue || name.empty() ||
        name.find('/') != std::string::npos || name == "." || name == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", Printable(tensor), "\" maps to a bad file name"));
    }
    map.emplace(tensor, name);
  }
  if (map.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty weight_map"));
  return map;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsDir>> SafetensorsDir::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> paths;
  // A sharded checkpoint as published: its index names the files (other *.safetensors in the
  // directory, such as a consolidated copy, are not part of it) and the file of every tensor.
  const std::string index_path = dir + "/" + kIndexName;
  std::map<std::string, std::string, std::less<>> index;
  if (fs::exists(index_path, ec)) {
    ASSIGN_OR_RETURN(index, ReadIndex(index_path));
    std::set<std::string> files;
    for (const auto& [tensor, file] : index) files.insert(file);
    for (const std::string& file : files) paths.push_back(dir + "/" + file);
  } else {
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      // Non-regular entries with the suffix are kept so that Open names them.
      if (it->path().extension() == ".safetensors") paths.push_back(it->path().string());
    }
    if (ec) {
      return absl::Status(
          ec == std::errc::no_such_file_or_directory ? absl::StatusCode::kNotFound
                                                     : absl::StatusCode::kInvalidArgument,
          absl::StrCat("cannot list checkpoint directory ", dir, ": ", ec.message()));
    }
  }
  if (paths.empty()) return absl::NotFoundError(absl::StrCat("no *.safetensors file in ", dir));
  std::sort(paths.begin(), paths.end());

  auto result = std::unique_ptr<SafetensorsDir>(new SafetensorsDir);
  result->dir_ = dir;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    const size_t file_index = result->files_.size();
    const std::string file_name = fs::path(path).filename().string();
    for (const TensorInfo& t : file->tensors()) {
      if (!index.empty()) {
        const auto listed = index.find(t.name);
        if (listed == index.end() || listed->second != file_name) {
          return absl::InvalidArgumentError(absl::StrCat(
              index_path, ": tensor \"", Printable(t.name), "\" is in ", file_name, " but ",
              listed == index.end() ? "not in the index" : "the index says " + listed->second));
        }
      }
      const auto [it, inserted] =
          result->tensors_.try_emplace(t.name, std::make_pair(file_index, &t));
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", Printable(t.name), "\" appears in both ",
                         result->files_[it->second.first]->path(), " and ", path));
      }
      result->used_.emplace(t.name, false);
    }
    result->files_.push_back(std::move(file));
  }
  for (const auto& [tensor, file] : index) {
    if (!result->tensors_.contains(tensor)) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor \"", Printable(tensor), "\" is not in ", file));
    }
  }
  return result;
}

bool SafetensorsDir::Has(std::string_view name) const { return tensors_.contains(name); }

absl::StatusOr<std::vector<int64_t>> SafetensorsDir::Shape(std::string_view name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("missing tensor ", Sv(name), " in ", dir_));
  }
  return it->second.second->shape;
}

absl::StatusOr<std::pair<size_t, const TensorInfo*>> SafetensorsDir::Lookup(
    std::string_view name, std::span<const int64_t> expected_shape) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("missing tensor ", Sv(name), " in ", dir_));
  }
  const TensorInfo* tensor = it->second.second;
  if (!std::equal(tensor->shape.begin(), tensor->shape.end(), expected_shape.begin(),
                  expected_shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Sv(name), " in ", dir_, " has shape ",
                                                   ShapeString(tensor->shape), ", expected ",
                                                   ShapeString(expected_shape)));
  }
  return it->second;
}

absl::Status SafetensorsDir::Read(std::string_view name, std::span<const int64_t> expected_shape,
                                  int64_t row_begin, int64_t row_end, int64_t col_begin,
                                  int64_t col_end, float* out) {
  ASSIGN_OR_RETURN(const auto where, Lookup(name, expected_shape));
  RETURN_IF_ERROR(
      files_[where.first]->ReadF32(*where.second, row_begin, row_end, col_begin, col_end, out));
  MarkUsed(name);
  return absl::OkStatus();
}

absl::StatusOr<DType> SafetensorsDir::StoredDType(std::string_view name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("missing tensor ", Sv(name), " in ", dir_));
  }
  return it->second.second->dtype;
}

absl::Status SafetensorsDir::ReadStored(std::string_view name,
                                        std::span<const int64_t> expected_shape, int64_t row_begin,
                                        int64_t row_end, int64_t col_begin, int64_t col_end,
                                        void* out) {
  ASSIGN_OR_RETURN(const auto where, Lookup(name, expected_shape));
  RETURN_IF_ERROR(
      files_[where.first]->ReadStored(*where.second, row_begin, row_end, col_begin, col_end, out));
  MarkUsed(name);
  return absl::OkStatus();
}

absl::Status SafetensorsDir::ReadBits16(std::string_view name,
                                        std::span<const int64_t> expected_shape, int64_t row_begin,
                                        int64_t row_end, int64_t col_begin, int64_t col_end,
                                        uint16_t* out) {
  ASSIGN_OR_RETURN(const auto where, Lookup(name, expected_shape));
  RETURN_IF_ERROR(
      files_[where.first]->ReadBits16(*where.second, row_begin, row_end, col_begin, col_end, out));
  MarkUsed(name);
  return absl::OkStatus();
}

void SafetensorsDir::MarkUsed(std::string_view name) {
  // Unknown names are ignored: there is nothing to report as unused for them.
  const auto it = used_.find(name);
  if (it != used_.end()) it->second = true;
}

std::vector<std::string> SafetensorsDir::Unused() const {
  std::vector<std::string> unused;
  for (const auto& [name, used] : used_) {
    if (!used) unused.push_back(name);
  }
  return unused;
}

std::vector<std::string> SafetensorsDir::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, where] : tensors_) names.push_back(name);
  return names;
}

int64_t SafetensorsDir::Parameters() const {
  int64_t total = 0;
  for (const auto& [name, where] : tensors_) {
    if (absl::EndsWith(name, ".weight_scale")) continue;
    const TensorInfo& t = *where.second;
    total += t.dtype == DType::kU8 ? 2 * t.NumElements() : t.NumElements();
  }
  return total;
}

int64_t SafetensorsDir::TotalElements() const {
  int64_t total = 0;
  for (const auto& [name, where] : tensors_) total += where.second->NumElements();
  return total;
}

absl::Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors) {
  // Header: {"__metadata__":{"format":"pt"}, name: {"dtype","shape","data_offsets"}, ...}
  // ("format" keeps Hugging Face loaders happy), padded with spaces to 8-byte alignment.
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::set<std::string_view> names;
  int64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    auto error = [&](absl::string_view msg) {
      return absl::InvalidArgumentError(
          absl::StrCat("writing ", path, ": tensor \"", Printable(t.name), "\": ", msg));
    };
    if (t.name == "__metadata__") return error("name is reserved by the format");
    // The JSON parser rejects non-UTF-8 headers, so the writer must not emit them.
    if (!IsValidUtf8(t.name)) return error("name is not valid UTF-8");
    if (!names.insert(t.name).second) return error("name appears twice");
    // Same suffix-product rule as the reader, so every written shape reads back.
    int64_t elements = 1;
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) {
      if (*d < 0 || __builtin_mul_overflow(elements, *d, &elements)) {
        return error(absl::StrCat("invalid shape ", ShapeString(t.shape)));
      }
    }
    if (!t.raw.empty() || t.dtype == DType::kI8 || t.dtype == DType::kU8) {
      if (!t.values.empty() || IsBlockQuantized(t.dtype) ||
          elements * DTypeBytes(t.dtype) != static_cast<int64_t>(t.raw.size())) {
        return error(absl::StrCat("shape ", ShapeString(t.shape), " of ", DTypeName(t.dtype),
                                  " needs ", elements, " elements as raw bytes only, not ",
                                  t.raw.size(), " bytes and ", t.values.size(), " values"));
      }
    } else if (IsBlockQuantized(t.dtype)) {
      return error(absl::StrCat(DTypeName(t.dtype), " is not a file element type"));
    } else if (elements != static_cast<int64_t>(t.values.size())) {
      return error(absl::StrCat("shape ", ShapeString(t.shape), " has ", elements, " elements but ",
                                t.values.size(), " values were given"));
    }
    const int64_t bytes = elements * DTypeBytes(t.dtype);
    absl::StrAppend(&header, ",", JsonQuote(t.name), ":{\"dtype\":\"", DTypeName(t.dtype),
                    "\",\"shape\":[", absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", offset,
                    ",", offset + bytes, "]}");
    offset += bytes;
  }
  header += '}';
  while ((kLengthFieldBytes + header.size()) % 8 != 0) header += ' ';

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  // Returns false (errno set) on a short write.
  auto write = [f](const void* p, size_t n) { return n == 0 || std::fwrite(p, 1, n, f) == n; };
  bool ok = true;
  uint8_t length[kLengthFieldBytes];
  for (int i = 0; i < kLengthFieldBytes; ++i) length[i] = (header.size() >> (8 * i)) & 0xff;
  ok = ok && write(length, sizeof(length)) && write(header.data(), header.size());
  std::vector<uint16_t> staging;
  for (const TensorToWrite& t : tensors) {
    if (!ok) break;
    if (!t.raw.empty()) {
      ok = write(t.raw.data(), t.raw.size());
      continue;
    }
    if (t.dtype == DType::kF32) {
      ok = write(t.values.data(), t.values.size() * sizeof(float));
      continue;
    }
    const int64_t n = static_cast<int64_t>(t.values.size());
    for (int64_t begin = 0; ok && begin < n; begin += kWriteChunk) {
      const int64_t count = std::min(kWriteChunk, n - begin);
      staging.resize(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) {
        const float x = t.values[begin + i];
        staging[i] = t.dtype == DType::kBF16 ? F32ToBf16(x) : F32ToF16(x);
      }
      ok = write(staging.data(), staging.size() * sizeof(uint16_t));
    }
  }
  const int write_errno = errno;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    const int err = !ok ? write_errno : errno;
    std::remove(path.c_str());  // a partial file would fail to parse later, far from the cause
    return absl::ErrnoToStatus(err != 0 ? err : EIO, absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

}  // namespace shardlm
