// MHA, MQA and GQA (DESIGN §2.1): the checkpoint tensors, the block, and the kernel over the
// paged cache with its naive reference.
#include "attention/gqa.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attention/decode_core.h"
#include "attention/rope.h"
#include "base/status.h"

namespace shardlm {
namespace {

void CheckShape(const GqaShape& shape, const CacheView& cache) {
  CHECK_GT(shape.num_kv_heads, 0);
  CHECK_GT(shape.head_dim, 0);
  CHECK_MSG(shape.num_q_heads > 0 && shape.num_q_heads % shape.num_kv_heads == 0, "num_q_heads ",
            shape.num_q_heads, " must be a positive multiple of num_kv_heads ", shape.num_kv_heads);
  CHECK_GE(shape.window, 0);
  // row: [K: num_kv_heads × head_dim | V: num_kv_heads × head_dim]
  CHECK_EQ(cache.row_floats, 2 * shape.num_kv_heads * shape.head_dim);
}

}  // namespace

// All KV heads in one pass: each K/V row is read once for every query head
// (group j of g = h_q / h_kv heads reads K_j and V_j), see DecodeAttention.
void GqaAttention(const GqaShape& shape, const CacheView& cache, std::span<const QueryToken> tokens,
                  const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  const attention_internal::RowLayout layout{.groups = h_kv,
                                             .a_off = 0,
                                             .a_len = d,
                                             .a_step = d,
                                             .v_off = h_kv * d,
                                             .v_len = d,
                                             .v_step = d};
  const attention_internal::DecodeQueries queries{
      .g = h_q / h_kv, .qa = q, .qa_token = h_q * d, .qa_head = d};
  attention_internal::DecodeAttention(cache, tokens, shape.window, layout, shape.scale, queries,
                                      out, h_q * d, d);
}

// Reference: per token and query head, materialize all scores in double, softmax
// with the max subtracted, then the weighted sum of values.
void GqaAttentionNaive(const GqaShape& shape, const CacheView& cache,
                       std::span<const QueryToken> tokens, const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    const QueryToken& token = tokens[ti];
    attention_internal::CheckToken(cache, token);
    const int64_t lo = token.Lo(shape.window);
    const int64_t n = token.pos - lo + 1;
    for (int64_t i = 0; i < h_q; ++i) {
      const int64_t j = i / (h_q / h_kv);
      const float* qi = q + (static_cast<int64_t>(ti) * h_q + i) * d;
      std::vector<double> scores(static_cast<size_t>(n));
      std::vector<float> row;  // a row's values, decoded from a narrow cache
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const float* k = cache.Values(token.block_table, lo + t, row) + j * d;
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qi[c]) * k[c];
        scores[t] = static_cast<double>(shape.scale) * dot;
        max_score = std::max(max_score, scores[t]);
      }
      double sum = 0.0;
      for (double& s : scores) {
        s = std::exp(s - max_score);
        sum += s;
      }
      std::vector<double> acc(static_cast<size_t>(d), 0.0);
      for (int64_t t = 0; t < n; ++t) {
        const float* v = cache.Values(token.block_table, lo + t, row) + (h_kv + j) * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += scores[t] / sum * v[c];
      }
      float* oi = out + (static_cast<int64_t>(ti) * h_q + i) * d;
      for (int64_t c = 0; c < d; ++c) oi[c] = static_cast<float>(acc[c]);
    }
  }
}

// ---------------------------------------------------------------------------
// The block: q, k, v projections, each head of q and k RMS-normed when the model has q/k norms
// (Qwen3), RoPE over all d_h channels, the cache write, the kernel, this rank's o_proj.

namespace {

class GqaBlock final : public AttentionBlock {
 public:
  GqaBlock(const ModelDims& dims, const ShardPlan& plan)
      : rope_(dims.head_dim, dims.rope_theta, dims.rope_interleave, dims.rope_scaling),
        rms_eps_(dims.rms_eps) {
    shape_.num_q_heads = plan.q_heads.size();
    shape_.num_kv_heads = plan.cache_heads.size();
    shape_.head_dim = dims.head_dim;
    shape_.scale = static_cast<float>(dims.softmax_scale);
    shape_.window = dims.sliding_window;
  }

  void Forward(const AttentionWeights& weights, const float* xn, std::span<const QueryToken> tokens,
               const CacheView& cache, float* out) override {
    const auto& w = static_cast<const GqaWeights&>(weights);
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t dh = shape_.head_dim, q_width = shape_.num_q_heads * dh,
                  kv_width = shape_.num_kv_heads * dh;
    float* q = Scratch(q_, n * q_width);          // [n, hq_l, d_h]
    float* k = Scratch(k_, n * kv_width);         // [n, kv_l, d_h]
    float* v = Scratch(v_, n * kv_width);         // [n, kv_l, d_h]
    float* heads = Scratch(heads_, n * q_width);  // [n, hq_l, d_h]
    ApplyLinear(xn, n, w.q_proj, q);
    ApplyLinear(xn, n, w.k_proj, k);
    ApplyLinear(xn, n, w.v_proj, v);
    if (!w.q_norm.empty()) {
      RmsNorm(q, n * shape_.num_q_heads, dh, dh, w.q_norm.data(), rms_eps_, q);
      RmsNorm(k, n * shape_.num_kv_heads, dh, dh, w.k_norm.data(), rms_eps_, k);
    }
    for (int64_t t = 0; t < n; ++t) {
      rope_.Apply(q + t * q_width, shape_.num_q_heads, dh, tokens[t].pos);
      rope_.Apply(k + t * kv_width, shape_.num_kv_heads, dh, tokens[t].pos);
      float* row = Scratch(row_, 2 * kv_width);
      std::copy_n(k + t * kv_width, kv_width, row);
      std::copy_n(v + t * kv_width, kv_width, row + kv_width);
      cache.Store(tokens[t].block_table, tokens[t].pos, row);
    }
    GqaAttention(shape_, cache, tokens, q, heads);
    ApplyLinear(heads, n, w.o_proj, out);  // partial sum over this rank's heads
  }

  void Reserve() override {
    attention_internal::DecodeAttentionReserve(shape_.num_q_heads, shape_.head_dim,
                                               shape_.num_kv_heads, shape_.head_dim);
  }

 private:
  GqaShape shape_;
  Rope rope_;
  const double rms_eps_;
  std::vector<float> q_, k_, v_, heads_, row_;
};

class Gqa final : public AttentionFamily {
 public:
  void AppendTensors(const ModelDims& dims, const std::string& a,
                     std::vector<TensorSpec>* specs) const override {
    const int64_t d = dims.hidden, q = dims.num_heads * dims.head_dim,
                  kv = dims.num_kv_heads * dims.head_dim;
    specs->push_back({a + "q_proj", {q, d}, true});
    specs->push_back({a + "k_proj", {kv, d}, true});
    specs->push_back({a + "v_proj", {kv, d}, true});
    specs->push_back({a + "o_proj", {d, q}, true});
    if (dims.qk_norm) {
      specs->push_back({a + "q_norm.weight", {dims.head_dim}, false});
      specs->push_back({a + "k_norm.weight", {dims.head_dim}, false});
    }
  }

  absl::StatusOr<std::unique_ptr<AttentionWeights>> Load(WeightSource& load, const ModelDims& dims,
                                                         const ShardPlan& plan,
                                                         const std::string& a) const override {
    const int64_t d = dims.hidden, dh = dims.head_dim;
    const int64_t q = dims.num_heads * dh, kv = dims.num_kv_heads * dh;
    auto w = std::make_unique<GqaWeights>();
    ASSIGN_OR_RETURN(w->q_proj, load.Rows(a + "q_proj", q, d, plan.q_heads.Scaled(dh)));
    ASSIGN_OR_RETURN(w->k_proj, load.Rows(a + "k_proj", kv, d, plan.cache_heads.Scaled(dh)));
    ASSIGN_OR_RETURN(w->v_proj, load.Rows(a + "v_proj", kv, d, plan.cache_heads.Scaled(dh)));
    ASSIGN_OR_RETURN(w->o_proj, load.Cols(a + "o_proj", d, q, plan.q_heads.Scaled(dh),
                                          /*keep_bias=*/plan.rank == 0));
    if (dims.qk_norm) {
      ASSIGN_OR_RETURN(w->q_norm, load.Vector(a + "q_norm.weight", dh));
      ASSIGN_OR_RETURN(w->k_norm, load.Vector(a + "k_norm.weight", dh));
    }
    return std::unique_ptr<AttentionWeights>(std::move(w));
  }

  int64_t DecodeMacsPerPosition(const ModelDims& dims, const ShardPlan& plan) const override {
    return static_cast<int64_t>(plan.q_heads.size()) * 2 * dims.head_dim;  // q·k, p·v
  }
  std::unique_ptr<AttentionBlock> MakeBlock(const ModelDims& dims,
                                            const ShardPlan& plan) const override {
    return std::make_unique<GqaBlock>(dims, plan);
  }
};

}  // namespace

const AttentionFamily& GqaFamily() {
  static const Gqa family;
  return family;
}

}  // namespace shardlm
