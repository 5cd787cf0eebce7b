#include "attention/kv_cache.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace shardlm {

PagedKvCache::PagedKvCache(int64_t layers, int64_t num_pages, int64_t page_size, int64_t row_floats)
    : num_pages_(num_pages), page_size_(page_size), row_floats_(row_floats) {
  CHECK_GE(layers, 0);
  CHECK(num_pages >= 0 && page_size > 0 && row_floats >= 0);
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
    pools_.push_back(static_cast<float*>(p));
  }
}

PagedKvCache::~PagedKvCache() {
  for (float* p : pools_) {
    if (p != nullptr) munmap(p, static_cast<size_t>(pool_bytes()));
  }
}

}  // namespace shardlm
