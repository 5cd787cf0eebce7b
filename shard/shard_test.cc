#include "shard/shard.h"

#include "gtest/gtest.h"

namespace shardlm {
namespace {

// The paper's XL shapes (d_h 128, d_r 64), 16 query heads.
ModelDims Xl(AttentionType type, int64_t kv_heads) {
  ModelDims d;
  d.type = type;
  d.hidden = 2048;
  d.intermediate = 5461;  // deliberately not divisible by 2, 3, 4
  d.layers = 1;
  d.vocab = 50257;
  d.num_heads = 16;
  d.num_kv_heads = kv_heads;
  d.head_dim = 128;
  d.rope_dim = IsGqaLike(type) ? 128 : 64;
  if (IsLatent(type)) {
    d.latent_dim = 512 / kv_heads;
    d.nope_dim = 128;
    d.v_head_dim = 128;
  }
  return d;
}

int64_t CacheAt(const ModelDims& d, int t) {
  auto plan = PlanShard(d, 0, t);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? plan->cache_row_floats : -1;
}

TEST(ShardTest, PaperCacheTable) {
  struct Row {
    AttentionType type;
    int64_t kv;
    int64_t at[3];  // TP = 1, 2, 4
  } rows[] = {
      {AttentionType::kMha, 16, {4096, 2048, 1024}},
      {AttentionType::kGqa, 4, {1024, 512, 256}},
      {AttentionType::kGta, 4, {576, 320, 192}},
      {AttentionType::kGla, 2, {576, 320, 320}},
      {AttentionType::kMla, 1, {576, 576, 576}},
      {AttentionType::kMqa, 1, {256, 256, 256}},
  };
  for (const Row& row : rows) {
    const ModelDims d = Xl(row.type, row.kv);
    EXPECT_EQ(CacheAt(d, 1), row.at[0]) << AttentionTypeName(row.type);
    EXPECT_EQ(CacheAt(d, 2), row.at[1]) << AttentionTypeName(row.type);
    EXPECT_EQ(CacheAt(d, 4), row.at[2]) << AttentionTypeName(row.type);
  }
}

TEST(ShardTest, BalancedRangeCoversExactly) {
  for (int64_t n : {0, 1, 5, 7, 16, 5461}) {
    for (int parts = 1; parts <= 9; ++parts) {
      int64_t next = 0, lo = n, hi = 0;
      for (int i = 0; i < parts; ++i) {
        Range r = BalancedRange(n, parts, i);
        EXPECT_EQ(r.begin, next);
        next = r.end;
        lo = std::min(lo, r.size());
        hi = std::max(hi, r.size());
      }
      EXPECT_EQ(next, n);
      EXPECT_LE(hi - lo, 1);
    }
  }
}

// Every query head is computed by exactly one rank, and that rank stores the
// KV/latent head the query head reads.
TEST(ShardTest, OwnershipIsConsistentForAllFamiliesAndRankCounts) {
  for (auto [type, kv] : std::vector<std::pair<AttentionType, int64_t>>{
           {AttentionType::kMha, 16}, {AttentionType::kGqa, 4}, {AttentionType::kGqa, 2},
           {AttentionType::kGta, 4}, {AttentionType::kGla, 2}, {AttentionType::kGla, 4},
           {AttentionType::kMla, 1}, {AttentionType::kMqa, 1}}) {
    const ModelDims d = Xl(type, kv);
    for (int t : WorkingRankCounts(d, 16)) {
      std::vector<int> q_owner(d.num_heads, 0);
      std::vector<int> kv_holders(kv, 0);
      int64_t mlp = 0, vocab = 0;
      for (int r = 0; r < t; ++r) {
        auto plan = PlanShard(d, r, t);
        ASSERT_TRUE(plan.ok());
        for (int64_t i = plan->q_heads.begin; i < plan->q_heads.end; ++i) {
          ++q_owner[i];
          const int64_t j = i / (d.num_heads / kv);
          EXPECT_GE(j, plan->cache_heads.begin);
          EXPECT_LT(j, plan->cache_heads.end);
        }
        for (int64_t j = plan->cache_heads.begin; j < plan->cache_heads.end; ++j) ++kv_holders[j];
        EXPECT_EQ(plan->cache_heads.size(), std::max<int64_t>(kv / t, 1));
        mlp += plan->mlp_cols.size();
        vocab += plan->vocab_rows.size();
      }
      for (int c : q_owner) EXPECT_EQ(c, 1);
      for (int c : kv_holders) EXPECT_EQ(c, std::max<int64_t>(t / kv, 1));
      EXPECT_EQ(mlp, d.intermediate);
      EXPECT_EQ(vocab, d.vocab);
    }
  }
}

// Found by fuzz/config_fuzz.cc (corpus/config/regression-huge-head-count): the
// list of working counts looped over every count up to h_q, hanging for minutes.
TEST(ShardTest, WorkingCountsOfAHugeHeadCountAreQuick) {
  ModelDims d = Xl(AttentionType::kMha, 4);
  d.num_heads = d.num_kv_heads = 2147483647;  // prime
  const absl::Status s = ValidateTensorParallel(d, 2);
  EXPECT_NE(s.message().find("rank counts that work: 1"), std::string::npos) << s;
  d.num_heads = d.num_kv_heads = 2 * 3 * 5 * 7 * 11 * 13 * 17 * 19 * 23;  // 223092870
  d.intermediate = d.vocab = 1 << 30;
  EXPECT_EQ(WorkingRankCounts(d, 12), (std::vector<int>{1, 2, 3, 5, 6, 7, 10, 11}));
}

TEST(ShardTest, ErrorsNameNumbersAndWorkingCounts) {
  ModelDims d = Xl(AttentionType::kGqa, 4);
  d.num_heads = 12;
  d.num_kv_heads = 4;
  absl::Status s = ValidateTensorParallel(d, 8);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("h_q=12"), std::string::npos) << s;
  EXPECT_NE(s.message().find("8 ranks"), std::string::npos) << s;
  EXPECT_NE(s.message().find("1, 2, 4, 12"), std::string::npos) << s;  // 3, 6: not with h_kv=4
  s = ValidateTensorParallel(d, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("KV heads h_kv=4"), std::string::npos) << s;

  ModelDims gla = Xl(AttentionType::kGla, 2);
  gla.num_heads = 6;
  s = ValidateTensorParallel(gla, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("latent heads h_c=2"), std::string::npos) << s;
  EXPECT_FALSE(PlanShard(gla, 0, 3).ok());
  EXPECT_FALSE(PlanShard(gla, 0, 0).ok());
  EXPECT_FALSE(PlanShard(gla, 2, 2).ok());

  ModelDims tiny = Xl(AttentionType::kMha, 16);
  tiny.vocab = 3;
  s = ValidateTensorParallel(tiny, 4);
  EXPECT_NE(s.message().find("vocab_size=3"), std::string::npos) << s;
}

}  // namespace
}  // namespace shardlm
