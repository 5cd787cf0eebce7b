// The forward pass of one rank (DESIGN §2, §3): embedding, the layer loop with
// two all-reduces per layer, final norm and the vocab-parallel LM head whose
// logits rank 0 gathers.
#ifndef SHARDLM_ENGINE_MODEL_H_
#define SHARDLM_ENGINE_MODEL_H_

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "attention/kv_cache.h"
#include "comm/comm.h"
#include "engine/weights.h"
#include "shard/shard.h"

namespace shardlm {

// A ragged batch: tokens of one or more sequences, each at its position.
struct ForwardBatch {
  std::vector<int32_t> token_ids;   // [n] the input tokens
  std::vector<QueryToken> slots;    // [n] where each token's cache row goes (block table,
                                    // position); the block tables must outlive Forward
  std::vector<int32_t> logit_rows;  // batch rows whose logits rank 0 receives, in order
  // Data-parallel attention only (ShardPlan::attention kData): the rows whose attention this
  // rank computes — the tokens of the sequences it owns, whose cache rows live in its pool
  // (the other rows' slots are not read). Every row has exactly one owner.
  std::vector<int32_t> attention_rows;
};

// Where a forward pass spent its time; accumulated until Reset.
struct ForwardStats {
  int64_t forwards = 0;
  int64_t allreduce_calls = 0;
  int64_t allreduce_bytes = 0;
  int64_t allreduce_ns = 0;     // wall time inside AllReduceSum (includes waiting for peers)
  double gather_seconds = 0.0;  // wall time inside the logits Gatherv (not the LM-head matmul)
  // When set (the bench does, for its timed steps), the wall time of every AllReduceSum call
  // in order, so that the ranks can compare call by call (see bench.cc, TimeForward). Off by
  // default: a decode job's forward passes would grow it without bound.
  bool record_allreduce_calls = false;
  std::vector<int64_t> allreduce_call_ns;
  // Zeroes the figures; keeps whether calls are recorded.
  void Reset() {
    const bool record = record_allreduce_calls;
    *this = ForwardStats();
    record_allreduce_calls = record;
  }
};

class Model {
 public:
  // Reads config.json, validates the split over `size` ranks and loads the
  // shard of `rank`. Errors are local to this rank; callers agree on them.
  static absl::StatusOr<std::unique_ptr<Model>> Load(
      const std::string& model_dir, int rank, int size,
      AttentionSplit attention = AttentionSplit::kTensor);

  // Runs every layer over the batch, writing each token's cache rows. On rank 0
  // `logits` becomes [logit_rows, vocab]; on other ranks it is left empty.
  // Must be called by all ranks with the same batch.
  absl::Status Forward(const ForwardBatch& batch, PagedKvCache& cache, Comm& comm,
                       std::vector<float>* logits);

  // Allocates the matmul scratch for batches of up to `max_tokens` tokens and the attention
  // kernels' per-thread scratch, on every compute thread, so the step loop does not allocate
  // them later (call once at start-up, after SetComputeThreads).
  void Reserve(int64_t max_tokens);

  const ModelDims& dims() const { return dims_; }
  // Caps the context length below max_position_embeddings (--max-model-len); every rank must
  // apply the same cap (the Hello's config fingerprint covers it).
  void CapContext(int64_t max_positions) {
    dims_.max_positions = std::min(dims_.max_positions, max_positions);
  }
  const ShardPlan& plan() const { return plan_; }
  const ModelWeights& weights() const { return weights_; }
  ForwardStats& stats() { return stats_; }

 private:
  Model(ModelDims dims, ShardPlan plan, ModelWeights weights);

  // Vocab-parallel LM head: [m, d] normalized rows → rank 0's [m, vocab].
  absl::Status GatherLogits(const float* hidden, int64_t m, Comm& comm, std::vector<float>* logits);
  // Data-parallel attention: this rank's rows (batch.attention_rows) through the attention
  // block, whole; zeros in the other rows of out [n, d], which the all-reduce fills.
  void AttendOwnedRows(const AttentionWeights& w, const float* xn, const ForwardBatch& batch,
                       const CacheView& cache, float* out);
  // Sums this rank's partial [n, d] with the other ranks' (timed into stats_).
  absl::Status AllReduce(float* partial, int64_t count, Comm& comm);

  ModelDims dims_;
  ShardPlan plan_;
  ModelWeights weights_;
  std::unique_ptr<AttentionBlock> attention_;
  ForwardStats stats_;
  // Activations, grown on demand and reused across steps.
  std::vector<float> x_, xn_, partial_, gate_, up_, head_in_, local_logits_, gathered_;
  std::vector<int> gather_counts_;
  std::vector<float> owned_in_, owned_out_;  // AttendOwnedRows' compacted rows
  std::vector<QueryToken> owned_slots_;
};

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_MODEL_H_
