// Resolved model dimensions: config.json with every default filled in and
// validated (engine/config.cc builds it). Pure data, shared by shard/ and engine/.
#ifndef SHARDLM_SHARD_DIMS_H_
#define SHARDLM_SHARD_DIMS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace shardlm {

enum class AttentionType { kMha, kMqa, kGqa, kGta, kMla, kGla };

const char* AttentionTypeName(AttentionType type);
inline bool IsLatent(AttentionType t) {
  return t == AttentionType::kMla || t == AttentionType::kGla;
}
inline bool IsGqaLike(AttentionType t) {
  return t == AttentionType::kMha || t == AttentionType::kMqa || t == AttentionType::kGqa;
}

// RoPE frequency scaling as Hugging Face computes it (transformers' modeling_rope_utils):
// `linear` divides every frequency by factor; `llama3` divides the low frequencies (wavelength
// above original_max_positions / low_freq_factor) by factor, keeps the high ones (below
// original_max_positions / high_freq_factor) and blends in between; `yarn` blends
// interpolated (÷ factor) and original frequencies over a linear ramp between the correction
// dims of beta_fast and beta_slow, and multiplies cos and sin by attention_factor.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3, kYarn };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;        // llama3
  double high_freq_factor = 4.0;       // llama3
  int64_t original_max_positions = 0;  // llama3, yarn
  double beta_fast = 32.0;             // yarn
  double beta_slow = 1.0;              // yarn
  bool truncate = true;                // yarn: floor/ceil the correction range
  double attention_factor = 1.0;       // yarn: cos/sin multiplier (resolved from mscale)
};
const char* RopeScalingName(RopeScaling::Type type);  // "none", "linear", "llama3", "yarn"

struct ModelDims {
  AttentionType type = AttentionType::kGqa;
  int64_t hidden = 0;        // d
  int64_t intermediate = 0;  // MLP width
  int64_t layers = 0;
  int64_t vocab = 0;
  int64_t num_heads = 0;  // h_q
  // h_kv for MHA/MQA/GQA/GTA; h_c (latent heads) for MLA/GLA.
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;        // d_h (MHA..GTA); unused by MLA/GLA
  int64_t rope_dim = 0;        // rotated channels: d_h for MHA..GQA, d_r otherwise
  int64_t latent_dim = 0;      // d_c per latent head (MLA/GLA)
  int64_t nope_dim = 0;        // d_n (MLA/GLA)
  int64_t v_head_dim = 0;      // d_v (MLA/GLA)
  int64_t q_lora_rank = 0;     // 0: plain q_proj
  int64_t sliding_window = 0;  // 0: full causal attention
  int64_t max_positions = 0;
  double rms_eps = 1e-6;
  double rope_theta = 10000.0;
  double softmax_scale = 0.0;  // resolved: never 0 after loading
  bool rope_interleave = false;
  RopeScaling rope_scaling;
  bool qk_norm = false;  // per-head RMSNorm of q and k before RoPE (Qwen3: q_norm, k_norm)
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  bool byte_tokenizer = false;

  // Width of one query head's scores input (q·k): d_h, or d_n + d_r.
  int64_t QkHeadDim() const { return IsLatent(type) ? nope_dim + rope_dim : head_dim; }
  // Width of one head's attention output (input of o_proj): d_h, or d_v.
  int64_t VHeadDim() const { return IsLatent(type) ? v_head_dim : head_dim; }
  // Cache floats per token per layer for a rank holding `kv_local` KV/latent heads.
  int64_t CacheRowFloats(int64_t kv_local) const;
  // The same row as segments, in order: each KV head's K and then each one's V (MHA..GQA),
  // each tied state then the RoPE key (GTA), each latent head then the RoPE key (MLA/GLA).
  // An int8 cache keeps one scale per segment.
  std::vector<int64_t> CacheRowSegments(int64_t kv_local) const;
};

}  // namespace shardlm

#endif  // SHARDLM_SHARD_DIMS_H_
