#include "shard/shard.h"

#include <algorithm>

#include "absl/strings/str_join.h"
#include "base/status.h"

namespace shardlm {

const char* RopeScalingName(RopeScaling::Type type) {
  switch (type) {
    case RopeScaling::Type::kNone:
      return "none";
    case RopeScaling::Type::kLinear:
      return "linear";
    case RopeScaling::Type::kLlama3:
      return "llama3";
    case RopeScaling::Type::kYarn:
      return "yarn";
  }
  return "?";
}

const char* AttentionTypeName(AttentionType type) {
  switch (type) {
    case AttentionType::kMha:
      return "mha";
    case AttentionType::kMqa:
      return "mqa";
    case AttentionType::kGqa:
      return "gqa";
    case AttentionType::kGta:
      return "gta";
    case AttentionType::kMla:
      return "mla";
    case AttentionType::kGla:
      return "gla";
  }
  return "?";
}

int64_t ModelDims::CacheRowFloats(int64_t kv_local) const {
  if (IsGqaLike(type)) return 2 * head_dim * kv_local;                     // K and V
  if (type == AttentionType::kGta) return head_dim * kv_local + rope_dim;  // tied + RoPE key
  return latent_dim * kv_local + rope_dim;                                 // latents + RoPE key
}

std::vector<int64_t> ModelDims::CacheRowSegments(int64_t kv_local) const {
  std::vector<int64_t> segments;
  if (IsGqaLike(type)) {
    segments.assign(static_cast<size_t>(2 * kv_local), head_dim);
  } else {
    segments.assign(static_cast<size_t>(kv_local), type == AttentionType::kGta ? head_dim : latent_dim);
    if (rope_dim > 0) segments.push_back(rope_dim);
  }
  return segments;
}

Range BalancedRange(int64_t n, int parts, int index) {
  CHECK_GT(parts, 0);
  CHECK(index >= 0 && index < parts);
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = index * base + std::min<int64_t>(index, extra);
  return {begin, begin + base + (index < extra ? 1 : 0)};
}

namespace {

const char* KvName(const ModelDims& dims) {
  return IsLatent(dims.type) ? "latent heads h_c" : "KV heads h_kv";
}

// The reason `size` ranks cannot work, or empty.
std::string WhyNot(const ModelDims& dims, int size) {
  const int64_t t = size;
  if (size < 1) return absl::StrCat("rank count ", size, " must be at least 1");
  if (dims.num_heads % t != 0) {
    return absl::StrCat("query heads h_q=", dims.num_heads, " are not divisible by ", t, " ranks");
  }
  const int64_t kv = dims.num_kv_heads;
  if (kv % t != 0 && t % kv != 0) {
    return absl::StrCat(KvName(dims), "=", kv, " and ", t,
                        " ranks: the rank count must divide it or be a multiple of it");
  }
  if (dims.intermediate < t) {
    return absl::StrCat("intermediate_size=", dims.intermediate, " is smaller than ", t, " ranks");
  }
  if (dims.vocab < t) {
    return absl::StrCat("vocab_size=", dims.vocab, " is smaller than ", t, " ranks");
  }
  return "";
}

}  // namespace

std::vector<int> WorkingRankCounts(const ModelDims& dims, int limit) {
  // A working count divides h_q, so only divisors are tried: O(sqrt(h_q)) even
  // when a hostile config.json sets h_q near 2^31 (looping to `limit` hung).
  std::vector<int> out;
  const int64_t h_q = dims.num_heads;
  for (int64_t d = 1; d * d <= h_q; ++d) {
    if (h_q % d != 0) continue;
    for (const int64_t t : {d, h_q / d}) {
      if (t <= limit && WhyNot(dims, static_cast<int>(t)).empty()) {
        out.push_back(static_cast<int>(t));
      }
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

absl::Status ValidateTensorParallel(const ModelDims& dims, int size) {
  const std::string why = WhyNot(dims, size);
  if (why.empty()) return absl::OkStatus();
  const std::vector<int> ok = WorkingRankCounts(dims, static_cast<int>(dims.num_heads));
  return absl::InvalidArgumentError(
      absl::StrCat("cannot split this ", AttentionTypeName(dims.type), " model over ", size,
                   " ranks: ", why, "; rank counts that work: ", absl::StrJoin(ok, ", ")));
}

const char* AttentionSplitName(AttentionSplit split) {
  return split == AttentionSplit::kData ? "dp" : "tp";
}

absl::StatusOr<AttentionSplit> ParseAttentionSplit(std::string_view name) {
  if (name == "tp") return AttentionSplit::kTensor;
  if (name == "dp") return AttentionSplit::kData;
  return absl::InvalidArgumentError(
      absl::StrCat("--mla-attention must be tp or dp, got \"", std::string(name), "\""));
}

absl::StatusOr<ShardPlan> PlanShard(const ModelDims& dims, int rank, int size,
                                    AttentionSplit attention) {
  if (attention == AttentionSplit::kData) {
    if (dims.type != AttentionType::kMla) {
      return absl::InvalidArgumentError(
          absl::StrCat("data-parallel attention (--mla-attention dp) is for MLA models; this one "
                       "is ", AttentionTypeName(dims.type)));
    }
    if (size < 1 || dims.intermediate < size || dims.vocab < size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot split this model's MLP (intermediate_size=", dims.intermediate,
          ") and vocabulary (", dims.vocab, ") over ", size, " ranks"));
    }
  } else {
    RETURN_IF_ERROR(ValidateTensorParallel(dims, size));
  }
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " outside 0..", size - 1));
  }
  ShardPlan plan;
  plan.rank = rank;
  plan.size = size;
  plan.attention = attention;
  if (attention == AttentionSplit::kData) {
    // Every head and the whole latent, for the rows of the sequences this rank owns.
    plan.q_heads = {0, dims.num_heads};
    plan.cache_heads = {0, dims.num_kv_heads};
    plan.mlp_cols = BalancedRange(dims.intermediate, size, rank);
    plan.vocab_rows = BalancedRange(dims.vocab, size, rank);
    plan.cache_row_floats = dims.CacheRowFloats(plan.cache_heads.size());
    return plan;
  }
  plan.q_heads = BalancedRange(dims.num_heads, size, rank);
  // Query head i reads KV/latent head i / g; the owned KV heads are exactly those
  // read by the owned query heads (contiguous groups).
  const int64_t group = dims.num_heads / dims.num_kv_heads;
  plan.cache_heads = {plan.q_heads.begin / group, (plan.q_heads.end - 1) / group + 1};
  plan.cache_head_replication =
      size > dims.num_kv_heads ? static_cast<int>(size / dims.num_kv_heads) : 1;
  plan.mlp_cols = BalancedRange(dims.intermediate, size, rank);
  plan.vocab_rows = BalancedRange(dims.vocab, size, rank);
  plan.cache_row_floats = dims.CacheRowFloats(plan.cache_heads.size());
  return plan;
}

}  // namespace shardlm
