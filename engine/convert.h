// `shardlm convert`: a GQA (or MHA/MQA) checkpoint rewritten as MLA or GLA, after TransMLA
// (docs/CONVERSION.md has the method and what it costs; tests/reference/convert_ref.py is
// the NumPy reference this code must reproduce).
//
// Per layer: RoRoPE concentrates each RoPE frequency's keys across the KV groups into one
// shared RoPE key (the top eigenvector of the groups' key rows for that frequency); what it
// cannot carry moves, unrotated, into each group's non-RoPE key; latent head j compresses
// the residual keys and values of the groups its query heads read by SVD (LAPACKE), so a
// GLA latent stays shardable the way the KV groups were.
#ifndef SHARDLM_ENGINE_CONVERT_H_
#define SHARDLM_ENGINE_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/dtype.h"

namespace shardlm {

struct ConvertOptions {
  std::string model_dir;     // the GQA source (config.json + *.safetensors)
  std::string out_dir;       // written: config.json, model.safetensors, tokenizer files
  std::string attention;     // "mla" | "gla"
  int64_t latent_heads = 2;  // GLA's h_c (MLA: 1)
  int64_t kv_lora_rank = 0;  // d_c per latent head
  int64_t rope_dim = 0;      // d_r of the shared RoPE key; 0: the source's head_dim
  // The new attention tensors' dtype; every other tensor keeps its stored dtype (bit-exact).
  DType dtype = DType::kF32;
};

// One layer's conversion, row-major float64 (exposed for tests).
struct ConvertedAttention {
  std::vector<double> q_proj;     // [h_q·(d_h + d_r), d]: per head [q_h; q_rope_h]
  std::vector<double> kv_a_proj;  // [h_c·d_c + d_r, d]: the latent heads' rows, then k_rope
  std::vector<double> kv_b_proj;  // [h_q·2·d_h, d_c]: per head [W_UK; W_UV]
};
struct ConvertShape {
  int64_t hidden = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t latent_heads = 1, rank = 0, rope_dim = 0;
};
// wq [h_q·d_h, d], wk and wv [h_kv·d_h, d]. Errors only on LAPACK failures.
absl::Status ConvertLayer(const ConvertShape& shape, const std::vector<double>& wq,
                          const std::vector<double>& wk, const std::vector<double>& wv,
                          ConvertedAttention* out);

// Reads, converts every layer and writes `out_dir`. Errors name the file, tensor or flag:
// a source that is not GQA-like, attention biases or q/k norms, interleaved or YaRN RoPE,
// latent heads that do not divide the KV groups, ranks beyond what a latent head can hold.
absl::Status Convert(const ConvertOptions& options);

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_CONVERT_H_
