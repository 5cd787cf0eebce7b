// The allocator of model weights: each buffer 64-byte aligned (whole cache lines, so a
// 64-byte vector load never spans two), and every buffer in memory advised into transparent
// huge pages (MADV_HUGEPAGE; advice only, honoured where the system allows it). A decode step
// streams every weight once, and in 4 KiB pages that stream is cut every 4 KiB by a TLB miss
// and a restart of the hardware prefetcher. A std::vector's large buffer starts 16 bytes into
// its mapping, so every 64-byte load of it spanned two lines.
//
// Every buffer is in memory mapped for it and advised before its first write, so its pages
// are faulted in as huge pages where the system has them. Buffers of 2 MiB or more get a
// 2 MiB-aligned mapping of their own. Smaller ones (a Q8_0 1024 × 1024 matrix is 1.1 MB) are
// packed one after another into shared 2 MiB-aligned chunks of 32 MiB (the weight arena); a
// chunk is returned to the system with its last buffer.
// Before (session 20): large buffers came from malloc, which handed out heap memory an earlier
// buffer had already faulted in as 4 KiB pages, where the advice changes nothing, and each
// small one was a malloc mapping of its own, too small for a huge page. A paper-m process had
// 84 MiB in huge pages in all, with 212 MiB of Q4_0 or 341 MiB of Q8_0 weights; now all of them
// are (docs/BENCHMARKS.md, "Weights in huge pages").
// Under AddressSanitizer the bytes after each buffer (the arena's gap, a mapping's rounding)
// are poisoned, and so is a freed arena buffer, so overruns are still reported.
//
// Measured (docs/BENCHMARKS.md, session 5): 16-layer paper-m BF16 batch 1 ~4% faster, the
// rest within this VM's noise. The cost: a buffer of 2 MiB and up is rounded up to a whole
// number of 2 MiB, and its last huge page may be backed whole, so up to 2 MiB of memory per
// such buffer (a few % of a model's weights) is taken and not used; so is the rest of the
// arena's last chunk once touched.
//
// Elements are default-initialized, so `resize` of a WeightVector of floats or integers leaves
// them indeterminate instead of zeroing them: the loader overwrites every element with the
// checkpoint's values right after sizing the buffer, and zeroing first wrote each page of the
// weights twice. Give a value (`resize(n, 0)`, `assign`) where zeros are wanted.
#ifndef SHARDLM_BASE_WEIGHT_ALLOC_H_
#define SHARDLM_BASE_WEIGHT_ALLOC_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

namespace shardlm {

// A weight buffer of `bytes` (> 0) bytes, and its release (with the same size); thread-safe.
// Throws std::bad_alloc when the system has no memory for it.
void* AllocateWeights(size_t bytes);
void FreeWeights(void* p, size_t bytes);

// What the arena holds now, for tests: chunks mapped and bytes handed out (not yet freed).
struct ArenaStats {
  size_t chunks = 0;
  size_t live_bytes = 0;
};
ArenaStats GetArenaStats();

template <typename T>
struct WeightAllocator {
  using value_type = T;
  static constexpr size_t kHuge = size_t{2} << 20;

  WeightAllocator() = default;
  template <typename U>
  WeightAllocator(const WeightAllocator<U>&) {}  // NOLINT: rebinding, as std::allocator

  T* allocate(size_t n) {
    if (n > (static_cast<size_t>(-1) - kHuge) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(AllocateWeights(std::max<size_t>(n * sizeof(T), 1)));
  }
  void deallocate(T* p, size_t n) { FreeWeights(p, std::max<size_t>(n * sizeof(T), 1)); }

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
