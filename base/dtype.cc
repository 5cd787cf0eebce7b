#include "base/dtype.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/half.h"
#include "base/status.h"
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
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kQ8_0:
      return "Q8_0";
    case DType::kQ4_0:
      return "Q4_0";
  }
  return "?";
}

bool IsBlockQuantized(DType dtype) { return dtype == DType::kQ8_0 || dtype == DType::kQ4_0; }

int64_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kI8:
    case DType::kU8:
      return 1;
    case DType::kQ8_0:
    case DType::kQ4_0:
      break;
  }
  CHECK_MSG(false, DTypeName(dtype), " is a block format: it has no per-element size");
  return 0;
}

int64_t WeightRowBytes(DType dtype, int64_t in) {
  switch (dtype) {
    case DType::kQ8_0:
      CHECK_EQ(in % 32, 0);
      return in + in / 16;  // 32 quants + a 2-byte scale per 32
    case DType::kQ4_0:
      CHECK_EQ(in % 32, 0);
      return in / 2 + in / 16;  // 16 nibble pairs + a 2-byte scale per 32
    default:
      return in * DTypeBytes(dtype);
  }
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI8, DType::kU8}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype \"", Printable(name),
                                                 "\" (supported: F32, BF16, F16, I8, U8)"));
}

absl::StatusOr<DType> ParseWeightDType(std::string_view name) {
  const std::string upper = absl::AsciiStrToUpper(std::string(name));
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kQ8_0, DType::kQ4_0}) {
    if (upper == DTypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported weight dtype \"", Printable(name), "\" (supported: F32, BF16, F16, Q8_0, Q4_0)"));
}

float ElementToF32(DType dtype, const void* data, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(data)[i];
    case DType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(data)[i]);
    case DType::kI8:
      return static_cast<const int8_t*>(data)[i];
    case DType::kU8:
      return static_cast<const uint8_t*>(data)[i];
    case DType::kQ8_0:
    case DType::kQ4_0:
      break;
  }
  CHECK_MSG(false, DTypeName(dtype), " is a block format: dequantize it (kernels/quant.h)");
  return 0.0f;
}

}  // namespace shardlm
