#include "base/weight_alloc.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define SHARDLM_ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SHARDLM_ARENA_ASAN 1
#endif
#endif
#ifdef SHARDLM_ARENA_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace shardlm {
namespace {

constexpr size_t kHuge = size_t{2} << 20;
constexpr size_t kChunk = size_t{32} << 20;
constexpr size_t kAlign = 64;

constexpr uintptr_t RoundUp(uintptr_t x, size_t to) { return (x + to - 1) / to * to; }

#ifdef SHARDLM_ARENA_ASAN
constexpr size_t kGap = 64;  // poisoned, after each buffer
void Poison(uintptr_t p, size_t n) { ASAN_POISON_MEMORY_REGION(reinterpret_cast<void*>(p), n); }
void Unpoison(uintptr_t p, size_t n) { ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(p), n); }
#else
constexpr size_t kGap = 0;
void Poison(uintptr_t, size_t) {}
void Unpoison(uintptr_t, size_t) {}
#endif

struct Chunk {
  size_t used = 0;  // bytes from the start handed out (buffers bump this)
  size_t live = 0;  // buffers handed out and not freed
};

struct Arena {
  std::mutex mu;
  std::map<uintptr_t, Chunk> chunks;  // by start address
  uintptr_t current = 0;              // where new buffers go; 0 before the first
  size_t live_bytes = 0;
};

// Never destroyed: weights held by static objects may be freed after any static destructor.
Arena& TheArena() {
  static Arena* arena = new Arena;
  return *arena;
}

// A mapping of `bytes` rounded up to 2 MiB, at a 2 MiB boundary, advised into huge pages
// before anything touches it; the rounding is poisoned under ASan.
uintptr_t MapAligned(size_t bytes) {
  const size_t size = RoundUp(bytes, kHuge);
  void* m = mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t raw = reinterpret_cast<uintptr_t>(m);
  const uintptr_t start = RoundUp(raw, kHuge);
  if (start > raw) munmap(m, start - raw);
  if (const uintptr_t tail = raw + size + kHuge - (start + size); tail > 0) {
    munmap(reinterpret_cast<void*>(start + size), tail);
  }
#ifdef MADV_HUGEPAGE
  (void)madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
#endif
  Poison(start + bytes, size - bytes);
  return start;
}

void Unmap(uintptr_t start, size_t bytes) {
  const size_t size = RoundUp(bytes, kHuge);
  Unpoison(start, size);
  munmap(reinterpret_cast<void*>(start), size);
}

void* ArenaAllocate(size_t bytes) {
  const size_t span = RoundUp(bytes + kGap, kAlign);
  Arena& a = TheArena();
  std::lock_guard<std::mutex> lock(a.mu);
  Chunk* c = a.current != 0 ? &a.chunks[a.current] : nullptr;
  if (c == nullptr || c->used + span > kChunk) {
    const uintptr_t start = MapAligned(kChunk);
    Poison(start, kChunk);
    if (c != nullptr && c->live == 0) {
      Unmap(a.current, kChunk);
      a.chunks.erase(a.current);
    }
    a.current = start;
    c = &a.chunks[start];
  }
  const uintptr_t p = a.current + c->used;
  c->used += span;
  ++c->live;
  a.live_bytes += bytes;
  Unpoison(p, bytes);
  return reinterpret_cast<void*>(p);
}

void ArenaFree(void* ptr, size_t bytes) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  Arena& a = TheArena();
  std::lock_guard<std::mutex> lock(a.mu);
  auto it = a.chunks.upper_bound(p);
  if (it == a.chunks.begin() || p >= std::prev(it)->first + kChunk) {
    std::fprintf(stderr, "weight arena: freeing %p, which it did not hand out\n", ptr);
    std::abort();
  }
  --it;
  Poison(p, bytes);
  a.live_bytes -= bytes;
  if (--it->second.live > 0) return;
  if (it->first == a.current) {
    it->second.used = 0;  // empty: new buffers start over at its beginning
  } else {
    Unmap(it->first, kChunk);
    a.chunks.erase(it);
  }
}

}  // namespace

void* AllocateWeights(size_t bytes) {
  if (bytes < kHuge) return ArenaAllocate(bytes);
  return reinterpret_cast<void*>(MapAligned(bytes));
}

void FreeWeights(void* p, size_t bytes) {
  if (bytes < kHuge) {
    ArenaFree(p, bytes);
  } else {
    Unmap(reinterpret_cast<uintptr_t>(p), bytes);
  }
}

ArenaStats GetArenaStats() {
  Arena& a = TheArena();
  std::lock_guard<std::mutex> lock(a.mu);
  return {a.chunks.size(), a.live_bytes};
}

}  // namespace shardlm
