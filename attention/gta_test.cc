#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/strings/str_format.h"
#include "attention/gqa.h"
#include "attention/gta.h"
#include "attention/decode_core.h"
#include "attention/test_util.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

using attention_test::AttentionTolerance;
using attention_test::ExpectClose;
using attention_test::ExpectVaries;
using attention_test::GuardedBuffer;
using attention_test::MaxL1;
using attention_test::MaxRange;
using attention_test::RaggedSeqLens;
using attention_test::RaggedTokens;
using attention_test::SameBytes;
using attention_test::ScoreError;
using attention_test::TestCache;

struct GtaDims {
  int64_t head_dim;
  int64_t rope_dim;
  int64_t h_q;
  int64_t h_kv;
};

// Derived bound (test_util.h): the key is [tied nope part | k_rope], the value the
// tied state, both bounded by the largest |value| in the rows.
double GtaTolerance(const GtaShape& shape, TestCache& cache, std::span<const QueryToken> tokens,
                    const std::vector<float>& q) {
  const double row_max = cache.MaxAbs(0, cache.row_floats());
  const double s_abs =
      shape.scale * row_max *
      MaxL1(q.data(), tokens.size() * shape.num_q_heads, shape.head_dim, shape.head_dim);
  return AttentionTolerance(MaxRange(tokens, shape.window), ScoreError(shape.head_dim, s_abs),
                            s_abs, row_max);
}

double CheckGtaCase(const GtaDims& dims, int64_t ctx, int64_t page, int64_t window, uint64_t seed,
                    KvDType dtype = KvDType::kF32) {
  SCOPED_TRACE(absl::StrFormat("d_h=%d d_r=%d h_q=%d h_kv=%d ctx=%d page=%d window=%d seed=%d",
                               dims.head_dim, dims.rope_dim, dims.h_q, dims.h_kv, ctx, page, window,
                               seed));
  Rng rng(seed, absl::StrFormat("gta/%d/%d/%d", dims.head_dim, dims.h_q, ctx));
  const GtaShape shape{dims.h_q,
                       dims.h_kv,
                       dims.head_dim,
                       dims.rope_dim,
                       static_cast<float>(1.0 / std::sqrt(dims.head_dim)),
                       window};
  TestCache cache(dims.h_kv * dims.head_dim + dims.rope_dim, page, RaggedSeqLens(ctx), rng);
  const std::vector<QueryToken> tokens = RaggedTokens(cache, rng);
  const int64_t out_floats = static_cast<int64_t>(tokens.size()) * dims.h_q * dims.head_dim;
  const float q_range = seed % 2 == 1 ? 1.0f : 4.0f;
  const std::vector<float> q = rng.UniformVector(out_floats, -q_range, q_range);
  ExpectVaries(q, -q_range, q_range, "q");
  ExpectVaries(cache.Rows(0, std::min<int64_t>(ctx, 3)), -1, 1, "cache rows");

  const std::vector<float> before = cache.pool();
  GuardedBuffer fast(out_floats), naive(out_floats);
  double factor = 1.0;
  if (dtype == KvDType::kF32) {
    GtaAttention(shape, cache.view(), tokens, q.data(), fast.data());
    GtaAttentionNaive(shape, cache.view(), tokens, q.data(), naive.data());
  } else {
    // Segments: each tied state, then the RoPE key.
    std::vector<int64_t> segments(static_cast<size_t>(dims.h_kv), dims.head_dim);
    if (dims.rope_dim > 0) segments.push_back(dims.rope_dim);
    attention_test::NarrowCache narrow(cache, dtype, segments);
    GtaAttention(shape, narrow.view(), tokens, q.data(), fast.data());
    GtaAttentionNaive(shape, narrow.view(), tokens, q.data(), naive.data());
    factor = attention_test::kNarrowBoundFactor;
  }
  EXPECT_TRUE(fast.GuardsIntact());
  EXPECT_TRUE(naive.GuardsIntact());
  EXPECT_TRUE(SameBytes(before, cache.pool())) << "the kernel wrote to the cache";
  return ExpectClose(fast.body(), naive.body(), factor * GtaTolerance(shape, cache, tokens, q),
                     "fast vs naive");
}

TEST(GtaTest, FastMatchesNaiveSweep) {
  // rope_dim 0 (no RoPE key) and rope_dim = head_dim (no nope part) are the edges.
  const GtaDims dims_list[] = {{2, 2, 1, 1},   {7, 2, 4, 1},  {16, 8, 6, 2}, {33, 32, 5, 5},
                               {64, 32, 8, 8}, {16, 2, 8, 2}, {8, 8, 4, 4},  {9, 0, 2, 1}};
  // Both builds of the inner kernels (AVX-512 when the CPU has it, and portable).
  const attention_test::RestoreDecodeIsa restore;
  for (const auto isa : {BestIsa(),
                         Isa::kPortable}) {
    attention_internal::SetDecodeIsa(isa);
    double worst = 0.0;
    for (const GtaDims& dims : dims_list) {
      for (const int64_t ctx : {1, 2, 17, 100, 600}) {
        for (const int64_t page : {1, 3, 16}) {
          for (const int64_t window : {0, 1, 5}) {
            for (const uint64_t seed : {1u, 2u}) {
              worst = std::max(worst, CheckGtaCase(dims, ctx, page, window, seed));
              if (HasFailure()) return;
            }
          }
        }
      }
    }
    std::printf("GTA sweep (%s): worst error / derived bound = %.3g\n",
                attention_internal::DecodeIsaName(), worst);
  }
}

// bf16 and int8 caches, both builds of the inner kernels.
TEST(GtaTest, NarrowCacheMatchesNaive) {
  const GtaDims dims_list[] = {{7, 2, 4, 1}, {16, 8, 6, 2}, {33, 32, 5, 5}, {9, 0, 2, 1}};
  const attention_test::RestoreDecodeIsa restore;
  for (const auto isa : {BestIsa(), Isa::kPortable}) {
    attention_internal::SetDecodeIsa(isa);
    for (const KvDType dtype : {KvDType::kBF16, KvDType::kInt8}) {
      double worst = 0.0;
      for (const GtaDims& dims : dims_list) {
        for (const int64_t ctx : {1, 17, 600}) {
          for (const int64_t page : {1, 16}) {
            for (const int64_t window : {0, 5}) {
              const uint64_t seed = static_cast<uint64_t>(ctx + page) % 2 + 1;
              worst = std::max(worst, CheckGtaCase(dims, ctx, page, window, seed, dtype));
              if (HasFailure()) return;
            }
          }
        }
      }
      std::printf("GTA %s sweep (%s): worst error / derived bound = %.3g\n", KvDTypeName(dtype),
                  attention_internal::DecodeIsaName(), worst);
    }
  }
}

// GTA equals GQA over explicitly built keys k_j = [tied_j[0 : d_h − d_r] | k_rope]
// and values v_j = tied_j (DESIGN §2.2).
TEST(GtaTest, EqualsGqaWithExplicitKeysAndValues) {
  for (const GtaDims dims : {GtaDims{16, 8, 6, 2}, GtaDims{7, 2, 3, 3}, GtaDims{33, 32, 4, 1}}) {
    const int64_t d = dims.head_dim, d_r = dims.rope_dim, h_q = dims.h_q, h_kv = dims.h_kv;
    const int64_t ctx = 300;
    SCOPED_TRACE(absl::StrFormat("d_h=%d d_r=%d h_q=%d h_kv=%d", d, d_r, h_q, h_kv));
    Rng rng(4, absl::StrFormat("gta_vs_gqa/%d", d));
    TestCache gta_cache(h_kv * d + d_r, 3, {ctx}, rng);
    TestCache gqa_cache(2 * h_kv * d, 16, {ctx}, rng);
    for (int64_t pos = 0; pos < ctx; ++pos) {
      const float* tied = gta_cache.Row(0, pos);
      const float* k_rope = tied + h_kv * d;
      float* row = gqa_cache.Row(0, pos);
      for (int64_t j = 0; j < h_kv; ++j) {
        std::copy_n(tied + j * d, d - d_r, row + j * d);     // key, nope part
        std::copy_n(k_rope, d_r, row + j * d + d - d_r);     // key, RoPE part
        std::copy_n(tied + j * d, d, row + (h_kv + j) * d);  // value
      }
    }
    std::vector<QueryToken> gta_tokens, gqa_tokens;
    for (const int64_t pos : {ctx - 1, int64_t{0}, int64_t{200}}) {
      gta_tokens.push_back({gta_cache.table(0), pos});
      gqa_tokens.push_back({gqa_cache.table(0), pos});
    }
    const std::vector<float> q = rng.UniformVector(gta_tokens.size() * h_q * d, -2, 2);
    const float scale = static_cast<float>(1.0 / std::sqrt(d));
    const GtaShape gta{h_q, h_kv, d, d_r, scale, 0};
    GuardedBuffer gta_out(q.size()), gqa_out(q.size());
    GtaAttention(gta, gta_cache.view(), gta_tokens, q.data(), gta_out.data());
    GqaAttention({h_q, h_kv, d, scale, 0}, gqa_cache.view(), gqa_tokens, q.data(), gqa_out.data());
    EXPECT_TRUE(gta_out.GuardsIntact());
    // Each is within the bound of the exact result, so within twice it of the other.
    ExpectClose(gta_out.body(), gqa_out.body(), 2 * GtaTolerance(gta, gta_cache, gta_tokens, q),
                "gta vs gqa");
  }
}

}  // namespace
}  // namespace shardlm
