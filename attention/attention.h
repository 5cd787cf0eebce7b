// The attention half of a layer, one file per family (gqa.cc: MHA, MQA, GQA; gta.cc: GTA;
// latent.cc: MLA and GLA). Each family file holds everything of the family: its checkpoint
// tensors and weight struct, the block that projects, rotates, writes the cache rows and
// calls the kernel, and the kernel over the paged cache with its naive reference.
//
// The kernels: the block projects, rotates and writes the new rows into the cache first; a
// kernel then computes, for every query token, softmax(scale · q·k) · v over positions
// [Lo, pos]. All shapes are this rank's local shard. Outputs are fully overwritten. The fast
// kernels split work over the per-rank compute pool (base/thread_pool.h) and give the same
// bits at any thread count, page size, page placement and batch composition: a query's
// result depends only on its own context.
#ifndef SHARDLM_ATTENTION_ATTENTION_H_
#define SHARDLM_ATTENTION_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/kv_cache.h"
#include "kernels/ops.h"
#include "shard/shard.h"

namespace shardlm {

// A tensor of the checkpoint layout (DESIGN §6): HF name and full (unsharded) shape.
struct TensorSpec {
  std::string name;            // without the ".weight" suffix for linears
  std::vector<int64_t> shape;  // full (unsharded) shape
  bool is_linear = false;      // "<name>.weight", and "<name>.bias" may exist
};

// Where a rank's slices of the checkpoint come from (engine/weights.cc implements it over
// the safetensors files). Every call checks the tensor's full shape; errors name the tensor.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Column-parallel: the rows `ranges` (concatenated in order) of the linear `name`
  // (.weight [rows_total, in], optional .bias [rows_total]), in the checkpoint's dtype.
  virtual absl::StatusOr<Linear> Rows(const std::string& name, int64_t rows_total, int64_t in,
                                      std::span<const Range> ranges) = 0;
  absl::StatusOr<Linear> Rows(const std::string& name, int64_t rows_total, int64_t in, Range r) {
    return Rows(name, rows_total, in, std::span<const Range>(&r, 1));
  }
  // Row-parallel: input columns `cols` of the linear `name` [out, in_total]. Its bias is a
  // full [out] vector that must be added once, so only `keep_bias` ranks keep it.
  virtual absl::StatusOr<Linear> Cols(const std::string& name, int64_t out, int64_t in_total,
                                      Range cols, bool keep_bias) = 0;
  // Elements `r` of the 1-D tensor `name` [n] (a norm weight), as f32; must be finite.
  virtual absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n,
                                                    Range r) = 0;
  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n) {
    return Vector(name, n, Range{0, n});
  }
  virtual bool Has(const std::string& name) const = 0;
};

// One layer's attention weights on one rank; each family's file defines its own.
struct AttentionWeights {
  virtual ~AttentionWeights() = default;
  // Every linear layer, for byte and FLOP counts.
  virtual std::vector<const Linear*> Linears() const = 0;
  // Resident bytes: linears, norms and biases.
  virtual int64_t bytes() const;
};

// The per-rank state of one family's attention (shapes, RoPE tables, scratch), shared by all
// layers; weights and cache are per layer.
class AttentionBlock {
 public:
  virtual ~AttentionBlock() = default;
  // xn: [n, d] normalized inputs of the batch's tokens. Writes each token's cache row (at its
  // slot), then attends, and writes this rank's partial sum of o_proj into out [n, d] (the
  // caller all-reduces it). `w` is the weights struct of this block's family.
  virtual void Forward(const AttentionWeights& w, const float* xn,
                       std::span<const QueryToken> tokens, const CacheView& cache, float* out) = 0;
  // Grows the kernels' per-thread scratch on every compute thread (start-up, after
  // SetComputeThreads), so that decode steps do not allocate.
  virtual void Reserve() = 0;
};

// A family: the checkpoint layout of its attention tensors, loading a rank's shard, and the
// block that runs it.
class AttentionFamily {
 public:
  static const AttentionFamily& Of(AttentionType type);
  virtual ~AttentionFamily() = default;
  // The attention tensors of one layer, full shapes, under `prefix`
  // ("model.layers.{i}.self_attn."). Optional tensors (norms a checkpoint may omit) are not
  // listed.
  virtual void AppendTensors(const ModelDims& dims, const std::string& prefix,
                             std::vector<TensorSpec>* specs) const = 0;
  // This rank's shard of one layer's attention tensors.
  virtual absl::StatusOr<std::unique_ptr<AttentionWeights>> Load(
      WeightSource& source, const ModelDims& dims, const ShardPlan& plan,
      const std::string& prefix) const = 0;
  virtual std::unique_ptr<AttentionBlock> MakeBlock(const ModelDims& dims,
                                                    const ShardPlan& plan) const = 0;
  // Multiply-adds of the decode kernel per query token and cached position it attends to,
  // over this rank's query heads (the score dot products and the value sums): the attention
  // arithmetic of `shardlm bench`'s compute bound.
  virtual int64_t DecodeMacsPerPosition(const ModelDims& dims, const ShardPlan& plan) const = 0;
};

// Grow-only scratch buffer: blocks reuse it across steps instead of allocating.
inline float* Scratch(std::vector<float>& buffer, int64_t floats) {
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(static_cast<size_t>(floats));
  return buffer.data();
}

// Log-sum-exp merge of partial attention results over disjoint key ranges
// (natural log): lse = M + ln Σ e^(lse_i − M), o = Σ e^(lse_i − lse) o_i.
// parts: [num_parts, dim] outputs, lses: [num_parts]; writes out [dim], returns lse.
float MergeLse(std::span<const float> parts, std::span<const float> lses, int64_t dim, float* out);

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_ATTENTION_H_
