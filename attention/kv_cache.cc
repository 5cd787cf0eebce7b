#include "attention/kv_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace shardlm {
namespace {

// Round to nearest even, as the weights' bf16 (NaN stays NaN).
uint16_t ToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
int64_t RoundUp4(int64_t n) { return (n + 3) / 4 * 4; }

}  // namespace

absl::StatusOr<KvDType> ParseKvDType(std::string_view name) {
  if (name == "f32") return KvDType::kF32;
  if (name == "bf16") return KvDType::kBF16;
  if (name == "int8") return KvDType::kInt8;
  return absl::InvalidArgumentError(
      absl::StrCat("--kv-dtype must be f32, bf16 or int8, got \"", std::string(name), "\""));
}

const char* KvDTypeName(KvDType dtype) {
  switch (dtype) {
    case KvDType::kF32: return "f32";
    case KvDType::kBF16: return "bf16";
    case KvDType::kInt8: return "int8";
  }
  return "?";
}

KvRowFormat KvRowFormat::Make(KvDType dtype, std::span<const int64_t> segment_lengths) {
  KvRowFormat f;
  f.dtype = dtype;
  for (const int64_t len : segment_lengths) {
    CHECK_GT(len, 0);
    f.segment_starts.push_back(f.elems);
    f.elems += len;
  }
  f.segment_starts.push_back(f.elems);
  switch (dtype) {
    case KvDType::kF32:
    case KvDType::kBF16:
      f.bytes = RoundUp4(f.elems * KvValueBytes(dtype));
      break;
    case KvDType::kInt8:
      f.scale_offset = RoundUp4(f.elems);
      f.bytes = f.scale_offset +
                static_cast<int64_t>(segment_lengths.size()) * static_cast<int64_t>(sizeof(float));
      break;
  }
  return f;
}

int64_t KvRowFormat::SegmentOf(int64_t i) const {
  DCHECK(i >= 0 && i < elems);
  return std::upper_bound(segment_starts.begin(), segment_starts.end(), i) -
         segment_starts.begin() - 1;
}

void KvRowFormat::Store(const float* values, unsigned char* row) const {
  switch (dtype) {
    case KvDType::kF32:
      std::memcpy(row, values, static_cast<size_t>(elems) * sizeof(float));
      return;
    case KvDType::kBF16:
      for (int64_t i = 0; i < elems; ++i) {
        const uint16_t h = ToBf16(values[i]);
        std::memcpy(row + 2 * i, &h, sizeof(h));
      }
      return;
    case KvDType::kInt8:
      for (size_t s = 0; s + 1 < segment_starts.size(); ++s) {
        const int64_t b = segment_starts[s], e = segment_starts[s + 1];
        float amax = 0.0f;
        bool finite = true;
        for (int64_t i = b; i < e; ++i) {
          const float a = std::fabs(values[i]);
          finite = finite && a <= std::numeric_limits<float>::max();  // false for NaN and inf
          amax = std::max(amax, a);
        }
        // A non-finite value makes the segment read back as NaN (as an f32 cache would
        // propagate it) rather than as a silently clipped number.
        float scale = amax / 127.0f;
        if (!finite || !std::isfinite(scale)) {
          std::memset(row + b, 0, static_cast<size_t>(e - b));
          scale = std::numeric_limits<float>::quiet_NaN();
          std::memcpy(row + scale_offset + static_cast<int64_t>(s) * 4, &scale, sizeof(scale));
          continue;
        }
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int64_t i = b; i < e; ++i) {
          const float q = std::nearbyint(values[i] * inv);
          row[i] = static_cast<unsigned char>(static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f)));
        }
        std::memcpy(row + scale_offset + static_cast<int64_t>(s) * 4, &scale, sizeof(scale));
      }
      return;
  }
}

void KvRowFormat::Decode(KvDType dtype, const unsigned char* row, int64_t off, int64_t len,
                         float scale, float* out) {
  switch (dtype) {
    case KvDType::kF32:
      std::memcpy(out, row + off * 4, static_cast<size_t>(len) * sizeof(float));
      return;
    case KvDType::kBF16:
      for (int64_t i = 0; i < len; ++i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * (off + i), sizeof(h));
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&out[i], &bits, sizeof(float));
      }
      return;
    case KvDType::kInt8:
      for (int64_t i = 0; i < len; ++i) {
        out[i] = static_cast<float>(static_cast<int8_t>(row[off + i])) * scale;
      }
      return;
  }
}

void KvRowFormat::Load(const unsigned char* row, float* values) const {
  if (dtype != KvDType::kInt8) {
    Decode(dtype, row, 0, elems, 1.0f, values);
    return;
  }
  for (size_t s = 0; s + 1 < segment_starts.size(); ++s) {
    const int64_t b = segment_starts[s];
    Decode(dtype, row, b, segment_starts[s + 1] - b,
           Scale(row, scale_offset, static_cast<int64_t>(s)), values + b);
  }
}

PagedKvCache::PagedKvCache(int64_t layers, int64_t num_pages, int64_t page_size, int64_t row_floats)
    : PagedKvCache(layers, num_pages, page_size,
                   KvRowFormat::Make(KvDType::kF32, std::span<const int64_t>(&row_floats,
                                                                             row_floats > 0 ? 1 : 0))) {}

PagedKvCache::PagedKvCache(int64_t layers, int64_t num_pages, int64_t page_size, KvRowFormat format)
    : num_pages_(num_pages), page_size_(page_size), row_floats_(format.elems),
      format_(std::move(format)) {
  CHECK_GE(layers, 0);
  CHECK(num_pages >= 0 && page_size > 0 && row_floats_ >= 0);
  pools_.reserve(static_cast<size_t>(layers));
  const int64_t bytes = pool_bytes();
  for (int64_t l = 0; l < layers; ++l) {
    if (bytes == 0) {
      pools_.push_back(nullptr);
      continue;
    }
    void* p = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      status_ = absl::ResourceExhaustedError(
          absl::StrCat("cannot map the KV cache, ", layers, " layers x ", bytes >> 20,
                       " MiB per rank (", std::strerror(errno), "); lower --kv-cache-mb"));
      return;
    }
#ifdef MADV_HUGEPAGE
    (void)madvise(p, static_cast<size_t>(bytes), MADV_HUGEPAGE);  // advice only
#endif
    pools_.push_back(static_cast<unsigned char*>(p));
  }
}

PagedKvCache::~PagedKvCache() {
  for (unsigned char* p : pools_) {
    if (p != nullptr) munmap(p, static_cast<size_t>(pool_bytes()));
  }
}

}  // namespace shardlm
