// Paged KV cache of one rank (DESIGN §4). Each layer has a pool of pages; a page
// holds `page_size` token rows of this rank's cache row width. Page ids are
// global (the coordinator allocates them); a sequence's block table lists its
// page ids in order, append-only.
#ifndef SHARDLM_ATTENTION_KV_CACHE_H_
#define SHARDLM_ATTENTION_KV_CACHE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "base/status.h"

namespace shardlm {

// Read/write view of one layer's pool: [num_pages, page_size, row_floats].
struct CacheView {
  float* pool = nullptr;
  int64_t num_pages = 0;
  int64_t page_size = 1;
  int64_t row_floats = 0;

  // Row of token `pos` of the sequence whose pages are `block_table`.
  float* Row(std::span<const int32_t> block_table, int64_t pos) const {
    const int64_t block = pos / page_size;
    DCHECK(block < static_cast<int64_t>(block_table.size()));
    const int64_t page = block_table[block];
    DCHECK(page >= 0 && page < num_pages);
    return pool + (page * page_size + pos % page_size) * row_floats;
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
  PagedKvCache(int64_t layers, int64_t num_pages, int64_t page_size, int64_t row_floats);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  // OK, or why the pools could not be mapped.
  const absl::Status& status() const { return status_; }
  CacheView Layer(int64_t layer) { return {pools_[layer], num_pages_, page_size_, row_floats_}; }
  int64_t layers() const { return static_cast<int64_t>(pools_.size()); }
  int64_t num_pages() const { return num_pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t row_floats() const { return row_floats_; }
  // Bytes held by the pools: what `inspect` and the bench report.
  int64_t bytes() const { return static_cast<int64_t>(pools_.size()) * pool_bytes(); }

 private:
  int64_t pool_bytes() const {
    return num_pages_ * page_size_ * row_floats_ * static_cast<int64_t>(sizeof(float));
  }

  int64_t num_pages_;
  int64_t page_size_;
  int64_t row_floats_;
  std::vector<float*> pools_;  // [layers] → [num_pages * page_size * row_floats], mapped
  absl::Status status_;
};

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_KV_CACHE_H_
