// MLA and GLA, latent attention (DESIGN §2.3): the checkpoint tensors, the block, and the
// kernel over the paged cache with its naive reference. MLA is the case of one latent head;
// both run the same code.
#include "attention/latent.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attention/decode_core.h"
#include "attention/rope.h"
#include "base/status.h"
#include "base/thread_pool.h"
#include "kernels/matmul.h"

namespace shardlm {
namespace {

// Query tokens per tile of the fast path: W_UK and W_UV of a head are read once per
// tile rather than once per token (a decode batch reuses them from cache).
constexpr int64_t kTokenTile = 16;

void CheckShape(const LatentShape& shape, const CacheView& cache) {
  CHECK_GT(shape.num_latent_heads, 0);
  CHECK_MSG(shape.num_q_heads > 0 && shape.num_q_heads % shape.num_latent_heads == 0,
            "num_q_heads ", shape.num_q_heads, " must be a positive multiple of num_latent_heads ",
            shape.num_latent_heads);
  CHECK_GT(shape.latent_dim, 0);
  CHECK_GE(shape.nope_dim, 0);
  CHECK_GE(shape.rope_dim, 0);
  CHECK_GT(shape.v_head_dim, 0);
  CHECK_GE(shape.window, 0);
  // row: [latents: num_latent_heads × latent_dim | k_rope: rope_dim]
  CHECK_EQ(cache.row_floats, shape.num_latent_heads * shape.latent_dim + shape.rope_dim);
}

// Per-thread scratch of the fast path, grown to the largest shape seen.
struct LatentScratch {
  std::vector<float> q_abs;  // [kTokenTile, h_q, d_c]: q̃_i = W_UK,iᵀ q_nope,i
  std::vector<float> o_lat;  // [kTokenTile, h_q, d_c]: ō_i = Σ_t softmax_t c_j,t
};

}  // namespace

// Absorbed form (DESIGN §2.3), per tile of tokens:
//   1. q̃_i = W_UK,iᵀ q_nope,i (d_c floats per head);
//   2. DecodeAttention over all latent heads at once: head i of group j scores
//      scale·(q̃_i·c_j,t + q_rope,i·k_rope,t) and takes the latents c_j,t as
//      values, so each latent row is fetched once for all heads;
//   3. o_i = W_UV,i ō_i + b_V,i.
// Steps 1 and 3 are the shared skinny matmul (kernels/matmul.h) over the tile's tokens, one
// call per head, in the weights' own dtype, always with exact BF16 math: --bf16-math dot
// would round q_nope and ō to bf16, and q̃ feeds every score of the head (measured: TP 2 vs
// TP 1 of a BF16 GLA model then moved past the decode test's derived tolerance).
// The W_UK bias b_K is not applied: it adds scale·(q_nope,i·b_K,i) to every score
// of head i, a constant over positions, which softmax cancels. The W_UV bias is
// added in step 3 (the softmax weights sum to 1, so Σ_t p_t (W c_t + b) = W ō + b).
void LatentAttention(const LatentShape& shape, const CacheView& cache,
                     std::span<const QueryToken> tokens, const float* q,
                     const LatentUpProjection& up, float* out) {
  CheckShape(shape, cache);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_c = shape.num_latent_heads;
  const int64_t d_c = shape.latent_dim;
  const int64_t d_n = shape.nope_dim;
  const int64_t d_r = shape.rope_dim;
  const int64_t d_v = shape.v_head_dim;
  const int64_t g = h_q / h_c;
  const int64_t dq = d_n + d_r;  // q row per head
  CHECK(up.uk_t.out == h_q * d_c && up.uk_t.in == d_n);
  CHECK(up.uv.out == h_q * d_v && up.uv.in == d_c);

  thread_local LatentScratch scratch;
  const size_t scratch_floats = static_cast<size_t>(kTokenTile * h_q * d_c);
  if (scratch.q_abs.size() < scratch_floats) {
    scratch.q_abs.resize(scratch_floats);
    scratch.o_lat.resize(scratch_floats);
  }
  float* q_abs = scratch.q_abs.data();
  float* o_lat = scratch.o_lat.data();

  const Isa isa = SelectedMatMulIsa();
  const int64_t num_tokens = static_cast<int64_t>(tokens.size());
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenTile) {
    const int64_t nt = std::min(kTokenTile, num_tokens - t0);

    // 1. q̃_i = W_UK,iᵀ q_nope,i: rows i·d_c … of uk_t times the tile's q_nope of head i.
    //    Heads are independent work items for the compute threads.
    ParallelFor(h_q, 1, [&](int64_t head_begin, int64_t head_end) {
      for (int64_t i = head_begin; i < head_end; ++i) {
        float* qa = q_abs + i * d_c;
        if (d_n == 0) {
          for (int64_t tt = 0; tt < nt; ++tt) std::fill_n(qa + tt * h_q * d_c, d_c, 0.0f);
          continue;
        }
        SkinnyMatMulWithIsa(isa, q + (t0 * h_q + i) * dq, nt, h_q * dq, up.uk_t.dtype,
                            up.uk_t.row_data(i * d_c), d_c, d_n, nullptr, qa, h_q * d_c);
      }
    });

    // 2. Attention over the latents of the tile's tokens, all latent heads in one
    //    pass; group j's values are its latents c_j.
    const attention_internal::RowLayout layout{.groups = h_c,
                                               .a_off = 0,
                                               .a_len = d_c,
                                               .a_step = d_c,
                                               .b_off = h_c * d_c,
                                               .b_len = d_r,
                                               .b_step = 0,
                                               .v_off = 0,
                                               .v_len = d_c,
                                               .v_step = d_c};
    const attention_internal::DecodeQueries queries{.g = g,
                                                    .qa = q_abs,
                                                    .qa_token = h_q * d_c,
                                                    .qa_head = d_c,
                                                    .qb = q + t0 * h_q * dq + d_n,
                                                    .qb_token = h_q * dq,
                                                    .qb_head = dq};
    attention_internal::DecodeAttention(cache, tokens.subspan(t0, nt), shape.window, layout,
                                        shape.scale, queries, o_lat, h_q * d_c, d_c);

    // 3. o_i = W_UV,i ō_i + b_V,i; W_UV,i is rows i·d_v … of uv, [d_v, d_c].
    ParallelFor(h_q, 1, [&](int64_t head_begin, int64_t head_end) {
      for (int64_t i = head_begin; i < head_end; ++i) {
        SkinnyMatMulWithIsa(isa, o_lat + i * d_c, nt, h_q * d_c, up.uv.dtype,
                            up.uv.row_data(i * d_v), d_v, d_c,
                            up.uv.b.empty() ? nullptr : up.uv.b.data() + i * d_v,
                            out + (t0 * h_q + i) * d_v, h_q * d_v);
      }
    });
  }
}

// Reference, the prefill math: per token, head and position materialize
// k_i = [W_UK,i c_j + b_K,i | k_rope] and v_i = W_UV,i c_j + b_V,i, then plain
// softmax attention, all in double. b_K is applied here, so a test that varies it
// checks that the fast path may drop it.
void LatentAttentionNaive(const LatentShape& shape, const CacheView& cache,
                          std::span<const QueryToken> tokens, const float* q, const float* kv_b,
                          const float* kv_b_bias, float* out) {
  CheckShape(shape, cache);
  CHECK(kv_b != nullptr);
  const int64_t h_q = shape.num_q_heads;
  const int64_t h_c = shape.num_latent_heads;
  const int64_t d_c = shape.latent_dim;
  const int64_t d_n = shape.nope_dim;
  const int64_t d_r = shape.rope_dim;
  const int64_t d_v = shape.v_head_dim;
  const int64_t dq = d_n + d_r;
  const int64_t dkv = d_n + d_v;
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    const QueryToken& token = tokens[ti];
    attention_internal::CheckToken(cache, token);
    const int64_t lo = token.Lo(shape.window);
    const int64_t n = token.pos - lo + 1;
    for (int64_t i = 0; i < h_q; ++i) {
      const int64_t j = i / (h_q / h_c);
      const float* qi = q + (static_cast<int64_t>(ti) * h_q + i) * dq;
      const float* w = kv_b + i * dkv * d_c;  // [d_n + d_v, d_c]: W_UK rows, then W_UV rows
      const float* b = kv_b_bias != nullptr ? kv_b_bias + i * dkv : nullptr;
      std::vector<double> scores(static_cast<size_t>(n));
      std::vector<double> values(static_cast<size_t>(n * d_v));  // [n, d_v]
      std::vector<double> key(static_cast<size_t>(dq));
      std::vector<float> buf;  // a row's values, decoded from a narrow cache
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const float* row = cache.Values(token.block_table, lo + t, buf);
        const float* c = row + j * d_c;
        for (int64_t r = 0; r < dkv; ++r) {
          double x = b != nullptr ? b[r] : 0.0;
          for (int64_t k = 0; k < d_c; ++k) x += static_cast<double>(w[r * d_c + k]) * c[k];
          if (r < d_n) {
            key[r] = x;
          } else {
            values[t * d_v + (r - d_n)] = x;
          }
        }
        for (int64_t k = 0; k < d_r; ++k) key[d_n + k] = row[h_c * d_c + k];
        double dot = 0.0;
        for (int64_t k = 0; k < dq; ++k) dot += qi[k] * key[k];
        scores[t] = static_cast<double>(shape.scale) * dot;
        max_score = std::max(max_score, scores[t]);
      }
      double sum = 0.0;
      for (double& s : scores) {
        s = std::exp(s - max_score);
        sum += s;
      }
      float* oi = out + (static_cast<int64_t>(ti) * h_q + i) * d_v;
      for (int64_t v = 0; v < d_v; ++v) {
        double acc = 0.0;
        for (int64_t t = 0; t < n; ++t) acc += scores[t] / sum * values[t * d_v + v];
        oi[v] = static_cast<float>(acc);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Weights.

LatentUpProjection SplitKvB(const Linear& kv_b, int64_t nope_dim, int64_t v_head_dim) {
  const int64_t d_c = kv_b.in, dkv = nope_dim + v_head_dim;
  CHECK(dkv > 0 && kv_b.out % dkv == 0);
  const int64_t h_q = kv_b.out / dkv;
  LatentUpProjection up;
  up.uk_t.out = h_q * d_c;
  up.uk_t.in = nope_dim;
  up.uv.out = h_q * v_head_dim;
  up.uv.in = d_c;
  up.uk_t.dtype = up.uv.dtype = kv_b.dtype;
  // Copies every element's bits: uk_t[i·d_c + c][n] = W_UK,i[n][c], uv[i·d_v + v] = W_UV,i[v].
  auto split = [&](const auto& src, auto& uk_t, auto& uv) {
    uk_t.resize(static_cast<size_t>(up.uk_t.out * up.uk_t.in));
    uv.resize(static_cast<size_t>(up.uv.out * up.uv.in));
    for (int64_t i = 0; i < h_q; ++i) {
      for (int64_t n = 0; n < nope_dim; ++n) {
        for (int64_t c = 0; c < d_c; ++c) {
          uk_t[(i * d_c + c) * nope_dim + n] = src[(i * dkv + n) * d_c + c];
        }
      }
      std::copy_n(src.data() + (i * dkv + nope_dim) * d_c, v_head_dim * d_c,
                  uv.data() + i * v_head_dim * d_c);
    }
  };
  if (kv_b.dtype == DType::kF32) {
    split(kv_b.w, up.uk_t.w, up.uv.w);
  } else {
    split(kv_b.w16, up.uk_t.w16, up.uv.w16);
  }
  if (!kv_b.b.empty()) {
    up.uv.b.resize(static_cast<size_t>(up.uv.out));
    for (int64_t i = 0; i < h_q; ++i) {
      std::copy_n(kv_b.b.data() + i * dkv + nope_dim, v_head_dim, up.uv.b.data() + i * v_head_dim);
    }
  }
  return up;
}

int64_t LatentWeights::bytes() const {
  return AttentionWeights::bytes() +
         static_cast<int64_t>((q_a_norm.size() + kv_a_norm.size()) * sizeof(float));
}

// ---------------------------------------------------------------------------
// The block: q (directly or through the q LoRA and its norm), the latent row (kv_a_proj, each
// latent head's chunk normalized, RoPE on the key) written to the cache, the absorbed kernel,
// this rank's o_proj.

namespace {

class LatentBlock final : public AttentionBlock {
 public:
  LatentBlock(const ModelDims& dims, const ShardPlan& plan)
      : rope_(dims.rope_dim, dims.rope_theta, dims.rope_interleave, dims.rope_scaling),
        q_lora_rank_(dims.q_lora_rank),
        rms_eps_(dims.rms_eps) {
    shape_.num_q_heads = plan.q_heads.size();
    shape_.num_latent_heads = plan.cache_heads.size();
    shape_.latent_dim = dims.latent_dim;
    shape_.nope_dim = dims.nope_dim;
    shape_.rope_dim = dims.rope_dim;
    shape_.v_head_dim = dims.v_head_dim;
    shape_.scale = static_cast<float>(dims.softmax_scale);
    shape_.window = dims.sliding_window;
  }

  void Forward(const AttentionWeights& weights, const float* xn, std::span<const QueryToken> tokens,
               const CacheView& cache, float* out) override {
    const auto& w = static_cast<const LatentWeights&>(weights);
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t d_n = shape_.nope_dim, d_r = shape_.rope_dim, dc = shape_.latent_dim;
    const int64_t qk = d_n + d_r, q_width = shape_.num_q_heads * qk;
    const int64_t latents = shape_.num_latent_heads * dc, row_width = latents + d_r;
    float* q = Scratch(q_, n * q_width);  // [n, hq_l, d_n + d_r]
    if (q_lora_rank_ > 0) {
      float* qa = Scratch(qa_, n * q_lora_rank_);  // [n, q_lora_rank]
      ApplyLinear(xn, n, w.q_a_proj, qa);
      RmsNorm(qa, n, q_lora_rank_, q_lora_rank_, w.q_a_norm.data(), rms_eps_, qa);
      ApplyLinear(qa, n, w.q_b_proj, q);
    } else {
      ApplyLinear(xn, n, w.q_proj, q);
    }
    float* kv_a = Scratch(kv_a_, n * row_width);  // [n, kv_l × d_c + d_r], the cache row
    ApplyLinear(xn, n, w.kv_a_proj, kv_a);
    for (int64_t t = 0; t < n; ++t) {
      float* row_in = kv_a + t * row_width;
      rope_.Apply(q + t * q_width + d_n, shape_.num_q_heads, qk, tokens[t].pos);
      if (!w.kv_a_norm.empty()) {
        // Each latent head's chunk is normalized on its own.
        for (int64_t j = 0; j < shape_.num_latent_heads; ++j) {
          RmsNorm(row_in + j * dc, 1, dc, dc, w.kv_a_norm.data() + j * dc, rms_eps_,
                  row_in + j * dc);
        }
      }
      rope_.Apply(row_in + latents, 1, d_r, tokens[t].pos);
      cache.Store(tokens[t].block_table, tokens[t].pos, row_in);
    }
    float* heads = Scratch(heads_, n * shape_.num_q_heads * shape_.v_head_dim);
    LatentAttention(shape_, cache, tokens, q, w.kv_b, heads);
    ApplyLinear(heads, n, w.o_proj, out);
  }

  void Reserve() override {
    attention_internal::DecodeAttentionReserve(shape_.num_q_heads, shape_.latent_dim,
                                               shape_.num_latent_heads,
                                               shape_.latent_dim + shape_.rope_dim);
  }

 private:
  LatentShape shape_;
  Rope rope_;
  const int64_t q_lora_rank_;
  const double rms_eps_;
  std::vector<float> q_, qa_, kv_a_, heads_;
};

class Latent final : public AttentionFamily {
 public:
  void AppendTensors(const ModelDims& dims, const std::string& a,
                     std::vector<TensorSpec>* specs) const override {
    const int64_t d = dims.hidden, h_q = dims.num_heads, qk = dims.nope_dim + dims.rope_dim;
    if (dims.q_lora_rank > 0) {
      specs->push_back({a + "q_a_proj", {dims.q_lora_rank, d}, true});
      specs->push_back({a + "q_a_layernorm.weight", {dims.q_lora_rank}, false});
      specs->push_back({a + "q_b_proj", {h_q * qk, dims.q_lora_rank}, true});
    } else {
      specs->push_back({a + "q_proj", {h_q * qk, d}, true});
    }
    specs->push_back(
        {a + "kv_a_proj_with_mqa", {dims.num_kv_heads * dims.latent_dim + dims.rope_dim, d}, true});
    specs->push_back(
        {a + "kv_b_proj", {h_q * (dims.nope_dim + dims.v_head_dim), dims.latent_dim}, true});
    specs->push_back({a + "o_proj", {d, h_q * dims.v_head_dim}, true});
  }

  absl::StatusOr<std::unique_ptr<AttentionWeights>> Load(WeightSource& load, const ModelDims& dims,
                                                         const ShardPlan& plan,
                                                         const std::string& a) const override {
    const int64_t d = dims.hidden, h_q = dims.num_heads, kv = dims.num_kv_heads;
    const int64_t qk = dims.nope_dim + dims.rope_dim, dc = dims.latent_dim;
    auto w = std::make_unique<LatentWeights>();
    if (dims.q_lora_rank > 0) {
      const int64_t r = dims.q_lora_rank;
      ASSIGN_OR_RETURN(w->q_a_proj, load.Rows(a + "q_a_proj", r, d, Range{0, r}));
      ASSIGN_OR_RETURN(w->q_a_norm, load.Vector(a + "q_a_layernorm.weight", r));
      ASSIGN_OR_RETURN(w->q_b_proj,
                       load.Rows(a + "q_b_proj", h_q * qk, r, plan.q_heads.Scaled(qk)));
    } else {
      ASSIGN_OR_RETURN(w->q_proj, load.Rows(a + "q_proj", h_q * qk, d, plan.q_heads.Scaled(qk)));
    }
    // kv_a rows: [c_0 | … | c_{h_c−1} | k_rope]; keep own latents and the RoPE key.
    const int64_t kv_a_rows = kv * dc + dims.rope_dim;
    const Range kv_a_ranges[] = {plan.cache_heads.Scaled(dc), Range{kv * dc, kv_a_rows}};
    ASSIGN_OR_RETURN(w->kv_a_proj, load.Rows(a + "kv_a_proj_with_mqa", kv_a_rows, d, kv_a_ranges));
    if (load.Has(a + "kv_a_layernorm.weight")) {
      ASSIGN_OR_RETURN(w->kv_a_norm, load.Vector(a + "kv_a_layernorm.weight", kv * dc,
                                                 plan.cache_heads.Scaled(dc)));
    }
    const int64_t per_head = dims.nope_dim + dims.v_head_dim;
    ASSIGN_OR_RETURN(const Linear kv_b,
                     load.Rows(a + "kv_b_proj", h_q * per_head, dc, plan.q_heads.Scaled(per_head)));
    if (IsBlockQuantized(kv_b.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(
          a, "kv_b_proj.weight is ", DTypeName(kv_b.dtype), ": the latent kernels read W_UK "
          "transposed, across the quantization blocks; keep kv_b_proj in F32, BF16 or F16 "
          "(shardlm quantize does)"));
    }
    w->kv_b = SplitKvB(kv_b, dims.nope_dim, dims.v_head_dim);
    ASSIGN_OR_RETURN(w->o_proj, load.Cols(a + "o_proj", d, h_q * dims.v_head_dim,
                                          plan.q_heads.Scaled(dims.v_head_dim),
                                          // Data-parallel attention: each rank's rows are
                                          // whole sums, each with the bias once.
                                          /*keep_bias=*/plan.rank == 0 ||
                                              plan.data_parallel_attention()));
    return std::unique_ptr<AttentionWeights>(std::move(w));
  }

  int64_t DecodeMacsPerPosition(const ModelDims& dims, const ShardPlan& plan) const override {
    // Absorbed: q̃ · latent + q_rope · k_rope, then p · latent.
    return static_cast<int64_t>(plan.q_heads.size()) * (2 * dims.latent_dim + dims.rope_dim);
  }
  std::unique_ptr<AttentionBlock> MakeBlock(const ModelDims& dims,
                                            const ShardPlan& plan) const override {
    return std::make_unique<LatentBlock>(dims, plan);
  }
};

}  // namespace

const AttentionFamily& LatentFamily() {
  static const Latent family;
  return family;
}

}  // namespace shardlm
