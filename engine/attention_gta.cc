// GTA (DESIGN §2.2): cache row [tied: kv_l × d_h | k_rope: d_r]; the tied state
// serves as value (all channels) and as the key's first d_h − d_r channels.
#include <algorithm>

#include "attention/attention.h"
#include "attention/rope.h"
#include "engine/attention_block.h"

namespace shardlm {
namespace {

class GtaBlock final : public AttentionBlock {
 public:
  GtaBlock(const ModelDims& dims, const ShardPlan& plan)
      : dims_(dims), rope_(dims.rope_dim, dims.rope_theta, dims.rope_interleave) {
    shape_.num_q_heads = plan.q_heads.size();
    shape_.num_kv_heads = plan.kv_heads.size();
    shape_.head_dim = dims.head_dim;
    shape_.rope_dim = dims.rope_dim;
    shape_.scale = static_cast<float>(dims.softmax_scale);
    shape_.window = dims.sliding_window;
  }

  void Forward(const AttentionWeights& w, const float* xn, std::span<const QueryToken> tokens,
               const CacheView& cache, float* out) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t dh = dims_.head_dim, dr = dims_.rope_dim;
    const int64_t q_width = shape_.num_q_heads * dh, kv_width = shape_.num_kv_heads * dh;
    float* q = Scratch(q_, n * q_width);          // [n, hq_l, d_h]
    float* kv = Scratch(kv_, n * kv_width);       // [n, kv_l, d_h]
    float* k_rope = Scratch(k_rope_, n * dr);     // [n, d_r]
    float* heads = Scratch(heads_, n * q_width);  // [n, hq_l, d_h]
    ApplyLinear(xn, n, w.q_proj, q);
    ApplyLinear(xn, n, w.kv_proj, kv);
    ApplyLinear(xn, n, w.k_rope_proj, k_rope);
    for (int64_t t = 0; t < n; ++t) {
      // Only the last d_r channels of each query head rotate; the tied state never does.
      rope_.Apply(q + t * q_width + (dh - dr), shape_.num_q_heads, dh, tokens[t].pos);
      rope_.Apply(k_rope + t * dr, 1, dr, tokens[t].pos);
      float* row = cache.Row(tokens[t].block_table, tokens[t].pos);
      std::copy_n(kv + t * kv_width, kv_width, row);
      std::copy_n(k_rope + t * dr, dr, row + kv_width);
    }
    GtaAttention(shape_, cache, tokens, q, heads);
    ApplyLinear(heads, n, w.o_proj, out);
  }

 private:
  const ModelDims dims_;
  GtaShape shape_;
  Rope rope_;
  std::vector<float> q_, kv_, k_rope_, heads_;
};

}  // namespace

std::unique_ptr<AttentionBlock> MakeGtaBlock(const ModelDims& dims, const ShardPlan& plan) {
  return std::make_unique<GtaBlock>(dims, plan);
}

}  // namespace shardlm
