#include "attention/kv_swap.h"

#include <cstring>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

// A cache of 3 layers whose every float says where it is.
void Fill(PagedKvCache& cache, float salt) {
  for (int64_t l = 0; l < cache.layers(); ++l) {
    const CacheView v = cache.Layer(l);
    float* pool = reinterpret_cast<float*>(v.pool);
    for (int64_t i = 0; i < v.num_pages * v.page_size * v.row_floats; ++i) {
      pool[i] = salt + static_cast<float>(l * 100000 + i);
    }
  }
}

bool PagesEqual(PagedKvCache& a, int32_t pa, PagedKvCache& b, int32_t pb) {
  for (int64_t l = 0; l < a.layers(); ++l) {
    const CacheView x = a.Layer(l), y = b.Layer(l);
    const int64_t n = x.page_size * x.row_bytes;
    if (std::memcmp(x.pool + pa * n, y.pool + pb * n, static_cast<size_t>(n))) {
      return false;
    }
  }
  return true;
}

TEST(KvSwapTest, RoundTripsThroughMemoryAndFile) {
  PagedKvCache cache(3, 8, 4, 5), saved(3, 8, 4, 5);
  Fill(cache, 0.5f);
  Fill(saved, 0.5f);
  auto swap = KvSwap::Create(cache, /*memory_slots=*/2, /*file_slots=*/3, ::testing::TempDir());
  ASSERT_TRUE(swap.ok()) << swap.status();
  EXPECT_EQ((*swap)->slots(), 5);
  for (int64_t slot = 0; slot < 5; ++slot) (*swap)->Out(cache, static_cast<int32_t>(slot), slot);
  Fill(cache, 7.0f);  // the pages are reused meanwhile
  for (int64_t slot = 4; slot >= 0; --slot) {
    const int32_t page = static_cast<int32_t>(7 - slot);  // back into other pages
    ASSERT_TRUE((*swap)->In(cache, slot, page)) << slot;
    EXPECT_TRUE(PagesEqual(cache, page, saved, static_cast<int32_t>(slot))) << slot;
  }
  // A slot is read once: a second In without an Out is refused.
  EXPECT_FALSE((*swap)->In(cache, 0, 0));
}

TEST(KvSwapTest, RefusesEveryInjectedFault) {
  for (const SwapFault fault :
       {SwapFault::kFlipMemory, SwapFault::kFlipFile, SwapFault::kTruncateFile}) {
    PagedKvCache cache(2, 4, 3, 7);
    Fill(cache, 1.0f);
    auto swap = KvSwap::Create(cache, 1, 2, ::testing::TempDir());
    ASSERT_TRUE(swap.ok()) << swap.status();
    const int64_t slot = fault == SwapFault::kFlipMemory ? 0 : 1;
    (*swap)->Out(cache, 0, 2);  // a good file slot written before the fault
    (*swap)->InjectFault(fault);
    (*swap)->Out(cache, 1, slot);
    EXPECT_FALSE((*swap)->In(cache, slot, 3)) << static_cast<int>(fault);
    if (fault != SwapFault::kTruncateFile) {
      EXPECT_TRUE((*swap)->In(cache, 2, 2));
    }
  }
}

TEST(KvSwapTest, ParsesFaultNames) {
  EXPECT_EQ(*ParseSwapFault("flip-file"), SwapFault::kFlipFile);
  EXPECT_EQ(*ParseSwapFault(""), SwapFault::kNone);
  EXPECT_FALSE(ParseSwapFault("flip").ok());
}

TEST(KvSwapTest, NamesAnUnusableDirectory) {
  PagedKvCache cache(1, 2, 2, 2);
  auto swap = KvSwap::Create(cache, 0, 1, "/nonexistent/dir");
  ASSERT_FALSE(swap.ok());
  EXPECT_NE(swap.status().message().find("--swap-dir /nonexistent/dir"), std::string::npos);
}

}  // namespace
}  // namespace shardlm
