// Fuzz target: config.json → ModelConfig → ModelDims (engine/config.h), then
// what start-up derives from the dims before touching weights: the handshake
// fingerprint and the tensor-parallel plans (shard/shard.h).
// Contract: any text either fails with a status or resolves to dims that
// (1) survive a write/read round trip unchanged, and (2) give, for every rank
// count, either a clear error or plans whose head, MLP and vocab ranges
// partition the model — with no crash, hang or undefined behaviour.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/config.h"
#include "fuzz/fuzz_check.h"
#include "shard/shard.h"

namespace shardlm {
namespace {

// Rank counts a job might use; 8 also exercises replicated KV heads.
constexpr int kMaxRanks = 8;

// `ranges` (one per rank, in rank order) tile [0, n).
bool Tiles(const std::vector<Range>& ranges, int64_t n) {
  int64_t next = 0;
  for (const Range& r : ranges) {
    if (r.begin != next || r.end < r.begin) return false;
    next = r.end;
  }
  return next == n;
}

void CheckPlans(const ModelDims& dims) {
  const std::vector<int> working = WorkingRankCounts(dims, kMaxRanks);
  for (int size = 1; size <= kMaxRanks; ++size) {
    const absl::Status valid = ValidateTensorParallel(dims, size);
    const bool listed = std::find(working.begin(), working.end(), size) != working.end();
    FUZZ_CHECK(valid.ok() == listed, absl::StrCat(size, " ranks: ", valid.ToString()));
    std::vector<Range> q, mlp, vocab;
    for (int rank = 0; rank < size; ++rank) {
      const absl::StatusOr<ShardPlan> plan = PlanShard(dims, rank, size);
      FUZZ_CHECK(plan.ok() == valid.ok(),
                 absl::StrCat("rank ", rank, " of ", size, ": ", plan.status().ToString()));
      if (!plan.ok()) break;
      q.push_back(plan->q_heads);
      mlp.push_back(plan->mlp_cols);
      vocab.push_back(plan->vocab_rows);
      FUZZ_CHECK(plan->cache_heads.begin >= 0 && plan->cache_heads.end <= dims.num_kv_heads &&
                     plan->cache_heads.size() >= 1,
                 absl::StrCat("rank ", rank, " of ", size, " owns cache heads [", plan->cache_heads.begin,
                              ", ", plan->cache_heads.end, ") of ", dims.num_kv_heads));
      FUZZ_CHECK(plan->cache_row_floats > 0,
                 absl::StrCat("cache_row_floats ", plan->cache_row_floats));
    }
    if (!valid.ok()) continue;
    FUZZ_CHECK(Tiles(q, dims.num_heads), absl::StrCat(size, " ranks: query heads"));
    FUZZ_CHECK(Tiles(mlp, dims.intermediate), absl::StrCat(size, " ranks: MLP columns"));
    FUZZ_CHECK(Tiles(vocab, dims.vocab), absl::StrCat(size, " ranks: vocab rows"));
  }
}

}  // namespace
}  // namespace shardlm

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;  // NOLINT(build/namespaces): a C entry point
  const std::string json(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<ModelConfig> config = ParseModelConfig(json, "config.json");
  if (!config.ok()) return 0;
  const absl::StatusOr<ModelDims> dims = ResolveDims(*config, "config.json");
  if (!dims.ok()) return 0;

  // make-model and the tests write configs with ModelConfigToJson: reading the
  // text back must give the same model (same handshake fingerprint).
  const std::string written = ModelConfigToJson(*config);
  const absl::StatusOr<ModelConfig> reread = ParseModelConfig(written, "written");
  FUZZ_CHECK(reread.ok(), absl::StrCat(reread.status().ToString(), "\n", written));
  const absl::StatusOr<ModelDims> redims = ResolveDims(*reread, "written");
  FUZZ_CHECK(redims.ok(), absl::StrCat(redims.status().ToString(), "\n", written));
  FUZZ_CHECK(DimsFingerprint(*redims) == DimsFingerprint(*dims),
             absl::StrCat("fingerprint changed by a write/read round trip\n", written));

  CheckPlans(*dims);
  return 0;
}
