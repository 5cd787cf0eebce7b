#include "kernels/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/half.h"
#include "base/status.h"

namespace shardlm {
namespace {

// Bytes of a chunk's quants in the packed row, for a chunk of m blocks.
int64_t ChunkQuantBytes(DType format, int64_t m) { return format == DType::kQ8_0 ? 32 * m : 16 * m; }

// Where element k of a packed row lives: the byte offset of its quant and, for Q4_0, whether
// it is the high nibble.
struct QuantSlot {
  int64_t byte;
  bool high;
};
QuantSlot SlotOf(DType format, int64_t in, int64_t k) {
  const int64_t nb = in / kQuantBlock;
  const int64_t ch = k / kQuantChunk;
  const int64_t m = std::min<int64_t>(16, nb - ch * 16);  // blocks in this chunk
  const int64_t within = k % kQuantChunk;
  const int64_t j = within / kQuantBlock, e = within % kQuantBlock;  // block j, element e
  const int64_t v = e / 4;                                            // vector v, byte e % 4
  const int64_t chunk_begin = ch * ChunkQuantBytes(format, 16);
  if (format == DType::kQ8_0) return {chunk_begin + v * 4 * m + 4 * j + e % 4, false};
  return {chunk_begin + (v / 2) * 4 * m + 4 * j + e % 4, v % 2 == 1};
}

}  // namespace

int64_t QuantBytes(DType format, int64_t in) {
  CHECK(IsBlockQuantized(format));
  CHECK_EQ(in % kQuantBlock, 0);
  return format == DType::kQ8_0 ? in : in / 2;
}

void QuantizeRow(DType format, const float* x, int64_t in, uint8_t* quants, uint16_t* scales) {
  CHECK(IsBlockQuantized(format));
  CHECK_EQ(in % kQuantBlock, 0);
  for (int64_t b = 0; b < in / kQuantBlock; ++b) {
    const float* xb = x + b * kQuantBlock;
    if (format == DType::kQ8_0) {
      float amax = 0.0f;
      for (int64_t k = 0; k < kQuantBlock; ++k) amax = std::max(amax, std::fabs(xb[k]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      for (int64_t k = 0; k < kQuantBlock; ++k) {
        const int q = static_cast<int>(std::round(xb[k] * id));
        quants[b * kQuantBlock + k] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(q, -127, 127)));
      }
      scales[b] = F32ToF16(d);
    } else {
      float amax = 0.0f, max = 0.0f;
      for (int64_t k = 0; k < kQuantBlock; ++k) {
        if (std::fabs(xb[k]) > amax) {
          amax = std::fabs(xb[k]);
          max = xb[k];
        }
      }
      const float d = max / -8.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      uint8_t* qb = quants + b * (kQuantBlock / 2);
      for (int64_t j = 0; j < kQuantBlock / 2; ++j) {
        const auto q = [&](int64_t k) {
          return static_cast<uint8_t>(std::min(15, static_cast<int>(xb[k] * id + 8.5f)));
        };
        qb[j] = static_cast<uint8_t>(q(j) | (q(j + 16) << 4));
      }
      scales[b] = F32ToF16(d);
    }
  }
}

void PackQuantRow(DType format, const uint8_t* quants, const uint16_t* scales, int64_t in,
                  uint8_t* dst) {
  CHECK(IsBlockQuantized(format));
  CHECK_EQ(in % kQuantBlock, 0);
  const int64_t nb = in / kQuantBlock;
  // Block b = 16·ch + j of chunk ch (m blocks): its 4-byte piece v goes to vector v (Q8_0) or
  // to nibble group v / 2 (Q4_0), at byte 4j; the layout of quant.h, written block by block.
  for (int64_t ch = 0; ch * 16 < nb; ++ch) {
    const int64_t m = std::min<int64_t>(16, nb - ch * 16);
    uint8_t* chunk = dst + ch * ChunkQuantBytes(format, 16);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t b = ch * 16 + j;
      if (format == DType::kQ8_0) {
        for (int64_t e = 0; e < kQuantBlock; ++e) {
          const uint8_t q = quants[b * kQuantBlock + e];  // int8 bits
          chunk[(e / 4) * 4 * m + 4 * j + e % 4] = static_cast<uint8_t>(q ^ 0x80u);  // q + 128
        }
        continue;
      }
      const uint8_t* pairs = quants + b * 16;  // element e: pairs[e % 16], low half for e < 16
      const auto q = [pairs](int64_t e) {
        return static_cast<uint8_t>(e < 16 ? pairs[e] & 0x0f : pairs[e - 16] >> 4);
      };
      for (int64_t g = 0; g < 4; ++g) {
        for (int64_t t = 0; t < 4; ++t) {
          chunk[g * 4 * m + 4 * j + t] =
              static_cast<uint8_t>(q(8 * g + t) | (q(8 * g + 4 + t) << 4));
        }
      }
    }
  }
  std::memcpy(dst + QuantBytes(format, in), scales, static_cast<size_t>(nb) * sizeof(uint16_t));
}

int QuantAt(DType format, const uint8_t* packed, int64_t in, int64_t k) {
  const QuantSlot slot = SlotOf(format, in, k);
  if (format == DType::kQ8_0) return static_cast<int>(packed[slot.byte]) - 128;
  const uint8_t pair = packed[slot.byte];
  return (slot.high ? pair >> 4 : pair & 0x0f) - 8;
}

uint16_t ScaleAt(const uint8_t* packed, DType format, int64_t in, int64_t block) {
  uint16_t bits;
  std::memcpy(&bits, packed + QuantBytes(format, in) + block * 2, sizeof(bits));
  return bits;
}

void DequantizeRow(DType format, const uint8_t* packed, int64_t in, float* out) {
  for (int64_t b = 0; b < in / kQuantBlock; ++b) {
    const float d = F16ToF32(ScaleAt(packed, format, in, b));
    for (int64_t e = 0; e < kQuantBlock; ++e) {
      const int64_t k = b * kQuantBlock + e;
      out[k] = static_cast<float>(QuantAt(format, packed, in, k)) * d;
    }
  }
}

}  // namespace shardlm
