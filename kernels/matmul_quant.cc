// The block-quantized matmul's portable parts: the x quantization of the contract, the
// portable kernel, and the naive reference (kernels/matmul.h, "Q8_0 and Q4_0 weights").
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "base/half.h"
#include "base/status.h"
#include "kernels/matmul.h"
#include "kernels/matmul_quant_internal.h"
#include "kernels/quant.h"

namespace shardlm {
namespace {

// The contract's quantization of one block of 32 x: d and q[32]. Non-finite x: d = NaN, q = 0.
float QuantizeXBlock(const float* x, int8_t* q) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t k = 0; k < kQuantBlock; ++k) {
    finite = finite && std::isfinite(x[k]);
    amax = std::max(amax, std::fabs(x[k]));
  }
  if (!finite) {
    std::memset(q, 0, kQuantBlock);
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t k = 0; k < kQuantBlock; ++k) {
    q[k] = static_cast<int8_t>(std::clamp(static_cast<int>(std::nearbyint(x[k] * id)), -127, 127));
  }
  return amax / 127.0f;
}

}  // namespace

namespace matmul_internal {

void QuantizeXRowPortable(const float* x, int64_t in, DType format, uint8_t* dst) {
  const int64_t nb = in / kQuantBlock;
  const int32_t bias = QuantWeightBias(format);
  std::memset(dst, 0, static_cast<size_t>(QxRowBytes(in)));
  for (int64_t b = 0; b < nb; ++b) {
    int8_t q[kQuantBlock];
    const float d = QuantizeXBlock(x + b * kQuantBlock, q);
    uint8_t* chunk = dst + (b / 16) * kQxChunkBytes;
    const int64_t j = b % 16;
    int32_t sum = 0;
    for (int64_t e = 0; e < kQuantBlock; ++e) {
      chunk[(e / 4) * 64 + 4 * j + e % 4] = static_cast<uint8_t>(q[e]);
      sum += q[e];
    }
    std::memcpy(chunk + kQxScaleOffset + 4 * j, &d, sizeof(d));
    const int32_t aux = bias * sum;
    std::memcpy(chunk + kQxAuxOffset + 4 * j, &aux, sizeof(aux));
  }
  // Past the last block: quants, scales and aux 0 (from the memset).
}

namespace {

// Plain C++: each (row, weight row) pair's block dot products as exact ints, then the
// contract's FMA per block, in the driver's loop nest.
struct QuantPortable {
  static constexpr int kReduceGroup = 1;
  static constexpr bool kZeroAcc = false;
  static constexpr bool kFirstBlockPrefetches = false;  // Tile does not prefetch
  static void ReduceSums(const float* acc, int64_t count, float* sums) {
    ReduceEach<16>(acc, count, sums);
  }
  static void QuantizeX(const float* x, int64_t in, DType format, uint8_t* dst) {
    QuantizeXRowPortable(x, in, format, dst);
  }

  template <DType kFormat, int kR, int kC, int kCStride>
  static void Tile(const QTileArgs& t) {
    for (int ch = 0; ch < t.chunks; ++ch) {
      const int64_t m = ch == t.chunks - 1 ? t.last_blocks : 16;
      for (int c = 0; c < kC; ++c) {
        const uint8_t* wrow = t.w + c * t.w_stride;
        const uint8_t* wq = wrow + WChunkOffset(kFormat, t.chunk0 + ch);
        for (int r = 0; r < kR; ++r) {
          const uint8_t* xc = t.x + r * t.x_stride + ch * kQxChunkBytes;
          float* acc = t.acc + (r * kCStride + c) * 16;
          for (int64_t j = 0; j < m; ++j) {
            int32_t s = 0;
            for (int64_t e = 0; e < kQuantBlock; ++e) {
              const int64_t v = e / 4, byte = 4 * j + e % 4;
              int qw;
              if constexpr (kFormat == DType::kQ8_0) {
                qw = wq[v * 4 * m + byte] - 128;
              } else {
                const uint8_t pair = wq[(v / 2) * 4 * m + byte];
                qw = (v % 2 == 1 ? pair >> 4 : pair & 0x0f) - 8;
              }
              s += qw * static_cast<int8_t>(xc[v * 64 + byte]);
            }
            uint16_t dw_bits;
            std::memcpy(&dw_bits, wrow + t.scale_offset + 2 * (16 * (t.chunk0 + ch) + j), 2);
            float dx;
            std::memcpy(&dx, xc + kQxScaleOffset + 4 * j, sizeof(dx));
            acc[j] = std::fma(static_cast<float>(s), F16ToF32(dw_bits) * dx, acc[j]);
          }
        }
      }
    }
  }
};

}  // namespace

void SkinnyQuantPortable(DType format, const float* x, int64_t n, int64_t x_stride,
                         const uint8_t* w, int64_t out, int64_t in, const float* bias, float* y,
                         int64_t y_stride) {
  DriveQuantFormat<QuantPortable, 4, 4>(format, x, n, x_stride, w, out, in, bias, y, y_stride);
}

}  // namespace matmul_internal

void SkinnyMatMulQuantNaive(const float* x, int64_t n, int64_t x_stride, DType format,
                            const void* w, int64_t out, int64_t in, const float* bias, float* y,
                            int64_t y_stride) {
  CHECK(IsBlockQuantized(format));
  CHECK_EQ(in % kQuantBlock, 0);
  const auto* packed = static_cast<const uint8_t*>(w);
  const int64_t row_bytes = WeightRowBytes(format, in), nb = in / kQuantBlock;
  std::vector<int8_t> qx(static_cast<size_t>(in));
  std::vector<float> dx(static_cast<size_t>(nb));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < nb; ++b) dx[b] = QuantizeXBlock(x + i * x_stride + b * kQuantBlock, &qx[b * kQuantBlock]);
    for (int64_t o = 0; o < out; ++o) {
      const uint8_t* row = packed + o * row_bytes;
      float lanes[16] = {};
      for (int64_t b = 0; b < nb; ++b) {
        int32_t s = 0;
        for (int64_t e = 0; e < kQuantBlock; ++e) {
          const int64_t k = b * kQuantBlock + e;
          s += QuantAt(format, row, in, k) * qx[k];
        }
        const float scale = F16ToF32(ScaleAt(row, format, in, b)) * dx[b];
        lanes[b % 16] = std::fma(static_cast<float>(s), scale, lanes[b % 16]);
      }
      const float sum = matmul_internal::ReduceLanes<16>(lanes);
      y[i * y_stride + o] = bias != nullptr ? sum + bias[o] : sum;
    }
  }
}

}  // namespace shardlm
