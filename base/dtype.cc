#include "base/dtype.h"

#include "absl/strings/str_cat.h"
#include "base/half.h"
#include "base/text.h"

namespace shardlm {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
  }
  return "?";
}

int64_t DTypeBytes(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype \"", Printable(name), "\" (supported: F32, BF16, F16)"));
}

float ElementToF32(DType dtype, const void* data, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(data)[i];
    case DType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(data)[i]);
  }
  return 0.0f;
}

}  // namespace shardlm
