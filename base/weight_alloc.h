// The allocator of model weights: each buffer 64-byte aligned (whole cache lines, so a
// 64-byte vector load never spans two), and buffers of 2 MiB or more 2 MiB-aligned and advised
// into transparent huge pages (MADV_HUGEPAGE; advice only, honoured where the system allows
// it). A decode step streams every weight once, and in 4 KiB pages that stream is cut every
// 4 KiB by a TLB miss and a restart of the hardware prefetcher. A std::vector's large buffer
// starts 16 bytes into its mapping, so every 64-byte load of it spanned two lines.
//
// Measured (docs/BENCHMARKS.md, session 5): 16-layer paper-m BF16 batch 1 ~4% faster, the
// rest within this VM's noise. The cost: a buffer of 2 MiB and up is rounded up to a whole
// number of 2 MiB, and its last huge page may be backed whole, so up to 2 MiB of memory per
// such buffer (a few % of a model's weights) is taken and not used.
//
// Elements are default-initialized, so `resize` of a WeightVector of floats or integers leaves
// them indeterminate instead of zeroing them: the loader overwrites every element with the
// checkpoint's values right after sizing the buffer, and zeroing first wrote each page of the
// weights twice. Give a value (`resize(n, 0)`, `assign`) where zeros are wanted.
#ifndef SHARDLM_BASE_WEIGHT_ALLOC_H_
#define SHARDLM_BASE_WEIGHT_ALLOC_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

namespace shardlm {

template <typename T>
struct WeightAllocator {
  using value_type = T;
  static constexpr size_t kHuge = size_t{2} << 20;

  WeightAllocator() = default;
  template <typename U>
  WeightAllocator(const WeightAllocator<U>&) {}  // NOLINT: rebinding, as std::allocator

  T* allocate(size_t n) {
    if (n > (static_cast<size_t>(-1) - kHuge) / sizeof(T)) throw std::bad_alloc();
    const size_t bytes = n * sizeof(T);
    const size_t align = bytes >= kHuge ? kHuge : 64;
    void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align == kHuge) (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }

  // Default-initialization for `resize(n)` and `WeightVector(n)`; any other construction is
  // the usual placement new with the given arguments.
  template <typename U>
  void construct(U* p) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }

  template <typename U>
  bool operator==(const WeightAllocator<U>&) const {
    return true;
  }
};

template <typename T>
using WeightVector = std::vector<T, WeightAllocator<T>>;

}  // namespace shardlm

#endif  // SHARDLM_BASE_WEIGHT_ALLOC_H_
