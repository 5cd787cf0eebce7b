// One rank's weights: exactly its shard of every layer (DESIGN §3). Linear layers keep the
// checkpoint's dtype (f32, bf16 or f16; see Linear), except kv_b_proj, which latent attention
// reads as floats, and the embedding table (its checkpoint dtype too; one row is widened per
// token); norms and biases are f32.
#ifndef SHARDLM_ENGINE_WEIGHTS_H_
#define SHARDLM_ENGINE_WEIGHTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "engine/safetensors.h"
#include "shard/shard.h"

namespace shardlm {

// HF tensor names and full shapes of a checkpoint (DESIGN §6). Biases are
// optional in checkpoints and are not listed here.
struct TensorSpec {
  std::string name;            // without the ".weight" suffix for linears
  std::vector<int64_t> shape;  // full (unsharded) shape
  bool is_linear = false;      // "<name>.weight", and "<name>.bias" may exist
};
std::vector<TensorSpec> CheckpointTensors(const ModelDims& dims);
std::string LayerPrefix(int64_t layer);  // "model.layers.{i}."

// Split states (DESIGN §3) written next to each field. Shapes are local.
struct AttentionWeights {
  // MHA/MQA/GQA/GTA and latent without q LoRA: row-sharded by query head.
  Linear q_proj;                 // [hq_l · qk_head_dim, d]
  Linear q_a_proj;               // replicated [q_lora_rank, d]
  std::vector<float> q_a_norm;   // replicated [q_lora_rank]
  Linear q_b_proj;               // row-sharded [hq_l · (d_n + d_r), q_lora_rank]
  Linear k_proj, v_proj;         // row-sharded by KV head [kv_l · d_h, d]
  Linear kv_proj;                // GTA tied state, row-sharded [kv_l · d_h, d]
  Linear k_rope_proj;            // GTA shared RoPE key, replicated [d_r, d]
  Linear kv_a_proj;              // latent: own latent rows + RoPE key rows [kv_l · d_c + d_r, d]
  std::vector<float> kv_a_norm;  // latent: own chunks [kv_l · d_c], empty if absent
  Linear kv_b_proj;              // latent: row-sharded [hq_l · (d_n + d_v), d_c]; always f32
  Linear o_proj;                 // col-sharded [d, hq_l · v_head_dim]; bias on rank 0 only
};

struct LayerWeights {
  std::vector<float> attn_norm;  // replicated [d]
  std::vector<float> mlp_norm;   // replicated [d]
  AttentionWeights attn;
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
