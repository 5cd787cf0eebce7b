#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/strings/str_format.h"
#include "attention/gqa.h"
#include "attention/decode_core.h"
#include "attention/test_util.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

using attention_internal::kChunk;
using attention_test::AttentionTolerance;
using attention_test::ExpectClose;
using attention_test::ExpectVaries;
using attention_test::GuardedBuffer;
using attention_test::MaxL1;
using attention_test::MaxRange;
using attention_test::NarrowCache;
using attention_test::RaggedSeqLens;
using attention_test::RaggedTokens;
using attention_test::SameBytes;
using attention_test::ScoreError;
using attention_test::TestCache;

struct GqaCase {
  int64_t head_dim;
  int64_t h_q;
  int64_t h_kv;
  int64_t ctx;
  int64_t page_size;
  int64_t window;
  uint64_t seed;
  float q_range;  // q uniform in ±q_range: 1 gives flat softmaxes, larger ones peaked
};

GqaShape ShapeOf(const GqaCase& c) {
  return {c.h_q, c.h_kv, c.head_dim, static_cast<float>(1.0 / std::sqrt(c.head_dim)), c.window};
}

// Derived bound (test_util.h) for GQA outputs over `cache` with queries q.
double GqaTolerance(const GqaShape& shape, TestCache& cache, std::span<const QueryToken> tokens,
                    const std::vector<float>& q) {
  const int64_t kv = shape.num_kv_heads * shape.head_dim;
  const double s_abs =
      shape.scale * cache.MaxAbs(0, kv) *
      MaxL1(q.data(), tokens.size() * shape.num_q_heads, shape.head_dim, shape.head_dim);
  return AttentionTolerance(MaxRange(tokens, shape.window), ScoreError(shape.head_dim, s_abs),
                            s_abs, cache.MaxAbs(kv, 2 * kv));
}

// Fast vs naive on a ragged batch over shuffled pages; also checks the guards,
// that outputs are fully written (NaN-initialized bodies) and that the cache is
// not modified. Returns the worst error / bound.
double CheckGqaCase(const GqaCase& c, KvDType dtype = KvDType::kF32) {
  SCOPED_TRACE(absl::StrFormat("d=%d h_q=%d h_kv=%d ctx=%d page=%d window=%d seed=%d", c.head_dim,
                               c.h_q, c.h_kv, c.ctx, c.page_size, c.window, c.seed));
  Rng rng(c.seed, absl::StrFormat("gqa/%d/%d/%d", c.head_dim, c.h_q, c.ctx));
  const GqaShape shape = ShapeOf(c);
  TestCache cache(2 * c.h_kv * c.head_dim, c.page_size, RaggedSeqLens(c.ctx), rng);
  const std::vector<QueryToken> tokens = RaggedTokens(cache, rng);
  const int64_t out_floats = static_cast<int64_t>(tokens.size()) * c.h_q * c.head_dim;
  const std::vector<float> q = rng.UniformVector(out_floats, -c.q_range, c.q_range);
  ExpectVaries(q, -c.q_range, c.q_range, "q");
  ExpectVaries(cache.Rows(0, std::min<int64_t>(c.ctx, 3)), -1, 1, "cache rows");

  const std::vector<float> before = cache.pool();
  GuardedBuffer fast(out_floats), naive(out_floats);
  double factor = 1.0;
  if (dtype == KvDType::kF32) {
    GqaAttention(shape, cache.view(), tokens, q.data(), fast.data());
    GqaAttentionNaive(shape, cache.view(), tokens, q.data(), naive.data());
  } else {
    // Segments: each KV head's K, then each one's V.
    NarrowCache narrow(cache, dtype, std::vector<int64_t>(2 * c.h_kv, c.head_dim));
    const std::vector<unsigned char> narrow_before = narrow.pool();
    GqaAttention(shape, narrow.view(), tokens, q.data(), fast.data());
    GqaAttentionNaive(shape, narrow.view(), tokens, q.data(), naive.data());
    EXPECT_TRUE(narrow_before == narrow.pool()) << "the kernel wrote to the cache";
    factor = attention_test::kNarrowBoundFactor;
  }
  EXPECT_TRUE(fast.GuardsIntact());
  EXPECT_TRUE(naive.GuardsIntact());
  EXPECT_TRUE(SameBytes(before, cache.pool())) << "the kernel wrote to the cache";
  return ExpectClose(fast.body(), naive.body(), factor * GqaTolerance(shape, cache, tokens, q),
                     "fast vs naive");
}

TEST(GqaTest, FastMatchesNaiveSweep) {
  struct Heads {
    int64_t q, kv;
  };
  // Both builds of the inner kernels (AVX-512 when the CPU has it, and portable).
  const attention_test::RestoreDecodeIsa restore;
  for (const auto isa : {BestIsa(),
                         Isa::kPortable}) {
    attention_internal::SetDecodeIsa(isa);
    double worst = 0.0;
    for (const int64_t d : {1, 7, 16, 33, 64}) {
      for (const Heads heads : {Heads{1, 1}, Heads{4, 1}, Heads{6, 2}, Heads{8, 8}, Heads{5, 5}}) {
        for (const int64_t ctx : {1, 2, 17, 100, 600}) {
          for (const int64_t page : {1, 3, 16}) {
            for (const int64_t window : {0, 1, 5}) {
              for (const uint64_t seed : {1u, 2u}) {
                const float q_range = seed == 1 ? 1.0f : 4.0f;
                worst = std::max(
                    worst, CheckGqaCase({d, heads.q, heads.kv, ctx, page, window, seed, q_range}));
                if (HasFailure()) return;
              }
            }
          }
        }
      }
    }
    std::printf("GQA sweep (%s): worst error / derived bound = %.3g\n",
                attention_internal::DecodeIsaName(), worst);
  }
}

// bf16 and int8 caches (--kv-dtype): the kernels read the stored type directly, against the
// naive reference over the same decoded values, on both builds of the inner kernels.
TEST(GqaTest, NarrowCacheMatchesNaive) {
  struct Heads {
    int64_t q, kv;
  };
  const attention_test::RestoreDecodeIsa restore;
  for (const auto isa : {BestIsa(), Isa::kPortable}) {
    attention_internal::SetDecodeIsa(isa);
    for (const KvDType dtype : {KvDType::kBF16, KvDType::kInt8}) {
      double worst = 0.0;
      for (const int64_t d : {1, 7, 16, 33, 64}) {
        for (const Heads heads : {Heads{4, 1}, Heads{6, 2}, Heads{8, 8}}) {
          for (const int64_t ctx : {1, 17, 600}) {
            for (const int64_t page : {1, 16}) {
              for (const int64_t window : {0, 5}) {
                const uint64_t seed = static_cast<uint64_t>(d + ctx) % 2 + 1;
                worst = std::max(worst, CheckGqaCase({d, heads.q, heads.kv, ctx, page, window, seed,
                                                      seed == 1 ? 1.0f : 4.0f},
                                                     dtype));
                if (HasFailure()) return;
              }
            }
          }
        }
      }
      std::printf("GQA %s sweep (%s): worst error / derived bound = %.3g\n", KvDTypeName(dtype),
                  attention_internal::DecodeIsaName(), worst);
    }
  }
}

// Ranges that end just before, on and after chunk boundaries, alone and windowed.
TEST(GqaTest, ChunkBoundaries) {
  for (const int64_t ctx : {kChunk - 1, kChunk, kChunk + 1, 2 * kChunk, 2 * kChunk + 1}) {
    for (const int64_t window : {int64_t{0}, kChunk, kChunk + 1}) {
      CheckGqaCase({16, 6, 2, ctx, 16, window, 3, 2.0f});
    }
  }
}

// Scores up to ~200, beyond fp32 exp's overflow at 88.7: the max subtraction must keep exp finite
// and the result must still match the double reference within the (wider) derived bound.
TEST(GqaTest, LargeScoresStayFinite) {
  for (const uint64_t seed : {1u, 2u}) CheckGqaCase({16, 4, 2, 300, 3, 0, seed, 200.0f});
}

// MHA (h_kv = h_q) against attention computed directly from contiguous K and V
// arrays: checks the paged path and the naive reference against plain indexing.
TEST(GqaTest, MhaEqualsDirectComputation) {
  const int64_t h = 4, d = 16, ctx = kChunk + 44;  // two chunks
  for (const uint64_t seed : {1u, 2u, 3u}) {
    Rng rng(seed, "mha");
    const std::vector<float> k = rng.UniformVector(ctx * h * d, -1, 1);  // [ctx, h, d]
    const std::vector<float> v = rng.UniformVector(ctx * h * d, -1, 1);  // [ctx, h, d]
    TestCache cache(2 * h * d, 3, {ctx}, rng);
    for (int64_t pos = 0; pos < ctx; ++pos) {
      std::copy_n(k.begin() + pos * h * d, h * d, cache.Row(0, pos));
      std::copy_n(v.begin() + pos * h * d, h * d, cache.Row(0, pos) + h * d);
    }
    std::vector<QueryToken> tokens;
    for (const int64_t pos : {ctx - 1, int64_t{0}, int64_t{150}, kChunk + 1}) {
      tokens.push_back({cache.table(0), pos});
    }
    const std::vector<float> q = rng.UniformVector(tokens.size() * h * d, -2, 2);
    const GqaShape shape{h, h, d, 0.25f, 0};

    std::vector<float> direct(q.size());  // [tokens, h, d]
    for (size_t ti = 0; ti < tokens.size(); ++ti) {
      for (int64_t i = 0; i < h; ++i) {
        const float* qi = q.data() + (ti * h + i) * d;
        std::vector<double> p(tokens[ti].pos + 1);
        double max_s = -1e300, sum = 0.0;
        for (int64_t t = 0; t <= tokens[ti].pos; ++t) {
          double s = 0.0;
          for (int64_t c = 0; c < d; ++c) s += double{qi[c]} * k[(t * h + i) * d + c];
          p[t] = shape.scale * s;
          max_s = std::max(max_s, p[t]);
        }
        for (double& x : p) sum += (x = std::exp(x - max_s));
        for (int64_t c = 0; c < d; ++c) {
          double o = 0.0;
          for (int64_t t = 0; t <= tokens[ti].pos; ++t) o += p[t] / sum * v[(t * h + i) * d + c];
          direct[(ti * h + i) * d + c] = static_cast<float>(o);
        }
      }
    }
    GuardedBuffer fast(q.size()), naive(q.size());
    GqaAttention(shape, cache.view(), tokens, q.data(), fast.data());
    GqaAttentionNaive(shape, cache.view(), tokens, q.data(), naive.data());
    const double tol = GqaTolerance(shape, cache, tokens, q);
    ExpectClose(fast.body(), direct, tol, "fast vs direct");
    ExpectClose(naive.body(), direct, tol, "naive vs direct");
    EXPECT_TRUE(fast.GuardsIntact());
  }
}

// GQA with g = 3 equals MHA over K/V heads repeated per group (HF's repeat_kv):
// checks that groups are contiguous (head i reads KV head i / g).
TEST(GqaTest, GqaEqualsMhaWithRepeatedKv) {
  const int64_t h_q = 6, h_kv = 2, g = 3, d = 7, ctx = 280;
  Rng rng(5, "repeat_kv");
  TestCache gqa_cache(2 * h_kv * d, 16, {ctx}, rng);
  TestCache mha_cache(2 * h_q * d, 3, {ctx}, rng);
  for (int64_t pos = 0; pos < ctx; ++pos) {
    const float* src = gqa_cache.Row(0, pos);
    float* dst = mha_cache.Row(0, pos);
    for (int64_t i = 0; i < h_q; ++i) {
      std::copy_n(src + (i / g) * d, d, dst + i * d);                 // K
      std::copy_n(src + (h_kv + i / g) * d, d, dst + (h_q + i) * d);  // V
    }
  }
  std::vector<QueryToken> gqa_tokens, mha_tokens;
  for (const int64_t pos : {ctx - 1, int64_t{3}, int64_t{100}}) {
    gqa_tokens.push_back({gqa_cache.table(0), pos});
    mha_tokens.push_back({mha_cache.table(0), pos});
  }
  const std::vector<float> q = rng.UniformVector(gqa_tokens.size() * h_q * d, -3, 3);
  const GqaShape gqa{h_q, h_kv, d, 0.4f, 0};
  const GqaShape mha{h_q, h_q, d, 0.4f, 0};
  GuardedBuffer gqa_out(q.size()), mha_out(q.size());
  GqaAttention(gqa, gqa_cache.view(), gqa_tokens, q.data(), gqa_out.data());
  GqaAttention(mha, mha_cache.view(), mha_tokens, q.data(), mha_out.data());
  // Both are within the bound of the exact result, hence within twice it of each other.
  ExpectClose(gqa_out.body(), mha_out.body(), 2 * GqaTolerance(gqa, gqa_cache, gqa_tokens, q),
              "gqa vs mha");
}

// Window 1 attends to the token itself: the output is exactly its value row
// (one softmax weight of exactly 1). A window covering the whole context is
// full attention.
TEST(GqaTest, SlidingWindowEdges) {
  const int64_t h_q = 4, h_kv = 2, d = 7, ctx = 40;
  Rng rng(9, "window");
  TestCache cache(2 * h_kv * d, 3, {ctx}, rng);
  std::vector<QueryToken> tokens;
  for (const int64_t pos : {0, 1, 2, 17, 39}) tokens.push_back({cache.table(0), pos});
  const std::vector<float> q = rng.UniformVector(tokens.size() * h_q * d, -2, 2);
  GuardedBuffer one(q.size()), one_naive(q.size()), wide(q.size()), full(q.size());
  GqaAttention({h_q, h_kv, d, 0.5f, 1}, cache.view(), tokens, q.data(), one.data());
  GqaAttentionNaive({h_q, h_kv, d, 0.5f, 1}, cache.view(), tokens, q.data(), one_naive.data());
  GqaAttention({h_q, h_kv, d, 0.5f, ctx + 5}, cache.view(), tokens, q.data(), wide.data());
  GqaAttention({h_q, h_kv, d, 0.5f, 0}, cache.view(), tokens, q.data(), full.data());
  for (size_t ti = 0; ti < tokens.size(); ++ti) {
    const float* row = cache.Row(0, tokens[ti].pos);
    for (int64_t i = 0; i < h_q; ++i) {
      for (int64_t c = 0; c < d; ++c) {
        const float v = row[(h_kv + i / (h_q / h_kv)) * d + c];
        EXPECT_EQ(one.body()[(ti * h_q + i) * d + c], v);
        EXPECT_EQ(one_naive.body()[(ti * h_q + i) * d + c], v);
      }
    }
  }
  for (size_t i = 0; i < q.size(); ++i) EXPECT_EQ(wide.body()[i], full.body()[i]);
}

// The derived bound is tight enough to see a plausible bug: dropping one of 600
// positions (an off-by-one range) moves the output well beyond it.
TEST(GqaTest, BoundDetectsDroppedPosition) {
  const int64_t h = 2, d = 16, ctx = 600;
  Rng rng(11, "dropped");
  TestCache cache(2 * h * d, 16, {ctx}, rng);
  const std::vector<QueryToken> tokens = {{cache.table(0), ctx - 1}};
  const std::vector<float> q = rng.UniformVector(h * d, -1, 1);
  GuardedBuffer full(h * d), dropped(h * d);
  GqaAttention({h, h, d, 0.25f, 0}, cache.view(), tokens, q.data(), full.data());
  GqaAttention({h, h, d, 0.25f, ctx - 1}, cache.view(), tokens, q.data(), dropped.data());
  const double tol = GqaTolerance({h, h, d, 0.25f, 0}, cache, tokens, q);
  double max_diff = 0.0;
  for (int64_t i = 0; i < h * d; ++i) {
    max_diff = std::max(max_diff, std::fabs(double{full.body()[i]} - dropped.body()[i]));
  }
  EXPECT_GT(max_diff, 4 * tol);
}

TEST(GqaDeathTest, ShortBlockTableFails) {
  Rng rng(1);
  TestCache cache(2 * 4, 4, {8}, rng);
  const std::vector<int32_t> short_table = {cache.table(0)[0]};  // covers positions 0..3
  const std::vector<QueryToken> tokens = {{short_table, 5}};
  std::vector<float> q(4, 1.0f), out(4);
  EXPECT_DEATH(GqaAttention({1, 1, 4, 0.5f, 0}, cache.view(), tokens, q.data(), out.data()),
               "block table");
}

}  // namespace
}  // namespace shardlm
