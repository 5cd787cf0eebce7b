#include "base/weight_alloc.h"

#include <cstdint>
#include <stdexcept>

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

TEST(WeightAllocatorTest, ImpossibleSizeThrows) {
  WeightAllocator<float> a;
  EXPECT_THROW(a.allocate(static_cast<size_t>(-1) / 2), std::bad_alloc);
}

}  // namespace
}  // namespace shardlm
