// The element types of stored tensors: what a safetensors file holds and what the
// matmul kernels read W as (kernels/matmul.h). One list for both, so a checkpoint's
// dtype is the weight's dtype with no translation between them.
#ifndef SHARDLM_BASE_DTYPE_H_
#define SHARDLM_BASE_DTYPE_H_

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace shardlm {

enum class DType {
  kF32,
  kBF16,  // bfloat16: the top 16 bits of an f32
  kF16,   // IEEE binary16
};
const char* DTypeName(DType dtype);  // "F32", "BF16", "F16"
int64_t DTypeBytes(DType dtype);     // 4 or 2
// The inverse of DTypeName; any other name is an error that lists the supported ones.
absl::StatusOr<DType> ParseDType(std::string_view name);

// Element i of an array of `dtype` values (floats, or bf16/f16 bit patterns as uint16_t),
// widened exactly to f32. For references, tests and one-row lookups, not hot loops.
float ElementToF32(DType dtype, const void* data, int64_t i);

}  // namespace shardlm

#endif  // SHARDLM_BASE_DTYPE_H_
