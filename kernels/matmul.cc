#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "base/half.h"
#include "base/status.h"
#include "base/thread_pool.h"
#include "kernels/matmul_internal.h"
#include "kernels/matmul_quant_internal.h"

namespace shardlm {
namespace matmul_internal {
namespace {

// Widens one stored weight to the f32 it stands for (exact for every format).
inline float Widen(F32W, float w) { return w; }
inline float Widen(Bf16W, uint16_t w) { return Bf16ToF32(w); }
// The value of base/half.h's F16ToF32 (NaN payloads aside), without its ldexp calls, which
// made the portable f16 kernel several times slower than the bf16 one: normals and inf/NaN
// move the fields into place (exponent rebiased by 127 − 15), subnormals m·2⁻²⁴ are one
// exact float multiply.
inline float Widen(F16W, uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  uint32_t bits;
  if (magnitude >= 0x7c00u) {
    bits = 0x7f800000u | ((magnitude & 0x3ffu) << 13);
  } else if (magnitude >= 0x0400u) {
    bits = (magnitude << 13) + ((127u - 15u) << 23);
  } else {
    const float f = static_cast<float>(magnitude) * 0x1p-24f;
    std::memcpy(&bits, &f, sizeof(bits));
  }
  bits |= sign;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Plain C++ with the structure of the SIMD kernels: 16 partial sums per (i, o), each a rounded
// product followed by an add. The library is compiled with -ffp-contract=off so the compiler
// cannot fuse x·w + a into an FMA in some instantiations and not in others; auto-vectorizing
// the lane loops is harmless (lanes are independent, nothing is reassociated). 16-bit weights
// are widened once per K step into `wf`, then used exactly as f32 weights are.
struct Portable {
  static constexpr int kLanes = 16;
  using XElem = float;
  static constexpr int kReduceGroup = 1;
  static void ReduceSums(const float* acc, int64_t count, float* sums) {
    ReduceEach<kLanes>(acc, count, sums);
  }

  template <class Fmt, int kR, int kC, int kCStride>
  static void Tile(const TileArgs& t) {
    using Elem = typename Fmt::Elem;
    constexpr int64_t kLine = kLineElems<Fmt>;
    const float* const x = static_cast<const float*>(t.x);
    const Elem* const w = static_cast<const Elem*>(t.w);
    const int64_t xs = t.x_stride, ws = t.w_stride, len = t.len, pf = t.prefetch_offset;
    float a[kR][kC][kLanes];
    float wf[kC][kLanes];
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        if (t.first_block) {
          std::fill_n(a[r][c], kLanes, 0.0f);
        } else {
          std::copy_n(t.acc + (r * kCStride + c) * kLanes, kLanes, a[r][c]);
        }
      }
    }
    int turn = t.prefetch_phase + 1;
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) {
      if (k % kLine == 0 && --turn == 0) {
        turn = t.prefetch_period;
        if (pf != 0) {
          for (int c = 0; c < kC; ++c) __builtin_prefetch(w + c * ws + k + pf);
        }
      }
      for (int c = 0; c < kC; ++c) {
        for (int j = 0; j < kLanes; ++j) wf[c][j] = Widen(Fmt{}, w[c * ws + k + j]);
      }
      for (int r = 0; r < kR; ++r) {
        for (int c = 0; c < kC; ++c) {
          for (int j = 0; j < kLanes; ++j) a[r][c][j] += x[r * xs + k + j] * wf[c][j];
        }
      }
    }
    // Tail: lanes j < len - k take one more term; the others are left as they are (which is
    // what adding a 0·0 term would give). Same code in every tile.
    const int tail = static_cast<int>(len - k);
    for (int c = 0; c < kC; ++c) {
      for (int j = 0; j < tail; ++j) wf[c][j] = Widen(Fmt{}, w[c * ws + k + j]);
    }
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        for (int j = 0; j < tail; ++j) a[r][c][j] += x[r * xs + k + j] * wf[c][j];
      }
    }
    for (int r = 0; r < kR; ++r) {
      for (int c = 0; c < kC; ++c) {
        std::copy_n(a[r][c], kLanes, t.acc + (r * kCStride + c) * kLanes);
      }
    }
  }
};

}  // namespace

float* Scratch(int64_t floats) {
  struct AlignedDelete {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local std::unique_ptr<float[], AlignedDelete> buffer;
  thread_local int64_t capacity = 0;
  if (floats > capacity) {
    buffer.reset(static_cast<float*>(
        ::operator new[](static_cast<size_t>(floats) * sizeof(float), std::align_val_t{64})));
    capacity = floats;
  }
  return buffer.get();
}

template <class Fmt>
void SkinnyPortable(const float* x, int64_t n, int64_t x_stride, const typename Fmt::Elem* w,
                    int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  Drive<Portable, Fmt, 4, 4>(x, n, x_stride, w, out, in, bias, y, y_stride);
}
template void SkinnyPortable<F32W>(const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                                   const float*, float*, int64_t);
template void SkinnyPortable<Bf16W>(const float*, int64_t, int64_t, const uint16_t*, int64_t,
                                    int64_t, const float*, float*, int64_t);
template void SkinnyPortable<F16W>(const float*, int64_t, int64_t, const uint16_t*, int64_t,
                                   int64_t, const float*, float*, int64_t);

}  // namespace matmul_internal

const char* MatMulIsaName() { return IsaName(SelectedMatMulIsa()); }

// The matmul implements every level, so it runs the best one.
Isa SelectedMatMulIsa() {
  static const Isa path = BestIsa();
  return path;
}

int MatMulLanes(Isa path) { return path == Isa::kAvx2Fma ? 8 : 16; }

namespace {
std::atomic<Bf16Math> g_bf16_math{Bf16Math::kExact};
}  // namespace

const char* Bf16MathName(Bf16Math math) { return math == Bf16Math::kDot ? "dot" : "exact"; }

bool Bf16MathAvailable(Bf16Math math) { return math == Bf16Math::kExact || Cpu().avx512_bf16; }

void SetBf16Math(Bf16Math math) {
  CHECK_MSG(Bf16MathAvailable(math), "BF16 math \"", Bf16MathName(math),
            "\" needs AVX512-BF16, which this CPU does not have");
  g_bf16_math.store(math, std::memory_order_relaxed);
}

Bf16Math SelectedBf16Math() { return g_bf16_math.load(std::memory_order_relaxed); }

namespace {

// The path's entry point for one weight format.
template <class Fmt>
void Dispatch(Isa path, const float* x, int64_t n, int64_t x_stride, const void* w, int64_t out,
              int64_t in, const float* bias, float* y, int64_t y_stride) {
  const auto* wt = static_cast<const typename Fmt::Elem*>(w);
  switch (path) {
    case Isa::kPortable:
      matmul_internal::SkinnyPortable<Fmt>(x, n, x_stride, wt, out, in, bias, y, y_stride);
      return;
    case Isa::kAvx2Fma:
      matmul_internal::SkinnyAvx2Fma<Fmt>(x, n, x_stride, wt, out, in, bias, y, y_stride);
      return;
    case Isa::kAvx512:
      matmul_internal::SkinnyAvx512<Fmt>(x, n, x_stride, wt, out, in, bias, y, y_stride);
      return;
  }
}

void RunQuant(QuantKernel kernel, const float* x, int64_t n, int64_t x_stride, DType format,
              const void* w, int64_t out, int64_t in, const float* bias, float* y,
              int64_t y_stride) {
  using namespace matmul_internal;
  const auto* wq = static_cast<const uint8_t*>(w);
  switch (kernel) {
    case QuantKernel::kPortable:
      SkinnyQuantPortable(format, x, n, x_stride, wq, out, in, bias, y, y_stride);
      return;
    case QuantKernel::kAvx2:
    case QuantKernel::kAvx2Vnni:
      SkinnyQuantAvx2(kernel == QuantKernel::kAvx2Vnni, format, x, n, x_stride, wq, out, in, bias,
                      y, y_stride);
      return;
    case QuantKernel::kAvx512Vnni:
      SkinnyQuantAvx512Vnni(format, x, n, x_stride, wq, out, in, bias, y, y_stride);
      return;
  }
}

// The checks and row panels shared by every entry point, then the kernel: the Bf16Math::kDot
// one for BF16 weights when `dot`, else `path`'s.
void Run(Isa path, bool dot, const float* x, int64_t n, int64_t x_stride, DType w_type,
         const void* w, int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  CHECK_GE(n, 0);
  CHECK_GE(out, 0);
  CHECK_GE(in, 0);
  if (n == 0 || out == 0) return;
  CHECK(y != nullptr);
  if (n > 1) {
    CHECK_GE(x_stride, in);
    CHECK_GE(y_stride, out);
  }
  if (in == 0) {  // empty sum: the bias, or zeros
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t o = 0; o < out; ++o) y[i * y_stride + o] = bias != nullptr ? bias[o] : 0.0f;
    }
    return;
  }
  CHECK(x != nullptr && w != nullptr);
  CHECK_MSG(IsaAvailable(path), IsaName(path), " is not supported by this CPU");
  if (IsBlockQuantized(w_type)) {
    CHECK_MSG(in % kQuantBlock == 0, DTypeName(w_type), " rows need a multiple of 32 inputs, not ", in);
  }
  // Prefill-sized n: the kernel streams every x row past every W tile, so once the packed x
  // outgrows L2 (n·in·4 bytes, 32 MiB at n = 1024, in = 8192) it is re-read from L3/DRAM for
  // each 6-row W tile and the kernel runs at a third of sgemm's rate. Row panels of about
  // 1 MiB of x (at least 64 rows) keep x in L2 and re-stream W once per panel instead. By
  // batch invariance each panel's outputs are the bits of the whole call.
  constexpr int64_t kPanelBytes = int64_t{1} << 20;
  const int64_t panel =
      std::max<int64_t>(64, kPanelBytes / (in * static_cast<int64_t>(sizeof(float))) / 32 * 32);
  if (n > panel) {
    for (int64_t i0 = 0; i0 < n; i0 += panel) {
      Run(path, dot, x + i0 * x_stride, std::min(panel, n - i0), x_stride, w_type, w, out, in, bias,
          y + i0 * y_stride, y_stride);
    }
    return;
  }
  switch (w_type) {
    case DType::kF32:
      Dispatch<matmul_internal::F32W>(path, x, n, x_stride, w, out, in, bias, y, y_stride);
      return;
    case DType::kBF16:
      if (dot) {
        matmul_internal::SkinnyAvx512Bf16Dot(x, n, x_stride, static_cast<const uint16_t*>(w), out,
                                             in, bias, y, y_stride);
        return;
      }
      Dispatch<matmul_internal::Bf16W>(path, x, n, x_stride, w, out, in, bias, y, y_stride);
      return;
    case DType::kF16:
      Dispatch<matmul_internal::F16W>(path, x, n, x_stride, w, out, in, bias, y, y_stride);
      return;
    case DType::kQ8_0:
    case DType::kQ4_0:
      RunQuant(QuantKernelFor(path), x, n, x_stride, w_type, w, out, in, bias, y, y_stride);
      return;
    case DType::kI8:
    case DType::kU8:
      break;
  }
  CHECK_MSG(false, DTypeName(w_type), " is not a weight format");
}

}  // namespace

void SkinnyMatMulWithIsa(Isa path, const float* x, int64_t n, int64_t x_stride, DType w_type,
                         const void* w, int64_t out, int64_t in, const float* bias, float* y,
                         int64_t y_stride) {
  Run(path, /*dot=*/false, x, n, x_stride, w_type, w, out, in, bias, y, y_stride);
}

void SkinnyMatMulBf16Dot(const float* x, int64_t n, int64_t x_stride, const uint16_t* w,
                         int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  CHECK_MSG(Bf16MathAvailable(Bf16Math::kDot), "this CPU has no AVX512-BF16");
  Run(SelectedMatMulIsa(), /*dot=*/true, x, n, x_stride, DType::kBF16, w, out, in, bias, y,
      y_stride);
}

void SkinnyMatMulWithIsa(Isa path, const float* x, int64_t n, int64_t x_stride, const float* w,
                         int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  SkinnyMatMulWithIsa(path, x, n, x_stride, DType::kF32, w, out, in, bias, y, y_stride);
}

void SkinnyMatMul(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                  int64_t in, const float* bias, float* y, int64_t y_stride) {
  SkinnyMatMulWithIsa(SelectedMatMulIsa(), x, n, x_stride, DType::kF32, w, out, in, bias, y,
                      y_stride);
}

void SkinnyMatMul(const float* x, int64_t n, int64_t x_stride, DType w_type, const void* w,
                  int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  const bool dot = w_type == DType::kBF16 && SelectedBf16Math() == Bf16Math::kDot;
  Run(SelectedMatMulIsa(), dot, x, n, x_stride, w_type, w, out, in, bias, y, y_stride);
}

void SkinnyMatMulParallel(const float* x, int64_t n, int64_t x_stride, DType w_type, const void* w,
                          int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  // Below this many weights a call takes ~10 µs or less: not worth waking the pool.
  constexpr int64_t kMinParallelWeights = int64_t{1} << 16;
  if (ComputeThreads() == 1 || n == 0 || out * in < kMinParallelWeights) {
    SkinnyMatMul(x, n, x_stride, w_type, w, out, in, bias, y, y_stride);
    return;
  }
  // Ranges of whole 12-row groups (a multiple of every path's column tile, 4 and 6), so only
  // the last range has a partial tile.
  constexpr int64_t kAlign = 12;
  struct Args {
    const float* x;
    int64_t n, x_stride;
    DType w_type;
    const char* w;
    int64_t in;
    const float* bias;
    float* y;
    int64_t y_stride;
  };
  const Args args{x, n, x_stride, w_type, static_cast<const char*>(w), in, bias, y, y_stride};
  // One captured pointer: the std::function holds it inline, so the call does not allocate.
  ParallelFor(out, kAlign, [p = &args](int64_t begin, int64_t end) {
    const int64_t row_bytes = WeightRowBytes(p->w_type, p->in);
    SkinnyMatMul(p->x, p->n, p->x_stride, p->w_type, p->w + begin * row_bytes, end - begin, p->in,
                 p->bias != nullptr ? p->bias + begin : nullptr, p->y + begin, p->y_stride);
  });
}

const char* QuantKernelName(QuantKernel kernel) {
  switch (kernel) {
    case QuantKernel::kPortable:
      return "portable";
    case QuantKernel::kAvx2:
      return "avx2";
    case QuantKernel::kAvx2Vnni:
      return "avx2+vnni";
    case QuantKernel::kAvx512Vnni:
      return "avx512+vnni";
  }
  return "unknown";
}

bool QuantKernelAvailable(QuantKernel kernel) {
  switch (kernel) {
    case QuantKernel::kPortable:
      return true;
    case QuantKernel::kAvx2:
      return Cpu().avx2_fma;
    case QuantKernel::kAvx2Vnni:
      return Cpu().avx2_fma && Cpu().avx_vnni;
    case QuantKernel::kAvx512Vnni:
      return Cpu().avx512 && Cpu().avx512_vnni;
  }
  return false;
}

QuantKernel QuantKernelFor(Isa path) {
  if (path == Isa::kAvx512 && QuantKernelAvailable(QuantKernel::kAvx512Vnni)) {
    return QuantKernel::kAvx512Vnni;
  }
  if (path == Isa::kPortable) return QuantKernel::kPortable;
  return Cpu().avx_vnni ? QuantKernel::kAvx2Vnni : QuantKernel::kAvx2;
}

void SkinnyMatMulQuantWithKernel(QuantKernel kernel, const float* x, int64_t n, int64_t x_stride,
                                 DType format, const void* w, int64_t out, int64_t in,
                                 const float* bias, float* y, int64_t y_stride) {
  CHECK(IsBlockQuantized(format));
  CHECK_MSG(QuantKernelAvailable(kernel), QuantKernelName(kernel), " is not supported by this CPU");
  CHECK_EQ(in % kQuantBlock, 0);
  CHECK_GE(n, 0);
  if (n == 0 || out == 0) return;
  if (in == 0) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t o = 0; o < out; ++o) y[i * y_stride + o] = bias != nullptr ? bias[o] : 0.0f;
    }
    return;
  }
  RunQuant(kernel, x, n, x_stride, format, w, out, in, bias, y, y_stride);
}

void SkinnyMatMulReserve(int64_t max_n, int64_t max_in) {
  CHECK_GE(max_n, 0);
  CHECK_GE(max_in, 0);
  using matmul_internal::kKBlock;
  const int64_t floats = max_n * ((max_in + kKBlock - 1) / kKBlock) * kKBlock;
  OnEveryComputeThread([floats] { matmul_internal::Scratch(floats); });
}

void SkinnyMatMulNaive(const float* x, int64_t n, int64_t x_stride, DType w_type, const void* w,
                       int64_t out, int64_t in, const float* bias, float* y, int64_t y_stride) {
  if (IsBlockQuantized(w_type)) {
    SkinnyMatMulQuantNaive(x, n, x_stride, w_type, w, out, in, bias, y, y_stride);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias != nullptr ? bias[o] : 0.0;
      for (int64_t k = 0; k < in; ++k)
        acc += x[i * x_stride + k] * static_cast<double>(ElementToF32(w_type, w, o * in + k));
      y[i * y_stride + o] = static_cast<float>(acc);
    }
  }
}

void SkinnyMatMulNaive(const float* x, int64_t n, int64_t x_stride, const float* w, int64_t out,
                       int64_t in, const float* bias, float* y, int64_t y_stride) {
  SkinnyMatMulNaive(x, n, x_stride, DType::kF32, w, out, in, bias, y, y_stride);
}

}  // namespace shardlm
