// Safetensors checkpoints (DESIGN §6): an 8-byte little-endian header length N,
// N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end)}, and
// optional "__metadata__"}, then the data; offsets are relative to the byte after
// the header. Files are mapped read-only; each rank converts only its own slices.
// Every malformed input is an error naming the file (and tensor), never a crash.
#ifndef SHARDLM_ENGINE_SAFETENSORS_H_
#define SHARDLM_ENGINE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/dtype.h"

namespace shardlm {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // empty for a scalar
  int64_t offset = 0;          // absolute byte offset of the data in the file
  int64_t bytes = 0;
  int64_t NumElements() const;
};

// One mapped .safetensors file.
class SafetensorsFile {
 public:
  // Parses and validates the header: size bounds, JSON, dtypes, shapes,
  // offsets inside the file, byte counts matching shapes, no overlaps.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Same checks on an in-memory image (for tests and fuzzing); `bytes` must
  // outlive the returned object.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(std::string_view bytes,
                                                                    const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(std::string_view name) const;

  // Converts the sub-block rows [row_begin, row_end) × cols [col_begin, col_end)
  // of a tensor viewed as 2-D [shape[0], product of the rest] (1-D tensors are
  // [1, n]; scalars [1, 1]) to f32, row-major into `out` (size rows × cols).
  absl::Status ReadF32(const TensorInfo& tensor, int64_t row_begin, int64_t row_end,
                       int64_t col_begin, int64_t col_end, float* out) const;
  // The same block of a BF16 or F16 tensor as stored: 16-bit patterns, not converted (the
  // engine keeps 16-bit weights 16-bit). An error for F32 tensors.
  absl::Status ReadBits16(const TensorInfo& tensor, int64_t row_begin, int64_t row_end,
                          int64_t col_begin, int64_t col_end, uint16_t* out) const;
  // The same block of any tensor as stored (DTypeBytes(dtype) bytes per element).
  absl::Status ReadStored(const TensorInfo& tensor, int64_t row_begin, int64_t row_end,
                          int64_t col_begin, int64_t col_end, void* out) const;

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader();
  // Validates the block and copies it row-major into `out`: converted to f32 when `to_f32`,
  // else as stored.
  absl::Status ReadBlock(const TensorInfo& tensor, int64_t row_begin, int64_t row_end,
                         int64_t col_begin, int64_t col_end, bool to_f32, void* out) const;

  std::string path_;
  const uint8_t* data_ = nullptr;  // whole file
  int64_t size_ = 0;
  void* mapping_ = nullptr;        // non-null when mmapped (owned)
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

// All *.safetensors files of a checkpoint directory, as one name space.
class SafetensorsDir {
 public:
  // Fails if the directory has no .safetensors file, a file is malformed, or a
  // tensor name appears in two files.
  static absl::StatusOr<std::unique_ptr<SafetensorsDir>> Open(const std::string& dir);

  bool Has(std::string_view name) const;
  // The tensor's shape, or NotFound naming the tensor and the directory.
  absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const;
  // Checks the tensor's shape equals `expected` (clear message otherwise), then
  // reads rows × cols as SafetensorsFile::ReadF32 does, and marks it used.
  absl::Status Read(std::string_view name, std::span<const int64_t> expected_shape,
                    int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end,
                    float* out);
  // The tensor's stored dtype, or NotFound.
  absl::StatusOr<DType> StoredDType(std::string_view name) const;
  // As Read, for a BF16 or F16 tensor, copying its 16-bit patterns unconverted
  // (SafetensorsFile::ReadBits16).
  absl::Status ReadBits16(std::string_view name, std::span<const int64_t> expected_shape,
                          int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end,
                          uint16_t* out);
  // As Read, copying the elements as stored, whatever their dtype (SafetensorsFile::ReadStored).
  absl::Status ReadStored(std::string_view name, std::span<const int64_t> expected_shape,
                          int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end,
                          void* out);
  // Marks a tensor as consumed without reading (e.g. a slice another rank owns).
  void MarkUsed(std::string_view name);
  // Tensor names never passed to Read/MarkUsed, sorted (to report extra tensors).
  std::vector<std::string> Unused() const;
  // Every tensor name, sorted.
  std::vector<std::string> Names() const;
  // Total number of elements over every tensor of every file.
  int64_t TotalElements() const;
  // The model's parameters: every element, except that a U8 tensor (Q4_0 quants) holds two
  // per byte and `*.weight_scale` tensors (quantization scales) are not parameters.
  int64_t Parameters() const;

 private:
  // The file index and entry of `name`, after checking its shape equals `expected_shape`.
  absl::StatusOr<std::pair<size_t, const TensorInfo*>> Lookup(
      std::string_view name, std::span<const int64_t> expected_shape) const;

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>, std::less<>> tensors_;
  std::map<std::string, bool, std::less<>> used_;
};

// A tensor to write: f32 values converted to `dtype`, or (when `raw` is not empty) the
// bytes as stored, elements × DTypeBytes(dtype) of them. I8 and U8 tensors take `raw`.
struct TensorToWrite {
  TensorToWrite() = default;
  TensorToWrite(std::string name, DType dtype, std::vector<int64_t> shape,
                std::span<const float> values, std::span<const uint8_t> raw = {})
      : name(std::move(name)), dtype(dtype), shape(std::move(shape)), values(values), raw(raw) {}
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const float> values;
  std::span<const uint8_t> raw;
};
// Writes a .safetensors file (tensors in the given order, 8-byte aligned header).
absl::Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_SAFETENSORS_H_
