// 16-bit float formats of checkpoints: bfloat16 and IEEE binary16.
#ifndef SHARDLM_BASE_HALF_H_
#define SHARDLM_BASE_HALF_H_

#include <cstdint>
#include <cstring>

namespace shardlm {

// bf16 is the top half of an f32: widening is exact.
inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even; NaN stays NaN.
uint16_t F32ToBf16(float f);

// IEEE half (F16) to f32, exact for normals, subnormals, inf and NaN.
float F16ToF32(uint16_t h);
// f32 to IEEE half, round to nearest even, overflow to inf.
uint16_t F32ToF16(float f);

}  // namespace shardlm

#endif  // SHARDLM_BASE_HALF_H_
