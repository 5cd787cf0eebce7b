// GTA, grouped-tied attention (DESIGN §2.2): the checkpoint tensors, the block, and the kernel
// over the paged cache with its naive reference.
#include "attention/gta.h"

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

void CheckShape(const GtaShape& shape, const CacheView& cache) {
  CHECK_GT(shape.num_kv_heads, 0);
  CHECK_GT(shape.head_dim, 0);
  CHECK_MSG(shape.num_q_heads > 0 && shape.num_q_heads % shape.num_kv_heads == 0, "num_q_heads ",
            shape.num_q_heads, " must be a positive multiple of num_kv_heads ", shape.num_kv_heads);
  CHECK_MSG(shape.rope_dim >= 0 && shape.rope_dim <= shape.head_dim, "rope_dim ", shape.rope_dim,
            " must be in [0, head_dim ", shape.head_dim, "]");
  CHECK_GE(shape.window, 0);
  // row: [tied: num_kv_heads × head_dim | k_rope: rope_dim]
  CHECK_EQ(cache.row_floats, shape.num_kv_heads * shape.head_dim + shape.rope_dim);
}

}  // namespace

// All tied states in one pass (see DecodeAttention). A score of group j is
// q_nope·tied_j[0 : d_h − d_r] + q_rope·k_rope and the value is tied_j itself, so
// the tied state is fetched once and serves as both key and value (the second
// touch hits L1 within a block).
void GtaAttention(const GtaShape& shape, const CacheView& cache, std::span<const QueryToken> tokens,
                  const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  const int64_t d_nope = d - shape.rope_dim;
  const attention_internal::RowLayout layout{.groups = h_kv,
                                             .a_off = 0,
                                             .a_len = d_nope,
                                             .a_step = d,
                                             .b_off = h_kv * d,
                                             .b_len = shape.rope_dim,
                                             .b_step = 0,
                                             .v_off = 0,
                                             .v_len = d,
                                             .v_step = d};
  const attention_internal::DecodeQueries queries{.g = h_q / h_kv,
                                                  .qa = q,
                                                  .qa_token = h_q * d,
                                                  .qa_head = d,
                                                  .qb = q + d_nope,
                                                  .qb_token = h_q * d,
                                                  .qb_head = d};
  attention_internal::DecodeAttention(cache, tokens, shape.window, layout, shape.scale, queries,
                                      out, h_q * d, d);
}

// Reference: per token, query head and position, build the key
// k = [tied_j[0 : d_h − d_r] | k_rope] and value v = tied_j explicitly, then plain
// softmax attention in double.
void GtaAttentionNaive(const GtaShape& shape, const CacheView& cache,
                       std::span<const QueryToken> tokens, const float* q, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_kv = shape.num_kv_heads;
  const int64_t d = shape.head_dim;
  const int64_t d_nope = d - shape.rope_dim;
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    const QueryToken& token = tokens[ti];
    attention_internal::CheckToken(cache, token);
    const int64_t lo = token.Lo(shape.window);
    const int64_t n = token.pos - lo + 1;
    for (int64_t i = 0; i < h_q; ++i) {
      const int64_t j = i / (h_q / h_kv);
      const float* qi = q + (static_cast<int64_t>(ti) * h_q + i) * d;
      std::vector<double> scores(static_cast<size_t>(n));
      std::vector<float> key(static_cast<size_t>(d));
      std::vector<float> buf;  // a row's values, decoded from a narrow cache
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const float* row = cache.Values(token.block_table, lo + t, buf);
        std::copy_n(row + j * d, d_nope, key.begin());
        std::copy_n(row + h_kv * d, shape.rope_dim, key.begin() + d_nope);
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qi[c]) * key[c];
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
        const float* v = cache.Values(token.block_table, lo + t, buf) + j * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += scores[t] / sum * v[c];
      }
      float* oi = out + (static_cast<int64_t>(ti) * h_q + i) * d;
      for (int64_t c = 0; c < d; ++c) oi[c] = static_cast<float>(acc[c]);
    }
  }
}

// ---------------------------------------------------------------------------
// The block: q, the tied state and the shared RoPE key, RoPE on the last d_r channels of
// each query head and on the key (never on the tied state), the cache write, the kernel,
// this rank's o_proj.

namespace {

class GtaBlock final : public AttentionBlock {
 public:
  GtaBlock(const ModelDims& dims, const ShardPlan& plan)
      : rope_(dims.rope_dim, dims.rope_theta, dims.rope_interleave, dims.rope_scaling) {
    shape_.num_q_heads = plan.q_heads.size();
    shape_.num_kv_heads = plan.cache_heads.size();
    shape_.head_dim = dims.head_dim;
    shape_.rope_dim = dims.rope_dim;
    shape_.scale = static_cast<float>(dims.softmax_scale);
    shape_.window = dims.sliding_window;
  }

  void Forward(const AttentionWeights& weights, const float* xn, std::span<const QueryToken> tokens,
               const CacheView& cache, float* out) override {
    const auto& w = static_cast<const GtaWeights&>(weights);
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t dh = shape_.head_dim, dr = shape_.rope_dim;
    const int64_t q_width = shape_.num_q_heads * dh, kv_width = shape_.num_kv_heads * dh;
    float* q = Scratch(q_, n * q_width);          // [n, hq_l, d_h]
    float* kv = Scratch(kv_, n * kv_width);       // [n, kv_l, d_h]
    float* k_rope = Scratch(k_rope_, n * dr);     // [n, d_r]
    float* heads = Scratch(heads_, n * q_width);  // [n, hq_l, d_h]
    ApplyLinear(xn, n, w.q_proj, q);
    ApplyLinear(xn, n, w.kv_proj, kv);
    ApplyLinear(xn, n, w.k_rope_proj, k_rope);
    for (int64_t t = 0; t < n; ++t) {
      rope_.Apply(q + t * q_width + (dh - dr), shape_.num_q_heads, dh, tokens[t].pos);
      rope_.Apply(k_rope + t * dr, 1, dr, tokens[t].pos);
      float* row = Scratch(row_, kv_width + dr);
      std::copy_n(kv + t * kv_width, kv_width, row);
      std::copy_n(k_rope + t * dr, dr, row + kv_width);
      cache.Store(tokens[t].block_table, tokens[t].pos, row);
    }
    GtaAttention(shape_, cache, tokens, q, heads);
    ApplyLinear(heads, n, w.o_proj, out);
  }

  void Reserve() override {
    attention_internal::DecodeAttentionReserve(shape_.num_q_heads, shape_.head_dim,
                                               shape_.num_kv_heads, shape_.head_dim);
  }

 private:
  GtaShape shape_;
  Rope rope_;
  std::vector<float> q_, kv_, k_rope_, heads_, row_;
};

class Gta final : public AttentionFamily {
 public:
  void AppendTensors(const ModelDims& dims, const std::string& a,
                     std::vector<TensorSpec>* specs) const override {
    const int64_t d = dims.hidden, q = dims.num_heads * dims.head_dim,
                  kv = dims.num_kv_heads * dims.head_dim;
    specs->push_back({a + "q_proj", {q, d}, true});
    specs->push_back({a + "kv_proj", {kv, d}, true});
    specs->push_back({a + "k_rope_proj", {dims.rope_dim, d}, true});
    specs->push_back({a + "o_proj", {d, q}, true});
  }

  absl::StatusOr<std::unique_ptr<AttentionWeights>> Load(WeightSource& load, const ModelDims& dims,
                                                         const ShardPlan& plan,
                                                         const std::string& a) const override {
    const int64_t d = dims.hidden, dh = dims.head_dim, dr = dims.rope_dim;
    const int64_t q = dims.num_heads * dh, kv = dims.num_kv_heads * dh;
    auto w = std::make_unique<GtaWeights>();
    ASSIGN_OR_RETURN(w->q_proj, load.Rows(a + "q_proj", q, d, plan.q_heads.Scaled(dh)));
    ASSIGN_OR_RETURN(w->kv_proj, load.Rows(a + "kv_proj", kv, d, plan.cache_heads.Scaled(dh)));
    ASSIGN_OR_RETURN(w->k_rope_proj, load.Rows(a + "k_rope_proj", dr, d, Range{0, dr}));
    ASSIGN_OR_RETURN(w->o_proj, load.Cols(a + "o_proj", d, q, plan.q_heads.Scaled(dh),
                                          /*keep_bias=*/plan.rank == 0));
    return std::unique_ptr<AttentionWeights>(std::move(w));
  }

  int64_t DecodeMacsPerPosition(const ModelDims& dims, const ShardPlan& plan) const override {
    // q · [tied | k_rope] over d_h, then p · tied over d_h.
    return static_cast<int64_t>(plan.q_heads.size()) * 2 * dims.head_dim;
  }
  std::unique_ptr<AttentionBlock> MakeBlock(const ModelDims& dims,
                                            const ShardPlan& plan) const override {
    return std::make_unique<GtaBlock>(dims, plan);
  }
};

}  // namespace

const AttentionFamily& GtaFamily() {
  static const Gta family;
  return family;
}

}  // namespace shardlm
