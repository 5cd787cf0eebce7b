// MHA / MQA / GQA (DESIGN §2.1): cache row [K: kv_l × d_h | V: kv_l × d_h].
#include <algorithm>

#include "attention/attention.h"
#include "attention/rope.h"
#include "engine/attention_block.h"

namespace shardlm {
namespace {

class GqaBlock final : public AttentionBlock {
 public:
  GqaBlock(const ModelDims& dims, const ShardPlan& plan)
      : dims_(dims), rope_(dims.head_dim, dims.rope_theta, dims.rope_interleave) {
    shape_.num_q_heads = plan.q_heads.size();
    shape_.num_kv_heads = plan.kv_heads.size();
    shape_.head_dim = dims.head_dim;
    shape_.scale = static_cast<float>(dims.softmax_scale);
    shape_.window = dims.sliding_window;
  }

  void Forward(const AttentionWeights& w, const float* xn, std::span<const QueryToken> tokens,
               const CacheView& cache, float* out) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t dh = dims_.head_dim, q_width = shape_.num_q_heads * dh,
                  kv_width = shape_.num_kv_heads * dh;
    float* q = Scratch(q_, n * q_width);        // [n, hq_l, d_h]
    float* k = Scratch(k_, n * kv_width);       // [n, kv_l, d_h]
    float* v = Scratch(v_, n * kv_width);       // [n, kv_l, d_h]
    float* heads = Scratch(heads_, n * q_width);  // [n, hq_l, d_h]
    ApplyLinear(xn, n, w.q_proj, q);
    ApplyLinear(xn, n, w.k_proj, k);
    ApplyLinear(xn, n, w.v_proj, v);
    for (int64_t t = 0; t < n; ++t) {
      rope_.Apply(q + t * q_width, shape_.num_q_heads, dh, tokens[t].pos);
      rope_.Apply(k + t * kv_width, shape_.num_kv_heads, dh, tokens[t].pos);
      float* row = cache.Row(tokens[t].block_table, tokens[t].pos);
      std::copy_n(k + t * kv_width, kv_width, row);
      std::copy_n(v + t * kv_width, kv_width, row + kv_width);
    }
    GqaAttention(shape_, cache, tokens, q, heads);
    ApplyLinear(heads, n, w.o_proj, out);  // partial sum over this rank's heads
  }

 private:
  const ModelDims dims_;
  GqaShape shape_;
  Rope rope_;
  std::vector<float> q_, k_, v_, heads_;
};

}  // namespace

std::unique_ptr<AttentionBlock> MakeGqaBlock(const ModelDims& dims, const ShardPlan& plan) {
  return std::make_unique<GqaBlock>(dims, plan);
}

}  // namespace shardlm
