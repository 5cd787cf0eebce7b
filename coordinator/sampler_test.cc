#include "coordinator/sampler.h"

#include <cmath>
#include <map>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

// Reference distribution of one draw: temperature, then top-k, then top-p.
std::vector<double> ReferenceProbs(const std::vector<float>& logits, const SamplingParams& p) {
  const size_t v = logits.size();
  std::vector<size_t> order(v);
  for (size_t i = 0; i < v; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  const size_t k = p.top_k > 0 ? std::min<size_t>(p.top_k, v) : v;
  std::vector<double> w(v, 0.0);
  double total = 0.0;
  for (size_t r = 0; r < k; ++r) total += w[order[r]] = std::exp(logits[order[r]] / p.temperature);
  double mass = 0.0;
  size_t keep = k;
  for (size_t r = 0; r < k; ++r) {
    mass += w[order[r]] / total;
    if (mass >= p.top_p) {
      keep = r + 1;
      break;
    }
  }
  std::vector<double> probs(v, 0.0);
  double kept = 0.0;
  for (size_t r = 0; r < keep; ++r) kept += w[order[r]];
  for (size_t r = 0; r < keep; ++r) probs[order[r]] = w[order[r]] / kept;
  return probs;
}

const std::vector<float> kLogits = {0.5f, 2.0f, -1.0f, 1.5f, 2.0f, 0.0f, -3.0f, 1.0f};

TEST(SamplerTest, GreedyIsArgmaxWithTiesToLowestId) {
  Sampler greedy(SamplingParams{});
  const Sample s = greedy.Next(kLogits.data(), kLogits.size());
  EXPECT_EQ(s.token, 1);  // 2.0 at ids 1 and 4
  EXPECT_DOUBLE_EQ(s.logprob, LogSoftmaxAt(kLogits.data(), kLogits.size(), 1));
  SamplingParams top1{1.0, 1, 1.0, 9};
  EXPECT_EQ(Sampler(top1).Next(kLogits.data(), kLogits.size()).token, 1);
}

TEST(SamplerTest, LogSoftmaxMatchesDefinition) {
  double total = 0.0;
  for (float l : kLogits) total += std::exp(static_cast<double>(l));
  for (size_t i = 0; i < kLogits.size(); ++i) {
    EXPECT_NEAR(LogSoftmaxAt(kLogits.data(), kLogits.size(), i), kLogits[i] - std::log(total),
                1e-12);
  }
}

TEST(SamplerTest, FrequenciesMatchTheReferenceDistribution) {
  const SamplingParams cases[] = {
      {1.0, 0, 1.0, 1}, {0.7, 0, 1.0, 2}, {1.3, 3, 1.0, 3}, {1.0, 0, 0.8, 4}, {2.0, 5, 0.9, 5}};
  const int draws = 40000;
  for (const SamplingParams& p : cases) {
    const std::vector<double> want = ReferenceProbs(kLogits, p);
    Sampler sampler(p);
    std::vector<int> counts(kLogits.size(), 0);
    for (int i = 0; i < draws; ++i) {
      const Sample s = sampler.Next(kLogits.data(), kLogits.size());
      ++counts[s.token];
      ASSERT_DOUBLE_EQ(s.logprob, LogSoftmaxAt(kLogits.data(), kLogits.size(), s.token));
    }
    for (size_t v = 0; v < kLogits.size(); ++v) {
      const double freq = static_cast<double>(counts[v]) / draws;
      if (want[v] == 0.0) {
        EXPECT_EQ(counts[v], 0) << "token " << v << " is outside top-k/top-p";
      } else {
        // 5 standard errors of a binomial proportion.
        EXPECT_NEAR(freq, want[v], 5 * std::sqrt(want[v] * (1 - want[v]) / draws))
            << "token " << v << " T=" << p.temperature << " k=" << p.top_k << " p=" << p.top_p;
      }
    }
  }
}

TEST(SamplerTest, SeedsAreReproducibleAndDistinct) {
  auto draw = [](uint64_t seed) {
    Sampler s(SamplingParams{1.0, 0, 1.0, seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.Next(kLogits.data(), kLogits.size()).token);
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

}  // namespace
}  // namespace shardlm
