// One rank's weights: exactly its shard of every layer (DESIGN §3). Linear layers keep the
// checkpoint's dtype (f32, bf16 or f16; see Linear), and so does the embedding table (one row
// is widened per token); norms and biases are f32.
#ifndef SHARDLM_ENGINE_WEIGHTS_H_
#define SHARDLM_ENGINE_WEIGHTS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/ops.h"
#include "engine/safetensors.h"
#include "shard/shard.h"

namespace shardlm {

// HF tensor names and full shapes of a checkpoint (DESIGN §6). Biases and optional norms
// are not listed.
std::vector<TensorSpec> CheckpointTensors(const ModelDims& dims);
std::string LayerPrefix(int64_t layer);  // "model.layers.{i}."

// Split states (DESIGN §3) written next to each field. Shapes are local.
struct LayerWeights {
  std::vector<float> attn_norm;  // replicated [d]
  std::vector<float> mlp_norm;   // replicated [d]
  std::unique_ptr<AttentionWeights> attn;  // the family's struct (attention/<family>.h)
  Linear gate, up;               // row-sharded [mlp_l, d]
  Linear down;                   // col-sharded [d, mlp_l]; bias on rank 0 only
};

struct ModelWeights {
  // Row-sharded by vocab like the head: this rank's rows [vocab_l, d] of the table, checkpoint
  // dtype (one row widened per token it owns); empty when tied: lm_head holds the same rows.
  Linear embed;
  std::vector<float> embed_row0;  // replicated row 0 of the table, for the weights fingerprint
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // replicated [d]
  Linear lm_head;                 // row-sharded by vocab [vocab_l, d]
  bool tied = false;              // tie_word_embeddings
  // This rank's vocab rows of the embedding table, [vocab_l, d].
  const Linear& embedding() const { return tied ? lm_head : embed; }
  int64_t bytes() const;
};

// Loads the rank's slices from the checkpoint directory. Checks every shape,
// that norms are finite, and that no tensor is missing or unexpected.
absl::StatusOr<ModelWeights> LoadWeights(SafetensorsDir& dir, const ModelDims& dims,
                                         const ShardPlan& plan);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_WEIGHTS_H_
