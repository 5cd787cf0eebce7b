// MLA / GLA (DESIGN §2.3): cache row [latents: kv_l × d_c (normalized) | k_rope: d_r].
// Attention runs in the absorbed form inside LatentAttention.
#include <algorithm>

#include "attention/attention.h"
#include "attention/rope.h"
#include "engine/attention_block.h"

namespace shardlm {
namespace {

class LatentBlock final : public AttentionBlock {
 public:
  LatentBlock(const ModelDims& dims, const ShardPlan& plan)
      : dims_(dims), rope_(dims.rope_dim, dims.rope_theta, dims.rope_interleave) {
    shape_.num_q_heads = plan.q_heads.size();
    shape_.num_latent_heads = plan.kv_heads.size();
    shape_.latent_dim = dims.latent_dim;
    shape_.nope_dim = dims.nope_dim;
    shape_.rope_dim = dims.rope_dim;
    shape_.v_head_dim = dims.v_head_dim;
    shape_.scale = static_cast<float>(dims.softmax_scale);
    shape_.window = dims.sliding_window;
  }

  void Forward(const AttentionWeights& w, const float* xn, std::span<const QueryToken> tokens,
               const CacheView& cache, float* out) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t qk = dims_.nope_dim + dims_.rope_dim, dc = dims_.latent_dim;
    const int64_t q_width = shape_.num_q_heads * qk;
    const int64_t latents = shape_.num_latent_heads * dc, row_width = latents + dims_.rope_dim;
    float* q = Scratch(q_, n * q_width);  // [n, hq_l, d_n + d_r]
    if (dims_.q_lora_rank > 0) {
      float* qa = Scratch(qa_, n * dims_.q_lora_rank);  // [n, q_lora_rank]
      ApplyLinear(xn, n, w.q_a_proj, qa);
      RmsNorm(qa, n, dims_.q_lora_rank, dims_.q_lora_rank, w.q_a_norm.data(), dims_.rms_eps, qa);
      ApplyLinear(qa, n, w.q_b_proj, q);
    } else {
      ApplyLinear(xn, n, w.q_proj, q);
    }
    float* kv_a = Scratch(kv_a_, n * row_width);  // [n, kv_l × d_c + d_r], the cache row
    ApplyLinear(xn, n, w.kv_a_proj, kv_a);
    for (int64_t t = 0; t < n; ++t) {
      float* row_in = kv_a + t * row_width;
      rope_.Apply(q + t * q_width + dims_.nope_dim, shape_.num_q_heads, qk, tokens[t].pos);
      if (!w.kv_a_norm.empty()) {
        // Each latent head's chunk is normalized on its own.
        for (int64_t j = 0; j < shape_.num_latent_heads; ++j) {
          RmsNorm(row_in + j * dc, 1, dc, dc, w.kv_a_norm.data() + j * dc, dims_.rms_eps,
                  row_in + j * dc);
        }
      }
      rope_.Apply(row_in + latents, 1, dims_.rope_dim, tokens[t].pos);
      std::copy_n(row_in, row_width, cache.Row(tokens[t].block_table, tokens[t].pos));
    }
    float* heads = Scratch(heads_, n * shape_.num_q_heads * dims_.v_head_dim);
    LatentAttention(shape_, cache, tokens, q, w.kv_b_proj.w.data(),
                    w.kv_b_proj.b.empty() ? nullptr : w.kv_b_proj.b.data(), heads);
    ApplyLinear(heads, n, w.o_proj, out);
  }

 private:
  const ModelDims dims_;
  LatentShape shape_;
  Rope rope_;
  std::vector<float> q_, qa_, kv_a_, heads_;
};

}  // namespace

std::unique_ptr<AttentionBlock> MakeLatentBlock(const ModelDims& dims, const ShardPlan& plan) {
  return std::make_unique<LatentBlock>(dims, plan);
}

}  // namespace shardlm
