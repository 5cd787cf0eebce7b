// The element types of stored tensors, and the weight formats the matmul kernels read W as
// (kernels/matmul.h). One list for both, so a checkpoint's dtype is the weight's dtype with
// no translation between them, except for the two block-quantized formats: a Q8_0 or Q4_0
// weight is stored as two plain tensors, its quants (I8, or U8 nibble pairs) and its F16
// scales (kernels/quant.h says how), and the loader packs them into one buffer of that format.
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
  kI8,    // int8: the quants of a Q8_0 weight
  kU8,    // uint8: the nibble pairs of a Q4_0 weight
  // Block-quantized weight formats (never a file's element type): blocks of 32 weights, each
  // with one f16 scale. Only Linear weights have them; see kernels/quant.h.
  kQ8_0,  // 32 int8 quants
  kQ4_0,  // 32 4-bit quants q, standing for q − 8
};
// "F32", "BF16", "F16", "I8", "U8", "Q8_0", "Q4_0"
const char* DTypeName(DType dtype);
// Bytes per element of an element type (4, 2 or 1); CHECK-fails for a block format, whose
// size is per row (WeightRowBytes).
int64_t DTypeBytes(DType dtype);
bool IsBlockQuantized(DType dtype);  // kQ8_0 or kQ4_0
// Bytes of one weight row of `in` elements in `dtype` as the kernels hold it (for the block
// formats, `in` must be a multiple of 32: quants plus one f16 scale per 32).
int64_t WeightRowBytes(DType dtype, int64_t in);
// A file element type by its safetensors name (F32, BF16, F16, I8, U8); any other name is an
// error that lists the supported ones.
absl::StatusOr<DType> ParseDType(std::string_view name);
// A weight format by name, as flags take it (F32, BF16, F16, Q8_0, Q4_0, any letter case).
absl::StatusOr<DType> ParseWeightDType(std::string_view name);

// Element i of an array of `dtype` values (floats, bf16/f16 bit patterns as uint16_t, or
// 8-bit integers), widened exactly to f32. For references, tests and one-row lookups, not hot
// loops. CHECK-fails for a block format (kernels/quant.h dequantizes those).
float ElementToF32(DType dtype, const void* data, int64_t i);

}  // namespace shardlm

#endif  // SHARDLM_BASE_DTYPE_H_
