#include "attention/latent.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/strings/str_format.h"
#include "attention/decode_core.h"
#include "attention/test_util.h"
#include "base/half.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

using attention_test::AttentionTolerance;
using attention_test::ExpectClose;
using attention_test::ExpectVaries;
using attention_test::GammaTilde;
using attention_test::GuardedBuffer;
using attention_test::kU;
using attention_test::MaxRange;
using attention_test::RaggedSeqLens;
using attention_test::RaggedTokens;
using attention_test::SameBytes;
using attention_test::TestCache;

struct LatentDims {
  int64_t h_q;
  int64_t h_c;
  int64_t d_c;
  int64_t d_n;
  int64_t d_r;
  int64_t d_v;
};

LatentShape ShapeOf(const LatentDims& dims, int64_t window) {
  return {dims.h_q,
          dims.h_c,
          dims.d_c,
          dims.d_n,
          dims.d_r,
          dims.d_v,
          static_cast<float>(1.0 / std::sqrt(dims.d_n + dims.d_r)),
          window};
}

// Random weights in the layout of the header: kv_b [h_q, d_n + d_v, d_c] uniform in
// ±1/sqrt(d_c) (the usual init scale), bias [h_q, d_n + d_v] in ±0.5 or empty.
struct KvBWeights {
  std::vector<float> kv_b;
  std::vector<float> bias;
  const float* bias_or_null() const { return bias.empty() ? nullptr : bias.data(); }
};
// kv_b as the engine keeps it (SplitKvB of an f32 kv_b_proj).
LatentUpProjection UpProjection(const KvBWeights& weights, const LatentShape& shape) {
  Linear kv_b;
  kv_b.out = shape.num_q_heads * (shape.nope_dim + shape.v_head_dim);
  kv_b.in = shape.latent_dim;
  kv_b.w.assign(weights.kv_b.begin(), weights.kv_b.end());
  kv_b.b = weights.bias;
  return SplitKvB(kv_b, shape.nope_dim, shape.v_head_dim);
}

KvBWeights RandomWeights(const LatentDims& dims, bool with_bias, Rng& rng) {
  const float w = static_cast<float>(1.0 / std::sqrt(dims.d_c));
  KvBWeights weights;
  weights.kv_b = rng.UniformVector(dims.h_q * (dims.d_n + dims.d_v) * dims.d_c, -w, w);
  ExpectVaries(weights.kv_b, -w, w, "kv_b");
  if (with_bias) weights.bias = rng.UniformVector(dims.h_q * (dims.d_n + dims.d_v), -0.5f, 0.5f);
  return weights;
}

// Derived bound for the absorbed fast path vs the materialized reference.
// Scores are formed in two fp32 stages — q̃ = W_UKᵀ q_nope (d_n terms), then
// q̃·c + q_rope·k_rope (d_c + d_r terms) — so with
//   S = scale·max over tokens and heads of (Σ_n |q_n|·‖W_UK row n‖₁·max|c| + ‖q_rope‖₁·max|k_rope|)
// (≥ scale·Σ_{n,k} |q_n W_nk c_k| + scale·Σ_r |q_r k_r|) the score error is
// ≤ (γ̃(d_n) + γ̃(d_c + d_r) + 3u)·S. That puts ō within E = AttentionTolerance(n, ·, S, max|c|).
// Then o = W_UV ō + b_V: |δo| ≤ ‖W_UV row‖₁·(E + (γ̃(d_c) + u)·max|c|) + 2u·(|b| + ‖W‖₁ max|c|)
// (the propagated ō error, the d_c-term dot, the bias add and the reference's rounding).
// b_K is left out by the fast path and cancels exactly in the reference's softmax.
double LatentTolerance(const LatentShape& s, TestCache& cache, std::span<const QueryToken> tokens,
                       const std::vector<float>& q, const KvBWeights& weights) {
  const int64_t dq = s.nope_dim + s.rope_dim, dkv = s.nope_dim + s.v_head_dim;
  const int64_t lat = s.num_latent_heads * s.latent_dim;
  const double c_max = cache.MaxAbs(0, lat);
  const double k_max = cache.MaxAbs(lat, lat + s.rope_dim);
  auto row_l1 = [&](int64_t head, int64_t r) {
    double sum = 0.0;
    for (int64_t k = 0; k < s.latent_dim; ++k) {
      sum += std::fabs(weights.kv_b[(head * dkv + r) * s.latent_dim + k]);
    }
    return sum;
  };
  double s_abs = 0.0;
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    for (int64_t i = 0; i < s.num_q_heads; ++i) {
      const float* qi = q.data() + (ti * s.num_q_heads + i) * dq;
      double sum = 0.0;
      for (int64_t n = 0; n < s.nope_dim; ++n) sum += std::fabs(qi[n]) * row_l1(i, n) * c_max;
      for (int64_t r = 0; r < s.rope_dim; ++r) sum += std::fabs(qi[s.nope_dim + r]) * k_max;
      s_abs = std::max(s_abs, s.scale * sum);
    }
  }
  double w_l1 = 0.0;
  for (int64_t i = 0; i < s.num_q_heads; ++i) {
    for (int64_t v = 0; v < s.v_head_dim; ++v) w_l1 = std::max(w_l1, row_l1(i, s.nope_dim + v));
  }
  double b_max = 0.0;
  for (const float b : weights.bias) b_max = std::max(b_max, double{std::fabs(b)});
  const double score_err =
      (GammaTilde(s.nope_dim) + GammaTilde(s.latent_dim + s.rope_dim) + 3 * kU) * s_abs;
  const double e_latent = AttentionTolerance(MaxRange(tokens, s.window), score_err, s_abs, c_max);
  return w_l1 * (e_latent + (GammaTilde(s.latent_dim) + kU) * c_max) +
         2 * kU * (b_max + w_l1 * c_max);
}

double CheckLatentCase(const LatentDims& dims, int64_t ctx, int64_t page, int64_t window,
                       uint64_t seed, bool with_bias, KvDType dtype = KvDType::kF32) {
  SCOPED_TRACE(absl::StrFormat(
      "h_q=%d h_c=%d d_c=%d d_n=%d d_r=%d d_v=%d ctx=%d page=%d window=%d seed=%d bias=%d",
      dims.h_q, dims.h_c, dims.d_c, dims.d_n, dims.d_r, dims.d_v, ctx, page, window, seed,
      with_bias));
  Rng rng(seed, absl::StrFormat("latent/%d/%d/%d/%d", dims.h_q, dims.d_c, dims.d_r, ctx));
  const LatentShape shape = ShapeOf(dims, window);
  TestCache cache(dims.h_c * dims.d_c + dims.d_r, page, RaggedSeqLens(ctx), rng);
  const std::vector<QueryToken> tokens = RaggedTokens(cache, rng);
  const int64_t nt = static_cast<int64_t>(tokens.size());
  const float q_range = seed % 2 == 1 ? 1.0f : 4.0f;
  const std::vector<float> q =
      rng.UniformVector(nt * dims.h_q * (dims.d_n + dims.d_r), -q_range, q_range);
  ExpectVaries(q, -q_range, q_range, "q");
  ExpectVaries(cache.Rows(0, std::min<int64_t>(ctx, 3)), -1, 1, "cache rows");
  const KvBWeights weights = RandomWeights(dims, with_bias, rng);

  const std::vector<float> before = cache.pool();
  const int64_t out_floats = nt * dims.h_q * dims.d_v;
  GuardedBuffer fast(out_floats), naive(out_floats);
  // Segments: each latent head, then the RoPE key.
  std::vector<int64_t> segments(static_cast<size_t>(dims.h_c), dims.d_c);
  if (dims.d_r > 0) segments.push_back(dims.d_r);
  attention_test::NarrowCache narrow(cache, dtype == KvDType::kF32 ? KvDType::kBF16 : dtype,
                                     segments);
  const CacheView view = dtype == KvDType::kF32 ? cache.view() : narrow.view();
  LatentAttention(shape, view, tokens, q.data(), UpProjection(weights, shape), fast.data());
  LatentAttentionNaive(shape, view, tokens, q.data(), weights.kv_b.data(), weights.bias_or_null(),
                       naive.data());
  EXPECT_TRUE(fast.GuardsIntact());
  EXPECT_TRUE(naive.GuardsIntact());
  EXPECT_TRUE(SameBytes(before, cache.pool())) << "the kernel wrote to the cache";
  const double factor = dtype == KvDType::kF32 ? 1.0 : attention_test::kNarrowBoundFactor;
  return ExpectClose(fast.body(), naive.body(),
                     factor * LatentTolerance(shape, cache, tokens, q, weights), "fast vs naive");
}

TEST(LatentTest, FastMatchesNaiveSweep) {
  // MLA (h_c = 1) and GLA shapes; d_n = 0 and d_r = 0 are the edges. {12, 1, 520, …} has
  // running sums past half of L1 (12 heads × 520 floats), which take 32-row blocks; the last
  // two have 16 and 33 heads per latent, whose scores take the heads in lanes.
  const LatentDims dims_list[] = {
      {1, 1, 5, 3, 2, 7},    {4, 1, 16, 16, 8, 16},  {6, 2, 64, 8, 32, 5}, {5, 5, 5, 16, 2, 16},
      {8, 8, 16, 7, 8, 3},   {8, 1, 64, 16, 32, 16}, {4, 2, 16, 0, 8, 8},  {2, 1, 5, 4, 0, 4},
      {12, 1, 520, 8, 8, 8}, {32, 2, 40, 8, 8, 8},   {33, 1, 24, 4, 6, 4}};
  // Both builds of the inner kernels (AVX-512 when the CPU has it, and portable).
  const attention_test::RestoreDecodeIsa restore;
  for (const auto isa : {BestIsa(), Isa::kPortable}) {
    attention_internal::SetDecodeIsa(isa);
    double worst = 0.0;
    for (const LatentDims& dims : dims_list) {
      for (const int64_t ctx : {1, 2, 17, 100, 600}) {
        for (const int64_t page : {1, 3, 16}) {
          for (const int64_t window : {0, 1, 5}) {
            for (const uint64_t seed : {1u, 2u}) {
              worst = std::max(worst, CheckLatentCase(dims, ctx, page, window, seed, seed == 2));
              if (HasFailure()) return;
            }
          }
        }
      }
    }
    std::printf("Latent sweep (%s): worst error / derived bound = %.3g\n",
                attention_internal::DecodeIsaName(), worst);
  }
}

// bf16 and int8 caches, both builds of the inner kernels.
TEST(LatentTest, NarrowCacheMatchesNaive) {
  const LatentDims dims_list[] = {{4, 1, 16, 16, 8, 16}, {6, 2, 64, 8, 32, 5},
                                  {8, 1, 64, 16, 32, 16}, {2, 1, 5, 4, 0, 4},
                                  {12, 1, 520, 16, 8, 16}, {32, 1, 40, 8, 8, 8}};
  const attention_test::RestoreDecodeIsa restore;
  for (const auto isa : {BestIsa(), Isa::kPortable}) {
    attention_internal::SetDecodeIsa(isa);
    for (const KvDType dtype : {KvDType::kBF16, KvDType::kInt8}) {
      double worst = 0.0;
      for (const LatentDims& dims : dims_list) {
        for (const int64_t ctx : {1, 17, 600}) {
          for (const int64_t page : {1, 16}) {
            for (const int64_t window : {0, 5}) {
              const uint64_t seed = static_cast<uint64_t>(ctx + page) % 2 + 1;
              worst = std::max(
                  worst, CheckLatentCase(dims, ctx, page, window, seed, seed == 2, dtype));
              if (HasFailure()) return;
            }
          }
        }
      }
      std::printf("Latent %s sweep (%s): worst error / derived bound = %.3g\n",
                  KvDTypeName(dtype), attention_internal::DecodeIsaName(), worst);
    }
  }
}

// More tokens than one tile of the fast path (16), each at its own position.
TEST(LatentTest, ManyTokensAcrossTiles) {
  const LatentDims dims{6, 2, 16, 8, 8, 8};
  Rng rng(21, "tiles");
  TestCache cache(dims.h_c * dims.d_c + dims.d_r, 3, {300}, rng);
  std::vector<QueryToken> tokens;
  for (int64_t pos = 299; pos >= 0; pos -= 7) tokens.push_back({cache.table(0), pos});  // 43
  const std::vector<float> q =
      rng.UniformVector(tokens.size() * dims.h_q * (dims.d_n + dims.d_r), -2, 2);
  const KvBWeights weights = RandomWeights(dims, true, rng);
  const LatentShape shape = ShapeOf(dims, 0);
  GuardedBuffer fast(tokens.size() * dims.h_q * dims.d_v),
      naive(tokens.size() * dims.h_q * dims.d_v);
  LatentAttention(shape, cache.view(), tokens, q.data(), UpProjection(weights, shape), fast.data());
  LatentAttentionNaive(shape, cache.view(), tokens, q.data(), weights.kv_b.data(),
                       weights.bias.data(), naive.data());
  EXPECT_TRUE(fast.GuardsIntact());
  ExpectClose(fast.body(), naive.body(), LatentTolerance(shape, cache, tokens, q, weights),
              "fast vs naive");
}

// kv_b_proj in BF16 or F16 stays 16-bit (SplitKvB keeps the bits) and the kernel reads it
// through the shared matmul, which widens exactly: the output is bit-identical to the same
// kernel on the f32 widening of those weights.
TEST(LatentTest, SixteenBitKvBEqualsItsF32Widening) {
  const LatentDims dims{6, 2, 40, 24, 8, 20};
  Rng rng(41, "kv_b 16-bit");
  TestCache cache(dims.h_c * dims.d_c + dims.d_r, 5, RaggedSeqLens(70), rng);
  const std::vector<QueryToken> tokens = RaggedTokens(cache, rng);
  const std::vector<float> q =
      rng.UniformVector(tokens.size() * dims.h_q * (dims.d_n + dims.d_r), -2, 2);
  const KvBWeights weights = RandomWeights(dims, true, rng);
  const LatentShape shape = ShapeOf(dims, 0);
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    Linear half, widened;
    half.out = widened.out = dims.h_q * (dims.d_n + dims.d_v);
    half.in = widened.in = dims.d_c;
    half.dtype = dtype;
    half.b = widened.b = weights.bias;
    for (const float w : weights.kv_b) {
      half.w16.push_back(dtype == DType::kBF16 ? F32ToBf16(w) : F32ToF16(w));
      widened.w.push_back(ElementToF32(dtype, &half.w16.back(), 0));
    }
    const LatentUpProjection up_half = SplitKvB(half, dims.d_n, dims.d_v);
    EXPECT_EQ(up_half.uk_t.dtype, dtype);
    EXPECT_EQ(up_half.uv.dtype, dtype);
    EXPECT_EQ(up_half.uk_t.bytes() + up_half.uv.bytes(),
              static_cast<int64_t>(half.w16.size() * 2 + dims.h_q * dims.d_v * sizeof(float)));
    const int64_t out_floats = static_cast<int64_t>(tokens.size()) * dims.h_q * dims.d_v;
    GuardedBuffer from_half(out_floats), from_f32(out_floats);
    LatentAttention(shape, cache.view(), tokens, q.data(), up_half, from_half.data());
    LatentAttention(shape, cache.view(), tokens, q.data(), SplitKvB(widened, dims.d_n, dims.d_v),
                    from_f32.data());
    EXPECT_TRUE(from_half.GuardsIntact());
    const std::vector<float> a(from_half.body().begin(), from_half.body().end());
    const std::vector<float> b(from_f32.body().begin(), from_f32.body().end());
    const auto [lo, hi] = std::minmax_element(a.begin(), a.end());
    ExpectVaries(a, *lo, *hi, "output");  // not a constant: the comparison means something
    EXPECT_TRUE(SameBytes(a, b));
  }
}

// MLA is GLA with one latent head (DESIGN §2.3): GLA whose h_c latents are all
// copies of one latent gives the MLA result.
TEST(LatentTest, MlaEqualsGlaWithCopiedLatents) {
  const int64_t h_q = 4, d_c = 16, d_n = 8, d_r = 8, d_v = 8, ctx = 300;
  for (const int64_t h_c : {2, 4}) {
    SCOPED_TRACE(absl::StrFormat("h_c=%d", h_c));
    Rng rng(h_c, "mla_vs_gla");
    const LatentDims mla_dims{h_q, 1, d_c, d_n, d_r, d_v};
    const LatentDims gla_dims{h_q, h_c, d_c, d_n, d_r, d_v};
    TestCache mla_cache(d_c + d_r, 3, {ctx}, rng);
    TestCache gla_cache(h_c * d_c + d_r, 16, {ctx}, rng);
    for (int64_t pos = 0; pos < ctx; ++pos) {
      const float* src = mla_cache.Row(0, pos);
      float* dst = gla_cache.Row(0, pos);
      for (int64_t j = 0; j < h_c; ++j) std::copy_n(src, d_c, dst + j * d_c);
      std::copy_n(src + d_c, d_r, dst + h_c * d_c);
    }
    std::vector<QueryToken> mla_tokens, gla_tokens;
    for (const int64_t pos : {ctx - 1, int64_t{5}, int64_t{260}}) {
      mla_tokens.push_back({mla_cache.table(0), pos});
      gla_tokens.push_back({gla_cache.table(0), pos});
    }
    const std::vector<float> q = rng.UniformVector(mla_tokens.size() * h_q * (d_n + d_r), -2, 2);
    const KvBWeights weights = RandomWeights(mla_dims, true, rng);
    const int64_t out_floats = static_cast<int64_t>(mla_tokens.size()) * h_q * d_v;
    GuardedBuffer mla(out_floats), gla(out_floats), mla_naive(out_floats), gla_naive(out_floats);
    LatentAttention(ShapeOf(mla_dims, 0), mla_cache.view(), mla_tokens, q.data(),
                    UpProjection(weights, ShapeOf(mla_dims, 0)), mla.data());
    LatentAttention(ShapeOf(gla_dims, 0), gla_cache.view(), gla_tokens, q.data(),
                    UpProjection(weights, ShapeOf(gla_dims, 0)), gla.data());
    LatentAttentionNaive(ShapeOf(mla_dims, 0), mla_cache.view(), mla_tokens, q.data(),
                         weights.kv_b.data(), weights.bias.data(), mla_naive.data());
    LatentAttentionNaive(ShapeOf(gla_dims, 0), gla_cache.view(), gla_tokens, q.data(),
                         weights.kv_b.data(), weights.bias.data(), gla_naive.data());
    const double tol = LatentTolerance(ShapeOf(mla_dims, 0), mla_cache, mla_tokens, q, weights);
    // Both within the bound of the exact result, so within twice it of each other.
    ExpectClose(gla.body(), mla.body(), 2 * tol, "fast gla vs mla");
    ExpectClose(gla_naive.body(), mla_naive.body(), 2 * tol, "naive gla vs mla");
    EXPECT_TRUE(gla.GuardsIntact());
  }
}

// The W_UK bias adds a per-head constant to every score, which softmax cancels:
// outputs do not depend on it. The W_UV bias is added to the output as is.
TEST(LatentTest, KeyBiasCancelsValueBiasAdds) {
  const LatentDims dims{6, 2, 16, 8, 8, 8};
  Rng rng(31, "bias");
  TestCache cache(dims.h_c * dims.d_c + dims.d_r, 3, {120}, rng);
  const std::vector<QueryToken> tokens = {{cache.table(0), 119}, {cache.table(0), 40}};
  const std::vector<float> q =
      rng.UniformVector(tokens.size() * dims.h_q * (dims.d_n + dims.d_r), -2, 2);
  const KvBWeights with_bias = RandomWeights(dims, true, rng);
  KvBWeights v_bias_only = with_bias;  // b_K zeroed
  KvBWeights no_bias = with_bias;
  no_bias.bias.clear();
  const int64_t dkv = dims.d_n + dims.d_v;
  for (int64_t i = 0; i < dims.h_q; ++i) {
    std::fill_n(v_bias_only.bias.begin() + i * dkv, dims.d_n, 0.0f);
  }
  const LatentShape shape = ShapeOf(dims, 0);
  const int64_t out_floats = static_cast<int64_t>(tokens.size()) * dims.h_q * dims.d_v;
  GuardedBuffer full_naive(out_floats), v_only_naive(out_floats), full_fast(out_floats),
      none_fast(out_floats);
  LatentAttentionNaive(shape, cache.view(), tokens, q.data(), with_bias.kv_b.data(),
                       with_bias.bias.data(), full_naive.data());
  LatentAttentionNaive(shape, cache.view(), tokens, q.data(), v_bias_only.kv_b.data(),
                       v_bias_only.bias.data(), v_only_naive.data());
  LatentAttention(shape, cache.view(), tokens, q.data(), UpProjection(with_bias, shape),
                  full_fast.data());
  LatentAttention(shape, cache.view(), tokens, q.data(), UpProjection(no_bias, shape),
                  none_fast.data());
  // The reference computes in double: dropping b_K changes it only by rounding the
  // double result to float (≤ u·|o| each side).
  double o_max = 0.0;
  for (const float o : full_naive.body()) o_max = std::max(o_max, double{std::fabs(o)});
  ExpectClose(full_naive.body(), v_only_naive.body(), 2 * kU * o_max, "naive with/without b_K");
  // Fast with and without bias: the bias-free output D is the same float in both
  // runs, and with bias the kernel returns fl(D + b_V), off by ≤ u·|D + b_V|.
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    for (int64_t i = 0; i < dims.h_q; ++i) {
      for (int64_t v = 0; v < dims.d_v; ++v) {
        const size_t o = (ti * dims.h_q + i) * dims.d_v + v;
        const double b = with_bias.bias[i * dkv + dims.d_n + v];
        const double with = full_fast.body()[o];
        EXPECT_LE(std::fabs(with - b - none_fast.body()[o]), kU * std::fabs(with)) << o;
      }
    }
  }
}

}  // namespace
}  // namespace shardlm
