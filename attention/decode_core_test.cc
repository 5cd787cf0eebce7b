// Invariants of DecodeAttention that the engine's decode tests rely on: a query's
// output bits depend only on its own context values and positions — not on page
// size, page placement, batch composition or compute thread count.
#include "attention/decode_core.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "attention/gqa.h"
#include "attention/gta.h"
#include "attention/latent.h"
#include "attention/test_util.h"
#include "base/rng.h"
#include "base/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu.h"

namespace shardlm {
namespace {

using attention_internal::kChunk;
using attention_test::GuardedBuffer;
using attention_test::TestCache;

// One family at small, odd shapes: its cache row width, q and out floats per
// token, and a call of its fast kernel.
struct Family {
  std::string name;
  int64_t row_floats;
  int64_t q_floats;
  int64_t out_floats;
  std::function<void(const CacheView&, std::span<const QueryToken>, const float*, float*)> run;
};

std::vector<Family> Families(int64_t window, Rng& rng) {
  std::vector<Family> families;
  {
    const GqaShape s{6, 2, 20, 0.3f, window};
    families.push_back({"gqa", 2 * 2 * 20, 6 * 20, 6 * 20,
                        [s](const CacheView& c, std::span<const QueryToken> t, const float* q,
                            float* o) { GqaAttention(s, c, t, q, o); }});
  }
  {
    // 5 heads per group: one quad of heads (DecodeKernels::quad_scores) and one past it.
    const GqaShape s{10, 2, 20, 0.3f, window};
    families.push_back({"gqa-5", 2 * 2 * 20, 10 * 20, 10 * 20,
                        [s](const CacheView& c, std::span<const QueryToken> t, const float* q,
                            float* o) { GqaAttention(s, c, t, q, o); }});
  }
  {
    const GtaShape s{6, 3, 24, 8, 0.3f, window};
    families.push_back({"gta", 3 * 24 + 8, 6 * 24, 6 * 24,
                        [s](const CacheView& c, std::span<const QueryToken> t, const float* q,
                            float* o) { GtaAttention(s, c, t, q, o); }});
  }
  // 4 query heads, and 32: 32 and 16 heads per latent take the scores with the heads in lanes.
  for (const int64_t h_q : {4, 32}) {
    for (const int64_t h_c : {1, 2}) {
      const LatentShape s{h_q, h_c, 24, 8, 8, 12, 0.3f, window};
      Linear kv_b;  // [h_q · (d_n + d_v), d_c]
      kv_b.out = h_q * 20;
      kv_b.in = 24;
      const std::vector<float> values = rng.UniformVector(h_q * 20 * 24, -0.2f, 0.2f);
      kv_b.w.assign(values.begin(), values.end());
      auto up = std::make_shared<LatentUpProjection>(SplitKvB(kv_b, 8, 12));
      families.push_back({absl::StrFormat("%s-%d", h_c == 1 ? "mla" : "gla", h_q), h_c * 24 + 8,
                          h_q * 16, h_q * 12,
                          [s, up](const CacheView& c, std::span<const QueryToken> t, const float* q,
                                  float* o) { LatentAttention(s, c, t, q, *up, o); }});
    }
  }
  return families;
}

// Sequences long enough for several chunks, ending inside, on and past chunk
// boundaries, plus a one-token sequence.
const std::vector<int64_t> kSeqLens = {3 * kChunk + 37, kChunk, 1, kChunk + 1, 2 * kChunk - 5};

// Outputs of one query per sequence (its last position) under a given page size,
// thread count and batch order. `values` holds every sequence's rows, so caches of
// different page sizes carry the same numbers.
std::vector<float> RunBatch(const Family& fam, const std::vector<std::vector<float>>& values,
                            const std::vector<float>& q, int64_t page_size, int threads,
                            const std::vector<size_t>& order, uint64_t seed) {
  Rng rng(seed);
  TestCache cache(fam.row_floats, page_size, kSeqLens, rng);
  for (size_t s = 0; s < kSeqLens.size(); ++s) {
    for (int64_t pos = 0; pos < kSeqLens[s]; ++pos) {
      std::copy_n(values[s].begin() + pos * fam.row_floats, fam.row_floats, cache.Row(s, pos));
    }
  }
  std::vector<QueryToken> tokens;
  std::vector<float> q_batch;
  for (const size_t s : order) {
    tokens.push_back({cache.table(s), kSeqLens[s] - 1});
    q_batch.insert(q_batch.end(), q.begin() + s * fam.q_floats, q.begin() + (s + 1) * fam.q_floats);
  }
  SetComputeThreads(threads);
  GuardedBuffer out(static_cast<int64_t>(order.size()) * fam.out_floats);
  fam.run(cache.view(), tokens, q_batch.data(), out.data());
  SetComputeThreads(1);
  EXPECT_TRUE(out.GuardsIntact());
  // Back in sequence order.
  std::vector<float> result(kSeqLens.size() * fam.out_floats);
  for (size_t i = 0; i < order.size(); ++i) {
    std::copy_n(out.body().begin() + i * fam.out_floats, fam.out_floats,
                result.begin() + order[i] * fam.out_floats);
  }
  return result;
}

void ExpectSameBits(const std::vector<float>& a, const std::vector<float>& b,
                    const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i]))
        << what << ": element " << i << ": " << a[i] << " vs " << b[i];
  }
}

// The reference run: page size 16, one thread, the whole batch in order. Every
// variant must reproduce it bit for bit, with either kernel build.
TEST(DecodeCoreTest, BitIdenticalAcrossPagesBatchesAndThreads) {
  const attention_test::RestoreDecodeIsa restore;
  for (const auto isa : {BestIsa(), Isa::kPortable}) {
    attention_internal::SetDecodeIsa(isa);
    for (const int64_t window : {int64_t{0}, kChunk + 100}) {
      Rng rng(31, absl::StrFormat("decode_core/%d", window));
      for (const Family& fam : Families(window, rng)) {
        SCOPED_TRACE(absl::StrFormat("%s isa=%s window=%d", fam.name,
                                     attention_internal::DecodeIsaName(), window));
        std::vector<std::vector<float>> values;
        for (const int64_t len : kSeqLens) {
          values.push_back(rng.UniformVector(len * fam.row_floats, -1.0f, 1.0f));
        }
        const std::vector<float> q = rng.UniformVector(kSeqLens.size() * fam.q_floats, -2.0f, 2.0f);
        std::vector<size_t> in_order(kSeqLens.size());
        for (size_t i = 0; i < in_order.size(); ++i) in_order[i] = i;
        const std::vector<float> ref = RunBatch(fam, values, q, 16, 1, in_order, 1);
        for (const float x : ref) ASSERT_TRUE(std::isfinite(x));

        for (const int64_t page : {1, 5, 64}) {
          ExpectSameBits(ref, RunBatch(fam, values, q, page, 1, in_order, 2),
                         absl::StrFormat("page size %d", page));
        }
        {  // how far ahead the next block's rows are prefetched (StreamPrefetch)
          const StreamPrefetch selected = SelectedStreamPrefetch();
          for (const StreamPrefetch prefetch : {StreamPrefetch::kNear, StreamPrefetch::kFar}) {
            SetStreamPrefetch(prefetch);
            ExpectSameBits(ref, RunBatch(fam, values, q, 16, 1, in_order, 6),
                           absl::StrFormat("prefetch %s", StreamPrefetchName(prefetch)));
          }
          SetStreamPrefetch(selected);
        }
        for (const int threads : {2, 3}) {
          ExpectSameBits(ref, RunBatch(fam, values, q, 16, threads, in_order, 3),
                         absl::StrFormat("%d threads", threads));
          ExpectSameBits(ref, RunBatch(fam, values, q, 1, threads, {4, 1, 0, 3, 2}, 4),
                         absl::StrFormat("%d threads, page 1, shuffled batch", threads));
        }
        for (size_t s = 0; s < kSeqLens.size(); ++s) {  // each query alone
          const std::vector<float> alone = RunBatch(fam, values, q, 16, 2, {s}, 5 + s);
          ExpectSameBits(std::vector<float>(ref.begin() + s * fam.out_floats,
                                            ref.begin() + (s + 1) * fam.out_floats),
                         std::vector<float>(alone.begin() + s * fam.out_floats,
                                            alone.begin() + (s + 1) * fam.out_floats),
                         absl::StrFormat("sequence %d alone", s));
        }
      }
    }
  }
}

// The exp of each kernel build, against double exp over the softmax's domain
// (x ≤ 0, down to where e^x leaves the fp32 normal range), within kExpUlps
// (the bound the derived tolerances use), and exactly 1 at 0.
TEST(DecodeCoreTest, ExpWithinBound) {
  std::vector<float> x;
  for (float v = 0.0f; v > -87.0f; v -= 0.0013f) x.push_back(v);
  Rng rng(3, "exp");
  for (int i = 0; i < 100000; ++i) x.push_back(rng.Uniform(-30.0f, 0.0f));
  for (const float v : {-0.0f, -1e-30f, -1e-7f, -0.34657359f, -0.34657360f, -0.6931472f}) {
    x.push_back(v);
  }
  attention_internal::DecodeKernels kernels[3] = {
      attention_internal::PortableKernels(),
      Cpu().avx512 ? attention_internal::Avx512Kernels() : attention_internal::PortableKernels(),
      Cpu().avx2_fma ? attention_internal::Avx2Kernels() : attention_internal::PortableKernels()};
  for (const auto& k : kernels) {
    std::vector<float> y(x.size());
    k.exp(x.data(), static_cast<int64_t>(x.size()), y.data());
    double worst = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double exact = std::exp(static_cast<double>(x[i]));
      const double ulps = std::fabs(y[i] - exact) / (exact * attention_test::kU);  // in u
      worst = std::max(worst, ulps);
      ASSERT_LE(ulps, attention_internal::kExpUlps) << k.name << " exp(" << x[i] << ")";
    }
    float one = 0.0f;
    const float zero = 0.0f;
    k.exp(&zero, 1, &one);
    EXPECT_EQ(one, 1.0f) << k.name;
    std::printf("%s exp: worst %.2f ulp over %zu inputs\n", k.name, worst, x.size());
  }
  // The AVX2 exp is the AVX-512 one, bit for bit (where a CPU runs both).
  if (Cpu().avx512 && Cpu().avx2_fma) {
    std::vector<float> y512(x.size()), y256(x.size());
    attention_internal::Avx512Kernels().exp(x.data(), static_cast<int64_t>(x.size()), y512.data());
    attention_internal::Avx2Kernels().exp(x.data(), static_cast<int64_t>(x.size()), y256.data());
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(y256[i]), std::bit_cast<uint32_t>(y512[i]))
          << "exp(" << x[i] << ")";
    }
  }
}

// The softmax step of g heads at once (the AVX-512 build reduces up to 16 heads in one tree)
// gives every head the bits it gets alone, for head counts around the tree widths and every
// block length; and it is the online-softmax step: the new max, alpha = e^(m − m') (0 on the
// first block), numerators of at most 1 with exactly 1 at the block's max when that is the
// new max, and sum' = alpha·sum + Σ numerators.
TEST(DecodeCoreTest, SoftmaxOfManyHeadsIsEachHeadAlone) {
  attention_internal::DecodeKernels kernels[3] = {
      attention_internal::PortableKernels(),
      Cpu().avx512 ? attention_internal::Avx512Kernels() : attention_internal::PortableKernels(),
      Cpu().avx2_fma ? attention_internal::Avx2Kernels() : attention_internal::PortableKernels()};
  Rng rng(5, "softmax");
  for (const auto& k : kernels) {
    for (const int64_t block : {attention_internal::kBlock, attention_internal::kLongBlock}) {
      for (const int64_t g : {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 20, 31, 32, 33, 40}) {
        for (int64_t nb = 1; nb <= block; ++nb) {
          std::vector<float> scores(static_cast<size_t>(g * block)), max(g), sum(g), alpha(g);
          for (float& x : scores) x = rng.Uniform(-20.0f, 20.0f);
          for (int64_t h = 0; h < g; ++h) {
            const bool first = rng.Uniform(0.0f, 1.0f) < 0.3f;
            max[h] = first ? -std::numeric_limits<float>::infinity() : rng.Uniform(-6.0f, 6.0f);
            sum[h] = first ? 0.0f : rng.Uniform(1.0f, 50.0f);
          }
          const std::vector<float> scores0 = scores, max0 = max, sum0 = sum;
          const float scale = 0.3f;
          k.softmax({.scores = scores.data(),
                     .block = block,
                     .nb = nb,
                     .g = g,
                     .scale = scale,
                     .max = max.data(),
                     .sum = sum.data(),
                     .alpha = alpha.data()});
          for (int64_t h = 0; h < g; ++h) {
            std::vector<float> one(scores0.begin() + h * block, scores0.begin() + (h + 1) * block);
            float m1 = max0[h], s1 = sum0[h], a1 = -1.0f;
            k.softmax({.scores = one.data(),
                       .block = block,
                       .nb = nb,
                       .g = 1,
                       .scale = scale,
                       .max = &m1,
                       .sum = &s1,
                       .alpha = &a1});
            const std::string where =
                absl::StrFormat("%s block %d g %d nb %d head %d", k.name, block, g, nb, h);
            ASSERT_EQ(std::bit_cast<uint32_t>(m1), std::bit_cast<uint32_t>(max[h])) << where;
            ASSERT_EQ(std::bit_cast<uint32_t>(s1), std::bit_cast<uint32_t>(sum[h])) << where;
            ASSERT_EQ(std::bit_cast<uint32_t>(a1), std::bit_cast<uint32_t>(alpha[h])) << where;
            float block_max = -std::numeric_limits<float>::infinity();
            for (int64_t r = 0; r < nb; ++r) {
              ASSERT_EQ(std::bit_cast<uint32_t>(one[r]),
                        std::bit_cast<uint32_t>(scores[h * block + r]))
                  << where << " row " << r;
              block_max = std::max(block_max, scores0[h * block + r] * scale);
            }
            // The online-softmax step itself.
            ASSERT_EQ(max[h], std::max(max0[h], block_max)) << where;
            // Each e^x is within kExpUlps of exact at its rounded argument, whose rounding (of
            // the scaled score and of the difference) moves it by up to 2|x|·u.
            const double u = attention_test::kU, exp_ulps = attention_internal::kExpUlps;
            double numerators = 0.0, largest = 0.0;
            for (int64_t r = 0; r < nb; ++r) {
              const double p = scores[h * block + r];
              const double x = static_cast<double>(scores0[h * block + r]) * scale - max[h];
              ASSERT_NEAR(p, std::exp(x), (exp_ulps + 2.0 * std::fabs(x) + 1.0) * u * std::exp(x))
                  << where << " row " << r;
              numerators += p;
              largest = std::max(largest, p);
            }
            ASSERT_LE(largest, 1.0) << where;
            if (block_max >= max0[h]) {
              ASSERT_EQ(largest, 1.0) << where;
            }
            if (max0[h] == -std::numeric_limits<float>::infinity()) {
              ASSERT_EQ(alpha[h], 0.0f) << where;
            } else {
              const double x = static_cast<double>(max0[h]) - max[h];
              const double want = std::exp(x);
              ASSERT_NEAR(alpha[h], want, (exp_ulps + std::fabs(x) + 1.0) * u * want) << where;
            }
            // alpha·sum and the block's numerators, summed in fp32 (nb + 1 roundings).
            const double want_sum = static_cast<double>(alpha[h]) * sum0[h] + numerators;
            ASSERT_NEAR(sum[h], want_sum, (nb + 2) * u * want_sum) << where;
          }
        }
      }
    }
  }
}

// `count` rows of `elems` random values stored in `format`, each in a buffer of its own (not
// a page's order), for the kernel tests below.
struct OwnRows {
  std::vector<std::vector<unsigned char>> store;
  std::vector<const unsigned char*> rows;
};
OwnRows RandomRows(const KvRowFormat& format, int64_t elems, int64_t count, Rng& rng) {
  OwnRows own;
  own.store.resize(static_cast<size_t>(count));
  for (int64_t r = 0; r < count; ++r) {
    own.store[r].resize(format.bytes);
    format.Store(rng.UniformVector(elems, -2.0f, 2.0f).data(), own.store[r].data());
    own.rows.push_back(own.store[r].data());
  }
  return own;
}

// Score arguments for the two score-kernel tests below: g heads over rows whose a part (a_len
// values) follows a leading segment of 3 and whose b part (b_len) follows the a part.
attention_internal::ScoreArgs PartArgs(const std::vector<const unsigned char*>& rows, int64_t nb,
                                       int64_t a_len, int64_t b_len, const std::vector<float>& qa,
                                       int64_t qa_head, const std::vector<float>& qb,
                                       int64_t qb_head, int64_t g, int64_t block) {
  attention_internal::ScoreArgs a;
  a.rows = rows.data();
  a.nb = nb;
  a.a_off = 3;
  a.a_len = a_len;
  a.b_off = 3 + a_len;
  a.b_len = b_len;
  a.qa = qa.data();
  a.qa_head = qa_head;
  a.qb = qb.data();
  a.qb_head = qb_head;
  a.g = g;
  a.block = block;
  return a;
}

// An int8 row's a part takes the scale of segment 1 and its b part that of segment 2 (after
// the leading one), as RandomRows' formats place them.
void SetSegments(attention_internal::ScoreArgs& a, const KvRowFormat& format, KvDType dtype) {
  a.scale_off = format.scale_offset;
  a.a_seg = dtype == KvDType::kInt8 ? 1 : 0;
  a.b_seg = dtype == KvDType::kInt8 && a.b_len > 0 ? 2 : 0;
}

// The scores with the heads in lanes (DecodeKernels::lane_scores) are each one chain of fp32
// FMAs in element order, the a part then the b part, from the row values as the cache format
// gives them: the naive chain below, bit for bit, for every format, head counts around the
// lane width, row counts around the tile heights, parts with tails, with and without rows to
// prefetch. Nothing past the g heads and nb rows is written.
TEST(DecodeCoreTest, LaneScoresAreOneFmaChainPerScore) {
  EXPECT_EQ(attention_internal::PortableKernels().lane_scores[0], nullptr);  // none there
  std::vector<attention_internal::DecodeKernels> sets;
  if (Cpu().avx512) sets.push_back(attention_internal::Avx512Kernels());
  if (Cpu().avx2_fma) sets.push_back(attention_internal::Avx2Kernels());
  if (sets.empty()) GTEST_SKIP() << "no AVX2 or AVX-512 on this CPU";
  const int64_t block = attention_internal::kLongBlock;
  Rng rng(9, "lane_scores");
  for (const attention_internal::DecodeKernels& k : sets) {
    for (const KvDType dtype : {KvDType::kF32, KvDType::kBF16, KvDType::kInt8}) {
      for (const int64_t g : {8, 9, 16, 17, 31, 32, 33, 48}) {
        for (const auto& [a_len, b_len] : {std::pair<int64_t, int64_t>{40, 8}, {16, 0}, {5, 16}}) {
          // A leading segment, so the parts start inside the row.
          const std::vector<int64_t> segments =
              b_len > 0 ? std::vector<int64_t>{3, a_len, b_len} : std::vector<int64_t>{3, a_len};
          const KvRowFormat format = KvRowFormat::Make(dtype, segments);
          const int64_t elems = 3 + a_len + b_len;
          for (const int64_t nb : {1, 3, 4, 9, 16, 17, 32}) {
            // Rows to score, and as many to prefetch.
            const OwnRows own = RandomRows(format, elems, 2 * nb, rng);
            const std::vector<const unsigned char*>& rows = own.rows;
            const int64_t qa_head = a_len + 2, qb_head = b_len + 1;
            const std::vector<float> qa = rng.UniformVector(g * qa_head, -1.0f, 1.0f);
            const std::vector<float> qb = rng.UniformVector(g * qb_head + 1, -1.0f, 1.0f);
            const int64_t stride = (g + 15) / 16 * 16;
            std::vector<float> qt(static_cast<size_t>((a_len + b_len) * stride), 0.0f);
            for (int64_t h = 0; h < g; ++h) {
              for (int64_t i = 0; i < a_len; ++i) qt[i * stride + h] = qa[h * qa_head + i];
              for (int64_t i = 0; i < b_len; ++i)
                qt[(a_len + i) * stride + h] = qb[h * qb_head + i];
            }
            const float kUnwritten = -12345.0f;
            std::vector<float> scores(static_cast<size_t>((g + 1) * block), kUnwritten);
            attention_internal::ScoreArgs a =
                PartArgs(rows, nb, a_len, b_len, qa, qa_head, qb, qb_head, g, block);
            SetSegments(a, format, dtype);
            a.scores = scores.data();
            a.qt = qt.data();
            a.qt_stride = stride;
            a.ahead = {rows.data() + nb, nb % 2 == 0 ? nb : nb / 2, nb % 3 == 0};
            k.lane_scores[static_cast<int>(dtype)](a);
            for (int64_t h = 0; h <= g; ++h) {
              for (int64_t r = 0; r < block; ++r) {
                const float got = scores[h * block + r];
                const std::string where =
                    absl::StrFormat("%s %s g %d a %d b %d nb %d: head %d row %d", k.name,
                                    KvDTypeName(dtype), g, a_len, b_len, nb, h, r);
                if (h == g || r >= nb) {
                  ASSERT_EQ(got, kUnwritten) << where;
                  continue;
                }
                float want = 0.0f;
                for (const auto& [off, len, q, seg] :
                     {std::tuple{a.a_off, a_len, qa.data() + h * qa_head, a.a_seg},
                      std::tuple{a.b_off, b_len, qb.data() + h * qb_head, a.b_seg}}) {
                  if (len == 0) continue;
                  std::vector<float> x(static_cast<size_t>(len));
                  const float scale = dtype == KvDType::kInt8
                                          ? KvRowFormat::Scale(rows[r], format.scale_offset, seg)
                                          : 1.0f;
                  KvRowFormat::Decode(dtype, rows[r], off, len, scale, x.data());
                  for (int64_t i = 0; i < len; ++i) want = std::fma(x[i], q[i], want);
                }
                ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << where;
              }
            }
          }
        }
      }
    }
  }
}

// The AVX2 build's scores and values, bit for bit, are the naive chains below. A score: 8 lane
// sums, lane l taking element k of the a part (then of the b part, from lane 0 again) for
// k ≡ l (mod 8) in increasing k, one FMA each, a part's last partial vector with zeros in the
// lanes past it; then ((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7)). A value sum: the
// rescale (one product), then one FMA per row in row order, an int8 row's weight p·s rounded
// first. For every format, head counts around the 4-head tile, parts that end inside a vector,
// row counts around the tile heights, value widths around the 24- and 16-column tiles, with
// rows to prefetch or not; nothing past the g heads, nb rows and v_len columns is written.
TEST(DecodeCoreTest, Avx2ScoresAndValuesAreTheirChains) {
  if (!Cpu().avx2_fma) GTEST_SKIP() << "no AVX2 + FMA on this CPU";
  const attention_internal::DecodeKernels k = attention_internal::Avx2Kernels();
  const int64_t block = attention_internal::kLongBlock;
  Rng rng(10, "avx2");
  for (const KvDType dtype : {KvDType::kF32, KvDType::kBF16, KvDType::kInt8}) {
    for (const int64_t g : {1, 2, 3, 4, 5, 8, 9, 16}) {
      for (const auto& [a_len, b_len] :
           {std::pair<int64_t, int64_t>{64, 0}, {40, 8}, {13, 0}, {5, 21}}) {
        const std::vector<int64_t> segments =
            b_len > 0 ? std::vector<int64_t>{3, a_len, b_len} : std::vector<int64_t>{3, a_len};
        const KvRowFormat format = KvRowFormat::Make(dtype, segments);
        const int64_t elems = 3 + a_len + b_len;
        for (const int64_t nb : {1, 2, 3, 5, 16, 32}) {
          // Rows to score, and as many to prefetch.
          const OwnRows own = RandomRows(format, elems, 2 * nb, rng);
          const std::vector<const unsigned char*>& rows = own.rows;
          const int64_t qa_head = a_len + 2, qb_head = b_len + 1;
          const std::vector<float> qa = rng.UniformVector(g * qa_head, -1.0f, 1.0f);
          const std::vector<float> qb = rng.UniformVector(g * qb_head + 1, -1.0f, 1.0f);
          const float kUnwritten = -12345.0f;
          std::vector<float> scores(static_cast<size_t>((g + 1) * block), kUnwritten);
          attention_internal::ScoreArgs a =
              PartArgs(rows, nb, a_len, b_len, qa, qa_head, qb, qb_head, g, block);
          SetSegments(a, format, dtype);
          a.scores = scores.data();
          if (nb % 2 == 0) a.ahead = {rows.data() + nb, nb / 2, nb % 4 == 0};
          k.scores[static_cast<int>(dtype)](a);
          // The row values as the format gives them, [row][elems].
          std::vector<float> x(static_cast<size_t>(nb * elems));
          for (int64_t r = 0; r < nb; ++r) {
            for (const auto& [off, len, seg] :
                 {std::tuple{int64_t{0}, int64_t{3}, int64_t{0}},
                  std::tuple{a.a_off, a_len, a.a_seg}, std::tuple{a.b_off, b_len, a.b_seg}}) {
              if (len == 0) continue;
              const float scale = dtype == KvDType::kInt8
                                      ? KvRowFormat::Scale(rows[r], format.scale_offset, seg)
                                      : 1.0f;
              KvRowFormat::Decode(dtype, rows[r], off, len, scale, x.data() + r * elems + off);
            }
          }
          for (int64_t h = 0; h <= g; ++h) {
            for (int64_t r = 0; r < block; ++r) {
              const float got = scores[h * block + r];
              const std::string where =
                  absl::StrFormat("%s g %d a %d b %d nb %d: head %d row %d", KvDTypeName(dtype), g,
                                  a_len, b_len, nb, h, r);
              if (h == g || r >= nb) {
                ASSERT_EQ(got, kUnwritten) << where;
                continue;
              }
              float lane[8] = {};
              for (const auto& [off, len, q] :
                   {std::tuple{a.a_off, a_len, qa.data() + h * qa_head},
                    std::tuple{a.b_off, b_len, qb.data() + h * qb_head}}) {
                for (int64_t i = 0; i < (len + 7) / 8 * 8; ++i) {
                  const float xi = i < len ? x[r * elems + off + i] : 0.0f;
                  const float qi = i < len ? q[i] : 0.0f;
                  lane[i % 8] = std::fma(xi, qi, lane[i % 8]);
                }
              }
              const float want = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                                 ((lane[4] + lane[5]) + (lane[6] + lane[7]));
              ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << where;
            }
          }
          // Values: the a part's first v_len elements (v_len ≤ a_len), weights in (0, 1], with
          // the values said to be in L1 (wider tiles) or not.
          for (const auto& [v_len, cached] : {std::pair{a_len, false},
                                              {a_len, true},
                                              {std::min<int64_t>(a_len, 8), true},
                                              {a_len - 1, false},
                                              {a_len - 1, true},
                                              {a_len - 8, true}}) {
            if (v_len <= 0) continue;
            const int64_t acc_head = v_len + 3;
            std::vector<float> p(static_cast<size_t>(g * block)), alpha(g);
            for (float& w : p) w = rng.Uniform(0.0f, 1.0f);
            for (float& al : alpha) al = rng.Uniform(0.0f, 1.0f);
            std::vector<float> acc = rng.UniformVector(g * acc_head + 1, -3.0f, 3.0f);
            const std::vector<float> acc0 = acc;
            attention_internal::ValueArgs va;
            va.rows = rows.data();
            va.nb = nb;
            va.v_off = a.a_off;
            va.v_len = v_len;
            va.scale_off = format.scale_offset;
            va.v_seg = a.a_seg;
            va.p = p.data();
            va.block = block;
            va.alpha = alpha.data();
            va.g = g;
            va.acc = acc.data();
            va.acc_head = acc_head;
            va.values_cached = cached;
            va.ahead = a.ahead;
            k.values[static_cast<int>(dtype)](va);
            for (int64_t h = 0; h < g; ++h) {
              for (int64_t c = 0; c < acc_head; ++c) {
                const float got = acc[h * acc_head + c];
                const std::string where =
                    absl::StrFormat("%s g %d v_len %d cached %d nb %d: head %d column %d",
                                    KvDTypeName(dtype), g, v_len, cached, nb, h, c);
                if (c >= v_len) {
                  ASSERT_EQ(got, acc0[h * acc_head + c]) << where;
                  continue;
                }
                // For int8 the decoded value is q·s; the kernel multiplies p by s instead.
                float want = acc0[h * acc_head + c] * alpha[h];
                for (int64_t r = 0; r < nb; ++r) {
                  float w = p[h * block + r], v = x[r * elems + a.a_off + c];
                  if (dtype == KvDType::kInt8) {
                    const float s = KvRowFormat::Scale(rows[r], format.scale_offset, a.a_seg);
                    w *= s;
                    v = static_cast<float>(static_cast<int8_t>(rows[r][a.a_off + c]));
                  }
                  want = std::fma(w, v, want);
                }
                ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << where;
              }
            }
            EXPECT_EQ(acc[g * acc_head], acc0[g * acc_head]);
          }
        }
      }
    }
  }
}

// The scores from the quads of heads (ScoreArgs::qq, DecodeKernels::quad_scores; f32 rows)
// are, for each head of a whole quad, the naive sums below bit for bit: lane j of two FMA
// chains (the even and the odd fours of elements, the a part then the b part), the chains
// added, then lanes (0 + 2) + (1 + 3). The heads past the last whole quad get the bits the
// same kernel gives them without quads. For head counts around the quad, parts with and
// without a b part, odd counts of fours, row counts around the tile height, with and without
// rows to prefetch; nothing past the g heads and nb rows is written.
TEST(DecodeCoreTest, QuadScoresAreTwoChainsAndAFourLaneTree) {
  if (!Cpu().avx512) {  // only the AVX-512 build has them
    EXPECT_FALSE(attention_internal::PortableKernels().quad_scores[0]);
    return;
  }
  const attention_internal::DecodeKernels k = attention_internal::Avx512Kernels();
  ASSERT_TRUE(k.quad_scores[0]);
  const int64_t block = attention_internal::kLongBlock;
  Rng rng(11, "quad_scores");
  for (const int64_t g : {4, 5, 7, 8, 9}) {
    for (const auto& [a_len, b_len] :
         {std::pair<int64_t, int64_t>{64, 0}, {20, 8}, {4, 4}, {12, 0}}) {
      const int64_t elems = 3 + a_len + b_len;  // a leading segment: parts start inside the row
      for (const int64_t nb : {1, 3, 4, 5, 8, 9}) {
        std::vector<std::vector<float>> store(2 * nb);
        std::vector<const unsigned char*> rows(2 * nb);
        for (int64_t r = 0; r < 2 * nb; ++r) {
          store[r] = rng.UniformVector(elems, -2.0f, 2.0f);
          rows[r] = reinterpret_cast<const unsigned char*>(store[r].data());
        }
        const int64_t qa_head = a_len + 2, qb_head = b_len + 1;
        const std::vector<float> qa = rng.UniformVector(g * qa_head, -1.0f, 1.0f);
        const std::vector<float> qb = rng.UniformVector(g * qb_head + 1, -1.0f, 1.0f);
        const int64_t q_len = a_len + b_len;
        std::vector<float> qq(static_cast<size_t>(g / 4 * 4 * q_len), 0.0f);
        for (int64_t h = 0; h < g / 4 * 4; ++h) {
          float* dst = qq.data() + h / 4 * 4 * q_len + h % 4 * 4;
          for (int64_t e = 0; e < a_len; ++e) dst[16 * (e / 4) + e % 4] = qa[h * qa_head + e];
          for (int64_t e = 0; e < b_len; ++e) {
            dst[16 * ((a_len + e) / 4) + e % 4] = qb[h * qb_head + e];
          }
        }
        for (const bool prefetch : {false, true}) {
          const float kUnwritten = -12345.0f;
          std::vector<float> scores(static_cast<size_t>((g + 1) * block), kUnwritten);
          std::vector<float> plain = scores;
          attention_internal::ScoreArgs a =
              PartArgs(rows, nb, a_len, b_len, qa, qa_head, qb, qb_head, g, block);
          if (prefetch) a.ahead = {rows.data() + nb, nb, nb % 2 == 0};
          a.scores = plain.data();
          k.scores[0](a);  // without quads
          a.scores = scores.data();
          a.qq = qq.data();
          k.scores[0](a);
          for (int64_t h = 0; h <= g; ++h) {
            for (int64_t r = 0; r < block; ++r) {
              const float got = scores[h * block + r];
              const std::string where =
                  absl::StrFormat("g %d a %d b %d nb %d prefetch %d: head %d row %d", g, a_len,
                                  b_len, nb, prefetch, h, r);
              if (h == g || r >= nb) {
                ASSERT_EQ(got, kUnwritten) << where;
                continue;
              }
              if (h >= g / 4 * 4) {
                ASSERT_EQ(std::bit_cast<uint32_t>(got),
                          std::bit_cast<uint32_t>(plain[h * block + r]))
                    << where;
                continue;
              }
              float chain[2][4] = {};  // [even, odd][lane]
              for (const auto& [off, len, q] :
                   {std::tuple{a.a_off, a_len, qa.data() + h * qa_head},
                    std::tuple{a.b_off, b_len, qb.data() + h * qb_head}}) {
                for (int64_t e = 0; e < len; ++e) {
                  float& c = chain[(e / 4) % 2][e % 4];
                  c = std::fma(store[r][off + e], q[e], c);
                }
              }
              float t[4];
              for (int j = 0; j < 4; ++j) t[j] = chain[0][j] + chain[1][j];
              const float want = (t[0] + t[2]) + (t[1] + t[3]);
              ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << where;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace shardlm
