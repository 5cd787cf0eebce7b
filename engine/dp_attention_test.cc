// MLA's data-parallel attention (ShardPlan kData, issue 18) under mpirun with any rank count:
// the forward pass of a ragged batch — several sequences' prompts, then one decode token each,
// reading the rows the first pass cached — gives rank 0 the logits of the one-rank model: bit
// for bit at one rank (the attention is whole either way), within the MLP's summation-order
// rounding at more. A row's result does not depend on which rank owns its sequence.
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/mpi_test_main.h"
#include "engine/make_model.h"
#include "engine/model.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

constexpr int64_t kPageSize = 4;
const std::vector<int64_t> kPromptLengths = {3, 1, 7, 2, 5};

// Logits (rank 0) of two passes over the sequences of kPromptLengths: every prompt at once,
// then one more token each. Sequence s belongs to rank (s + shift) % ranks under kData.
std::vector<float> TwoPasses(Model& model, Comm& comm, int shift) {
  const int64_t seqs = static_cast<int64_t>(kPromptLengths.size());
  const int64_t pages_per_seq = 4;  // 16 positions: the longest prompt plus one
  PagedKvCache cache(model.dims().layers, seqs * pages_per_seq, kPageSize,
                     model.plan().cache_row_floats);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(seqs));
  for (int64_t s = 0; s < seqs; ++s) {
    tables[s].resize(static_cast<size_t>(pages_per_seq));
    std::iota(tables[s].begin(), tables[s].end(), static_cast<int32_t>(s * pages_per_seq));
  }
  auto owned = [&](int64_t s) {
    return !model.plan().data_parallel_attention() || (s + shift) % comm.size() == comm.rank();
  };
  std::vector<float> all, logits;
  ForwardBatch prompts, next;
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t t = 0; t < kPromptLengths[s]; ++t) {
      if (owned(s)) prompts.attention_rows.push_back(static_cast<int32_t>(prompts.slots.size()));
      prompts.token_ids.push_back(static_cast<int32_t>((7 * s + 3 * t + 1) % model.dims().vocab));
      prompts.slots.push_back({tables[s], t});
    }
    prompts.logit_rows.push_back(static_cast<int32_t>(prompts.slots.size() - 1));
    if (owned(s)) next.attention_rows.push_back(static_cast<int32_t>(s));
    next.token_ids.push_back(static_cast<int32_t>((11 * s + 5) % model.dims().vocab));
    next.slots.push_back({tables[s], kPromptLengths[s]});
    next.logit_rows.push_back(static_cast<int32_t>(s));
  }
  for (const ForwardBatch* batch : {&prompts, &next}) {
    absl::Status status = model.Forward(*batch, cache, comm, &logits);
    EXPECT_TRUE(status.ok()) << status;
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(DataParallelAttentionTest, MatchesOneRankWhoeverOwnsEachSequence) {
  Comm& comm = TestComm();
  // One directory per rank count: ctest runs the np2, np3 and np4 jobs side by side, and one
  // job's rank 0 removing the model another job was reading made that job's rank 0 leave the
  // test early while its other ranks waited in AgreeOnStatus below.
  const std::string dir = absl::StrCat(::testing::TempDir(), "/dp_attention_mla_np", comm.size());
  absl::Status made;
  if (comm.rank() == 0) {
    std::filesystem::remove_all(dir);
    MakeModelOptions options;
    options.attention = "mla";
    options.seed = 5;  // the tiny preset keeps its biases (o_proj's is added once per row)
    made = MakeModel(options, dir);
  }
  ASSERT_TRUE(AgreeOnStatus(comm, made).ok()) << made;

  LocalComm local;
  auto one = Model::Load(dir, 0, 1);
  ASSERT_TRUE(one.ok()) << one.status();
  const std::vector<float> want = TwoPasses(**one, local, 0);

  auto dp = Model::Load(dir, comm.rank(), comm.size(), AttentionSplit::kData);
  ASSERT_TRUE(dp.ok()) << dp.status();
  ASSERT_TRUE((*dp)->plan().data_parallel_attention());
  std::vector<std::vector<float>> got;
  for (int shift = 0; shift < 2; ++shift) got.push_back(TwoPasses(**dp, comm, shift));
  if (comm.rank() != 0) return;
  ASSERT_EQ(got[0].size(), want.size());
  EXPECT_EQ(got[0], got[1]) << "a row's logits depend on the rank that owns its sequence";
  if (comm.size() == 1) {
    EXPECT_EQ(got[0], want);
    return;
  }
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[0][i], want[i], 1e-4f * (1.0f + std::abs(want[i]))) << "logit " << i;
  }
}

TEST(DataParallelAttentionTest, RefusesOtherFamilies) {
  ModelDims dims;
  dims.type = AttentionType::kGla;
  dims.num_heads = 4;
  dims.num_kv_heads = 2;
  dims.intermediate = 64;
  dims.vocab = 100;
  absl::StatusOr<ShardPlan> plan = PlanShard(dims, 0, 2, AttentionSplit::kData);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("for MLA models; this one is gla"), std::string::npos)
      << plan.status();
}

}  // namespace
}  // namespace shardlm
