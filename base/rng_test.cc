#include "base/rng.h"

#include <cmath>
#include <set>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

TEST(RngTest, DeterministicAndVaries) {
  Rng a(7), b(7), c(8);
  std::set<uint64_t> seen;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.NextU64();
    EXPECT_EQ(x, b.NextU64());
    seen.insert(x);
  }
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_NE(Rng(7).NextU64(), c.NextU64());
  EXPECT_NE(Rng(7, "a").NextU64(), Rng(7, "b").NextU64());
}

TEST(RngTest, UniformAndNormalMoments) {
  Rng r(3);
  double sum = 0, sum_sq = 0, nsum = 0, nsq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const float u = r.Uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum_sq += u * u;
    const float z = r.Normal();
    nsum += z;
    nsq += z * z;
  }
  // Bounds: 5 standard errors of the sample mean / variance.
  EXPECT_NEAR(sum / n, 0.5, 5 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(sum_sq / n - (sum / n) * (sum / n), 1.0 / 12, 0.002);
  EXPECT_NEAR(nsum / n, 0.0, 5 / std::sqrt(n));
  EXPECT_NEAR(nsq / n, 1.0, 5 * std::sqrt(2.0 / n));
}

}  // namespace
}  // namespace shardlm
