#include "attention/kv_swap.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "base/rng.h"

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

// The stored formats of --kv-dtype: sizes, rounding, and non-finite values.
TEST(KvRowFormatTest, SizesRoundingAndNonFiniteValues) {
  const std::vector<int64_t> segments = {5, 7, 3};  // 15 values
  EXPECT_EQ(KvRowFormat::Make(KvDType::kF32, segments).bytes, 60);
  EXPECT_EQ(KvRowFormat::Make(KvDType::kBF16, segments).bytes, 32);
  const KvRowFormat i8 = KvRowFormat::Make(KvDType::kInt8, segments);
  EXPECT_EQ(i8.scale_offset, 16);
  EXPECT_EQ(i8.bytes, 16 + 3 * 4);
  EXPECT_EQ(i8.SegmentOf(0), 0);
  EXPECT_EQ(i8.SegmentOf(5), 1);
  EXPECT_EQ(i8.SegmentOf(14), 2);

  Rng rng(3);
  for (int rep = 0; rep < 100; ++rep) {
    std::vector<float> x = rng.UniformVector(15, -4.0f, 4.0f);
    x[7] = 0.0f;
    for (int64_t i = 12; i < 15; ++i) x[i] = 0.0f;  // an all-zero segment
    std::vector<unsigned char> row(static_cast<size_t>(i8.bytes));
    std::vector<float> back(15);
    i8.Store(x.data(), row.data());
    i8.Load(row.data(), back.data());
    for (int64_t s = 0; s < 3; ++s) {
      float amax = 0.0f;
      for (int64_t i = i8.segment_starts[s]; i < i8.segment_starts[s + 1]; ++i) {
        amax = std::max(amax, std::fabs(x[i]));
      }
      EXPECT_EQ(KvRowFormat::Scale(row.data(), i8.scale_offset, s), amax / 127.0f);
      for (int64_t i = i8.segment_starts[s]; i < i8.segment_starts[s + 1]; ++i) {
        EXPECT_LE(std::fabs(back[i] - x[i]), amax / 127.0f * 0.5f * (1 + 1e-5f)) << i;
      }
    }
    EXPECT_EQ(back[7], 0.0f);
    for (int64_t i = 12; i < 15; ++i) EXPECT_EQ(back[i], 0.0f);

    const KvRowFormat bf = KvRowFormat::Make(KvDType::kBF16, segments);
    std::vector<unsigned char> brow(static_cast<size_t>(bf.bytes));
    bf.Store(x.data(), brow.data());
    bf.Load(brow.data(), back.data());
    // Round to nearest: at most half a bf16 ulp, 2^-8 relative.
    for (int64_t i = 0; i < 15; ++i) EXPECT_LE(std::fabs(back[i] - x[i]), std::fabs(x[i]) * 0x1p-8f);
  }
  // Non-finite values: their segment reads back as NaN, the others as stored.
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(15, 1.0f);
    x[6] = bad;
    std::vector<unsigned char> row(static_cast<size_t>(i8.bytes));
    std::vector<float> back(15);
    i8.Store(x.data(), row.data());
    i8.Load(row.data(), back.data());
    for (int64_t i = 0; i < 15; ++i) {
      if (i >= 5 && i < 12) {
        EXPECT_TRUE(std::isnan(back[i])) << i;
      } else {
        EXPECT_EQ(back[i], 1.0f) << i;
      }
    }
    std::vector<float> all_bad(15, bad);
    i8.Store(all_bad.data(), row.data());
    i8.Load(row.data(), back.data());
    for (const float v : back) EXPECT_TRUE(std::isnan(v));
  }
}

}  // namespace
}  // namespace shardlm
