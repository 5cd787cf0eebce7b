// Paged KV cache of one rank (DESIGN §4). Each layer has a pool of pages; a page
// holds `page_size` token rows of this rank's cache row width. Page ids are
// global (the coordinator allocates them); a sequence's block table lists its
// page ids in order, append-only.
#ifndef SHARDLM_ATTENTION_KV_CACHE_H_
#define SHARDLM_ATTENTION_KV_CACHE_H_

#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/status.h"

namespace shardlm {

// How the cache stores a row's values (`--kv-dtype`): f32 as computed, bf16 (round to
// nearest even), or int8 with one f32 scale per segment of the row (a KV head's K or V, a GTA
// tied state, a latent head, the shared RoPE key): q = round(x / s) with s = max|x| / 127.
enum class KvDType { kF32, kBF16, kInt8 };
absl::StatusOr<KvDType> ParseKvDType(std::string_view name);  // f32 | bf16 | int8
const char* KvDTypeName(KvDType dtype);
// Bytes of one stored value (int8 rows add their scales after the values).
inline int64_t KvValueBytes(KvDType dtype) {
  return dtype == KvDType::kF32 ? 4 : dtype == KvDType::kBF16 ? 2 : 1;
}

// One row's layout: `elems` values of `dtype`, for int8 padded to 4 bytes and followed by the
// segments' scales. The attention kernels read rows in this layout directly.
struct KvRowFormat {
  KvDType dtype = KvDType::kF32;
  int64_t elems = 0;
  std::vector<int64_t> segment_starts;  // int8: first value of each segment, then elems
  int64_t scale_offset = 0;             // int8: byte offset of the scales
  int64_t bytes = 0;                    // per row

  // Segments partition the row (their lengths sum to its values).
  static KvRowFormat Make(KvDType dtype, std::span<const int64_t> segment_lengths);
  // The segment holding value `i` (int8).
  int64_t SegmentOf(int64_t i) const;
  // values[0, elems) into the row's bytes, and back.
  void Store(const float* values, unsigned char* row) const;
  void Load(const unsigned char* row, float* values) const;
  // Values [off, off + len) of a row stored in `dtype` as f32 into out[0, len); int8 values
  // are multiplied by `scale` (their segment's: the range must lie in one segment).
  static void Decode(KvDType dtype, const unsigned char* row, int64_t off, int64_t len,
                     float scale, float* out);
  // The scale of segment `seg` of an int8 row.
  static float Scale(const unsigned char* row, int64_t scale_offset, int64_t seg) {
    float s;
    std::memcpy(&s, row + scale_offset + seg * static_cast<int64_t>(sizeof(float)), sizeof(s));
    return s;
  }
};

// Read/write view of one layer's pool: [num_pages, page_size, row_bytes].
struct CacheView {
  unsigned char* pool = nullptr;
  int64_t num_pages = 0;
  int64_t page_size = 1;
  int64_t row_floats = 0;                // values per row
  int64_t row_bytes = 0;                 // bytes per row
  const KvRowFormat* format = nullptr;   // null: f32 values

  // A view of f32 rows.
  static CacheView F32(float* pool, int64_t num_pages, int64_t page_size, int64_t row_floats) {
    return {reinterpret_cast<unsigned char*>(pool), num_pages, page_size, row_floats,
            row_floats * static_cast<int64_t>(sizeof(float)), nullptr};
  }
  KvDType dtype() const { return format == nullptr ? KvDType::kF32 : format->dtype; }

  // The first row of page `page`; its rows follow row_bytes apart.
  unsigned char* Page(int64_t page) const { return pool + page * page_size * row_bytes; }
  // Row of token `pos` of the sequence whose pages are `block_table`.
  unsigned char* RowBytes(std::span<const int32_t> block_table, int64_t pos) const {
    const int64_t block = pos / page_size;
    DCHECK(block < static_cast<int64_t>(block_table.size()));
    const int64_t page = block_table[block];
    DCHECK(page >= 0 && page < num_pages);
    return Page(page) + pos % page_size * row_bytes;
  }
  // The same for an f32 cache.
  float* Row(std::span<const int32_t> block_table, int64_t pos) const {
    DCHECK(dtype() == KvDType::kF32);
    return reinterpret_cast<float*>(RowBytes(block_table, pos));
  }
  // Writes values[0, row_floats) as the row of `pos`, in the cache's format.
  void Store(std::span<const int32_t> block_table, int64_t pos, const float* values) const {
    unsigned char* row = RowBytes(block_table, pos);
    if (format == nullptr) {
      std::memcpy(row, values, static_cast<size_t>(row_floats) * sizeof(float));
    } else {
      format->Store(values, row);
    }
  }
  // The row of `pos` as f32 values: the row itself for an f32 cache, else decoded into `buf`.
  const float* Values(std::span<const int32_t> block_table, int64_t pos,
                      std::vector<float>& buf) const {
    if (format == nullptr) return Row(block_table, pos);
    buf.resize(static_cast<size_t>(row_floats));
    format->Load(RowBytes(block_table, pos), buf.data());
    return buf.data();
  }
};

// One query token of a ragged batch: it attends to positions [Lo(window), pos]
// of its sequence. Rows 0..pos of that sequence must already be in the cache.
struct QueryToken {
  std::span<const int32_t> block_table;
  int64_t pos = 0;

  // First attended position: pos - window + 1 under a sliding window W (DESIGN §2.4).
  int64_t Lo(int64_t window) const { return window > 0 && pos >= window ? pos - window + 1 : 0; }
};

// Pools of all layers of one rank. Allocated once at start-up; never resized.
//
// Each layer's pool is an anonymous private mapping: the kernel hands out zero pages on first
// touch, so start-up does not write the whole budget (a 1 GiB pool took ~1 s to zero-fill),
// and pages a job never uses cost no memory. The mapping is advised into transparent huge
// pages (MADV_HUGEPAGE; where the system allows it): a sequence's rows then cross far fewer
// TLB entries, as the decode kernels stream them. When the system refuses the mapping (a
// budget beyond its memory), status() says so and the cache must not be used.
class PagedKvCache {
 public:
  // f32 rows of row_floats values.
  PagedKvCache(int64_t layers, int64_t num_pages, int64_t page_size, int64_t row_floats);
  PagedKvCache(int64_t layers, int64_t num_pages, int64_t page_size, KvRowFormat format);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  // OK, or why the pools could not be mapped.
  const absl::Status& status() const { return status_; }
  CacheView Layer(int64_t layer) {
    return {pools_[layer], num_pages_, page_size_, row_floats_, format_.bytes,
            format_.dtype == KvDType::kF32 ? nullptr : &format_};
  }
  const KvRowFormat& format() const { return format_; }
  int64_t row_bytes() const { return format_.bytes; }
  int64_t layers() const { return static_cast<int64_t>(pools_.size()); }
  int64_t num_pages() const { return num_pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t row_floats() const { return row_floats_; }
  // Bytes held by the pools: what `inspect` and the bench report.
  int64_t bytes() const { return static_cast<int64_t>(pools_.size()) * pool_bytes(); }

 private:
  int64_t pool_bytes() const { return num_pages_ * page_size_ * format_.bytes; }

  int64_t num_pages_;
  int64_t page_size_;
  int64_t row_floats_;
  KvRowFormat format_;
  std::vector<unsigned char*> pools_;  // [layers] → [num_pages * page_size * row_bytes], mapped
  absl::Status status_;
};

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_KV_CACHE_H_
