// Which heads, KV groups, latent heads, MLP columns and vocab rows a rank owns
// (DESIGN §3). Pure functions, tested without MPI.
#ifndef SHARDLM_SHARD_SHARD_H_
#define SHARDLM_SHARD_SHARD_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/dims.h"

namespace shardlm {

// Half-open [begin, end).
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  // The range of elements when each item is `width` elements wide (heads → rows).
  Range Scaled(int64_t width) const { return {begin * width, end * width}; }
  bool operator==(const Range&) const = default;
};

// Part `index` of `n` items split into `parts` contiguous ranges whose sizes
// differ by at most one (the first n % parts ranges get one more).
Range BalancedRange(int64_t n, int parts, int index);

// How a tensor is laid out across ranks (DESIGN §3; ggml-style split states).
enum class SplitState {
  kReplicated,   // every rank holds all of it
  kRowSharded,   // column-parallel linear: each rank holds a range of output rows
  kColSharded,   // row-parallel linear: each rank holds a range of input columns
  kPartialSum,   // activation: every rank holds a partial sum, all-reduce to finish
};

// How attention is split over the ranks (issue 18). kTensor: heads over the ranks (with their
// KV groups or latent heads, or MLA's single latent duplicated), every sequence on every rank.
// kData, MLA only (the GLA paper's data-parallel attention, appendix B.6): every rank holds all
// heads' attention weights and the whole latents of the sequences it owns, and attends for
// those rows only; the MLP and the vocabulary stay tensor-parallel.
enum class AttentionSplit { kTensor, kData };
const char* AttentionSplitName(AttentionSplit split);  // "tp", "dp"
// The --mla-attention value ("tp" or "dp"); anything else is an error naming the flag.
absl::StatusOr<AttentionSplit> ParseAttentionSplit(std::string_view name);

struct ShardPlan {
  int rank = 0;
  int size = 1;
  Range q_heads;           // query heads this rank computes
  // The heads whose cache rows it stores: KV heads (MHA..GTA) or latent heads (MLA/GLA).
  Range cache_heads;
  int cache_head_replication = 1;  // ranks that hold each of its cache heads
  Range mlp_cols;          // intermediate columns of gate/up, rows of down's input
  Range vocab_rows;        // LM head rows, i.e. the logit slice this rank computes
  int64_t cache_row_floats = 0;  // cache floats per token per layer on this rank
  AttentionSplit attention = AttentionSplit::kTensor;
  bool data_parallel_attention() const { return attention == AttentionSplit::kData; }
};

// OK if the model can be split over `size` ranks; otherwise an InvalidArgument
// that names the numbers and lists the rank counts that would work.
absl::Status ValidateTensorParallel(const ModelDims& dims, int size);

// Rank counts in [1, limit] that ValidateTensorParallel accepts.
std::vector<int> WorkingRankCounts(const ModelDims& dims, int limit);

// The plan of `rank` of `size`; fails exactly when ValidateTensorParallel does (kTensor), or
// (kData) for a model that is not MLA or an MLP or vocabulary smaller than `size`.
absl::StatusOr<ShardPlan> PlanShard(const ModelDims& dims, int rank, int size,
                                    AttentionSplit attention = AttentionSplit::kTensor);

}  // namespace shardlm

#endif  // SHARDLM_SHARD_SHARD_H_
