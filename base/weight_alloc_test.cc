#include "base/weight_alloc.h"

#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

uintptr_t Address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

TEST(WeightAllocatorTest, SmallBuffersAreCacheLineAligned) {
  for (size_t n : {1, 3, 16, 1000, 100000}) {
    WeightVector<uint16_t> v(n, 7);
    EXPECT_EQ(Address(v.data()) % 64, 0u) << n;
    EXPECT_EQ(v[n - 1], 7);
  }
}

TEST(WeightAllocatorTest, LargeBuffersAreHugePageAligned) {
  // 2 MiB and up; the tail beyond a multiple of 2 MiB is still usable.
  for (size_t floats : {size_t{1} << 19, (size_t{1} << 19) + 5, size_t{3} << 20}) {
    WeightVector<float> v(floats, 0.0f);
    EXPECT_EQ(Address(v.data()) % (size_t{2} << 20), 0u) << floats;
    v.back() = 1.5f;
    EXPECT_EQ(v.front(), 0.0f);
    EXPECT_EQ(v.back(), 1.5f);
  }
}

TEST(WeightAllocatorTest, GrowingKeepsContentsAndAlignment) {
  WeightVector<float> v;
  for (int i = 0; i < 300000; ++i) v.push_back(static_cast<float>(i));
  EXPECT_EQ(Address(v.data()) % 64, 0u);
  for (int i = 0; i < 300000; i += 997) ASSERT_EQ(v[i], static_cast<float>(i));
}

TEST(WeightAllocatorTest, ResizeDoesNotWriteTheElements) {
  // The loader sizes a buffer and then overwrites it, so resize must not zero it first: within
  // the capacity, the old values are still there after a clear and a resize.
  WeightVector<float> v(1000, 2.5f);
  const float* data = v.data();
  v.clear();
  v.resize(1000);
  ASSERT_EQ(v.data(), data);
  for (size_t i = 0; i < v.size(); i += 37) ASSERT_EQ(v[i], 2.5f) << i;
  // A value given is still used.
  v.resize(1500, -1.0f);
  EXPECT_EQ(v[999], 2.5f);
  EXPECT_EQ(v[1000], -1.0f);
  EXPECT_EQ(v[1499], -1.0f);
}

// Buffers under 2 MiB share the arena's 32 MiB chunks, one after another; a chunk goes back to
// the system with its last buffer, and the current one is reused from its start.
TEST(WeightAllocatorTest, SmallBuffersShareArenaChunks) {
  const ArenaStats before = GetArenaStats();
  {
    std::vector<WeightVector<uint8_t>> buffers;
    for (int i = 0; i < 8; ++i) buffers.emplace_back(1000000 + i, static_cast<uint8_t>(i));
    for (int i = 1; i < 8; ++i) {
      // Packed: each starts at the next cache line after the previous one (plus the sanitizer's
      // gap), unless a new chunk began.
      const uintptr_t prev = Address(buffers[i - 1].data()), here = Address(buffers[i].data());
      if (here > prev) {
        EXPECT_LE(here - prev, buffers[i - 1].size() + 128) << i;
      }
      EXPECT_EQ(here % 64, 0u);
    }
    const ArenaStats during = GetArenaStats();
    EXPECT_EQ(during.live_bytes - before.live_bytes, 8 * 1000000u + 28);
    EXPECT_LE(during.chunks, before.chunks + 1);
    for (int i = 0; i < 8; ++i) {
      EXPECT_EQ(buffers[i].front(), i);
      EXPECT_EQ(buffers[i].back(), i);
    }
  }
  EXPECT_EQ(GetArenaStats().live_bytes, before.live_bytes);
  {
    // 100 MB of 1.9 MB buffers take several chunks; all but the current one are unmapped once
    // freed.
    std::vector<WeightVector<float>> buffers;
    for (int i = 0; i < 50; ++i) buffers.emplace_back(500000, 1.0f);
    EXPECT_GE(GetArenaStats().chunks, before.chunks + 3);
  }
  EXPECT_LE(GetArenaStats().chunks, before.chunks + 1);
  EXPECT_EQ(GetArenaStats().live_bytes, before.live_bytes);
}

TEST(WeightAllocatorTest, ArenaIsThreadSafe) {
  const ArenaStats before = GetArenaStats();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) {
        WeightVector<uint16_t> v(1000 + 37 * i, static_cast<uint16_t>(t * 1000 + i));
        ASSERT_EQ(v[500], t * 1000 + i);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(GetArenaStats().live_bytes, before.live_bytes);
}

#if defined(__SANITIZE_ADDRESS__)
// The arena and the mappings are not malloc's, so the bytes past each buffer are poisoned by
// hand: an overrun of a weight buffer is still an AddressSanitizer report.
TEST(WeightAllocatorDeathTest, OverrunsAreReportedUnderAddressSanitizer) {
  WeightVector<uint8_t> small(1000, 1), large((size_t{3} << 20) + 5, 1);
  const volatile uint8_t* s = small.data();
  const volatile uint8_t* l = large.data();
  EXPECT_DEATH((void)s[1000], "use-after-poison");
  EXPECT_DEATH((void)l[large.size()], "use-after-poison");
  const volatile uint8_t* freed = nullptr;
  {
    WeightVector<uint8_t> gone(1000, 1);
    freed = gone.data();
  }
  EXPECT_DEATH((void)freed[0], "use-after-poison");
}
#endif

TEST(WeightAllocatorTest, ImpossibleSizeThrows) {
  WeightAllocator<float> a;
  EXPECT_THROW(a.allocate(static_cast<size_t>(-1) / 2), std::bad_alloc);
}

}  // namespace
}  // namespace shardlm
