#include "attention/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_format.h"
#include "attention/test_util.h"
#include "base/rng.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

using attention_test::ExpectVaries;
using attention_test::GammaTilde;
using attention_test::kU;

// Channel indices of pair k among r rotated channels.
std::pair<int64_t, int64_t> Pair(int64_t k, int64_t r, bool interleave) {
  return interleave ? std::pair{2 * k, 2 * k + 1} : std::pair{k, k + r / 2};
}

double PairNorm(const float* x, int64_t k, int64_t r, bool interleave) {
  const auto [i1, i2] = Pair(k, r, interleave);
  return std::hypot(double{x[i1]}, double{x[i2]});
}

// Fast vs naive, both pairings, positions up to 1e5, several vectors per call at a
// stride with a gap. Bound per element, relative to its pair's norm ‖x‖:
//   fast: cos/sin rounded to float (u each) and x1·c − x2·s in fp32 (≤ 2 roundings
//   on each term), ≤ 3u·(|x1||c| + |x2||s|) ≤ 3u·‖x‖ (Cauchy–Schwarz);
//   naive: the double result rounded once, ≤ u·‖x‖;
//   angles: both in double, the two ways of writing θ_k differ by ≤ ~4 ulp of
//   double, so the angle by ≤ pos·2^-51 rad, moving the result ≤ pos·2^-51·‖x‖.
TEST(RopeTest, FastMatchesNaive) {
  for (const bool interleave : {false, true}) {
    for (const int64_t r : {2, 8, 32, 64, 128}) {
      for (const double theta : {10000.0, 1e6}) {
        const Rope rope(r, theta, interleave);
        EXPECT_EQ(rope.rot_dim(), r);
        for (const int64_t pos : {0, 1, 2, 17, 1000, 65535, 99991, 100000}) {
          SCOPED_TRACE(
              absl::StrFormat("interleave=%d r=%d theta=%g pos=%d", interleave, r, theta, pos));
          Rng rng(static_cast<uint64_t>(pos * 131 + r), "rope");
          const int64_t count = 3, stride = r + 5;  // 5 channels per vector not rotated
          const std::vector<float> x = rng.UniformVector(count * stride, -2, 2);
          ExpectVaries(x, -2, 2, "x");
          std::vector<float> fast = x;
          rope.Apply(fast.data(), count, stride, pos);
          for (int64_t v = 0; v < count; ++v) {
            std::vector<float> naive(x.begin() + v * stride, x.begin() + v * stride + r);
            RopeNaive(naive.data(), r, pos, theta, interleave);
            const float* in = x.data() + v * stride;
            const float* out = fast.data() + v * stride;
            for (int64_t k = 0; k < r / 2; ++k) {
              const double tol =
                  (4 * kU + static_cast<double>(pos) * 0x1p-51) * PairNorm(in, k, r, interleave);
              const auto [i1, i2] = Pair(k, r, interleave);
              EXPECT_NEAR(out[i1], naive[i1], tol) << "vector " << v << " pair " << k;
              EXPECT_NEAR(out[i2], naive[i2], tol) << "vector " << v << " pair " << k;
            }
            for (int64_t i = r; i < stride; ++i) EXPECT_EQ(out[i], in[i]) << "channel " << i;
          }
        }
      }
    }
  }
}

// Scaled RoPE: the frequencies per band, each computed here from its definition.
TEST(RopeTest, ScaledFrequencies) {
  const int64_t r = 64;
  const double theta = 500000.0;
  const std::vector<double> plain = RopeFrequencies(r, theta, {});
  ASSERT_EQ(plain.size(), 32u);
  for (int64_t k = 0; k < 32; ++k) EXPECT_DOUBLE_EQ(plain[k], std::pow(theta, -2.0 * k / r));

  RopeScaling linear{.type = RopeScaling::Type::kLinear, .factor = 4.0};
  const std::vector<double> lin = RopeFrequencies(r, theta, linear);
  for (int64_t k = 0; k < 32; ++k) EXPECT_DOUBLE_EQ(lin[k], plain[k] / 4.0);

  // llama3 (Llama 3.1/3.2): wavelengths below 8192/4 keep their frequency, above 8192/1 are
  // divided by the factor, in between a blend weighted by 8192/wavelength.
  RopeScaling llama3{.type = RopeScaling::Type::kLlama3,
                     .factor = 32.0,
                     .low_freq_factor = 1.0,
                     .high_freq_factor = 4.0,
                     .original_max_positions = 8192};
  const std::vector<double> l3 = RopeFrequencies(r, theta, llama3);
  int high = 0, low = 0, medium = 0;
  for (int64_t k = 0; k < 32; ++k) {
    const double wavelen = 2 * M_PI / plain[k];
    if (wavelen < 8192.0 / 4) {
      EXPECT_DOUBLE_EQ(l3[k], plain[k]) << k;
      ++high;
    } else if (wavelen > 8192.0) {
      EXPECT_DOUBLE_EQ(l3[k], plain[k] / 32.0) << k;
      ++low;
    } else {
      const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      EXPECT_NEAR(l3[k], (1 - smooth) * plain[k] / 32.0 + smooth * plain[k], 1e-15 * plain[k]);
      ++medium;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);

  // yarn (DeepSeek V2: factor 40 over 4096 positions, d_r 64, theta 10000): dims below the
  // beta_fast correction dim keep their frequency, above beta_slow's are divided by factor.
  RopeScaling yarn{.type = RopeScaling::Type::kYarn,
                   .factor = 40.0,
                   .original_max_positions = 4096,
                   .beta_fast = 32,
                   .beta_slow = 1};
  const std::vector<double> base = RopeFrequencies(r, 10000.0, {});
  const std::vector<double> y = RopeFrequencies(r, 10000.0, yarn);
  auto dim_of = [&](double rotations) {
    return r * std::log(4096 / (rotations * 2 * M_PI)) / (2 * std::log(10000.0));
  };
  const double lo = std::floor(dim_of(32)), hi = std::ceil(dim_of(1));
  ASSERT_LT(lo, hi);
  for (int64_t k = 0; k < 32; ++k) {
    const double ramp = std::clamp((k - lo) / (hi - lo), 0.0, 1.0);
    EXPECT_NEAR(y[k], base[k] / 40.0 * ramp + base[k] * (1 - ramp), 1e-15 * base[k]) << k;
  }
  EXPECT_DOUBLE_EQ(y[0], base[0]);
  EXPECT_DOUBLE_EQ(y[31], base[31] / 40.0);
}

// The fast path with scaling (and yarn's cos/sin factor) against the naive formula.
TEST(RopeTest, ScaledFastMatchesNaive) {
  const RopeScaling scalings[] = {{.type = RopeScaling::Type::kLinear, .factor = 2.0},
                                  {.type = RopeScaling::Type::kLlama3,
                                   .factor = 8.0,
                                   .low_freq_factor = 1.0,
                                   .high_freq_factor = 4.0,
                                   .original_max_positions = 64},
                                  {.type = RopeScaling::Type::kYarn,
                                   .factor = 4.0,
                                   .original_max_positions = 32,
                                   .attention_factor = 1.1386}};
  for (const RopeScaling& scaling : scalings) {
    for (const bool interleave : {false, true}) {
      const int64_t r = 16;
      const Rope rope(r, 10000.0, interleave, scaling);
      for (const int64_t pos : {0, 3, 50, 1000}) {
        SCOPED_TRACE(absl::StrFormat("%s interleave=%d pos=%d", RopeScalingName(scaling.type),
                                     interleave, pos));
        Rng rng(static_cast<uint64_t>(pos + 7), "rope-scaled");
        std::vector<float> fast = rng.UniformVector(r, -2, 2);
        std::vector<float> naive = fast;
        const std::vector<float> in = fast;
        rope.Apply(fast.data(), 1, r, pos);
        RopeNaive(naive.data(), r, pos, 10000.0, interleave, scaling);
        const double m = scaling.type == RopeScaling::Type::kYarn ? scaling.attention_factor : 1.0;
        for (int64_t k = 0; k < r / 2; ++k) {
          const double tol = (5 * kU + pos * 0x1p-51) * m * PairNorm(in.data(), k, r, interleave);
          const auto [i1, i2] = Pair(k, r, interleave);
          EXPECT_NEAR(fast[i1], naive[i1], tol);
          EXPECT_NEAR(fast[i2], naive[i2], tol);
        }
        // The rotation (times m) keeps each pair's norm.
        for (int64_t k = 0; k < r / 2; ++k) {
          EXPECT_NEAR(PairNorm(naive.data(), k, r, interleave),
                      m * PairNorm(in.data(), k, r, interleave), 1e-5);
        }
      }
    }
  }
}

// A rotation keeps each pair's norm. With c̃² + s̃² = 1 ± 2u the rotation scales by
// ≤ 1 ± u, and the fp32 rounding of each component (≤ 2u·‖x‖) adds ≤ 2√2·u·‖x‖ to
// the pair: |‖y‖ − ‖x‖| ≤ (1 + 2√2)·u·‖x‖ < 4u·‖x‖.
TEST(RopeTest, PreservesPairNorms) {
  for (const bool interleave : {false, true}) {
    for (const int64_t r : {2, 8, 32}) {
      const Rope rope(r, 10000.0, interleave);
      Rng rng(r, "norm");
      for (const int64_t pos : {3, 4097, 100000}) {
        const std::vector<float> x = rng.UniformVector(r, -3, 3);
        std::vector<float> y = x;
        rope.Apply(y.data(), 1, r, pos);
        for (int64_t k = 0; k < r / 2; ++k) {
          const double before = PairNorm(x.data(), k, r, interleave);
          EXPECT_NEAR(PairNorm(y.data(), k, r, interleave), before, 4 * kU * before)
              << "r=" << r << " pos=" << pos << " pair " << k;
        }
      }
    }
  }
}

// Sign and frequency conventions on hand-computed values: pair k turns by
// pos·theta^(−2k/r), (x1, x2) → (x1 cos − x2 sin, x2 cos + x1 sin).
TEST(RopeTest, KnownRotations) {
  // r = 2, pos = 1: angle 1 rad.
  std::vector<float> e1 = {1, 0}, e2 = {0, 1};
  Rope(2, 10000.0, false).Apply(e1.data(), 1, 2, 1);
  Rope(2, 10000.0, true).Apply(e2.data(), 1, 2, 1);
  EXPECT_NEAR(e1[0], std::cos(1.0), 2 * kU);
  EXPECT_NEAR(e1[1], std::sin(1.0), 2 * kU);
  EXPECT_NEAR(e2[0], -std::sin(1.0), 2 * kU);
  EXPECT_NEAR(e2[1], std::cos(1.0), 2 * kU);
  // r = 4, theta = 100, pos = 3: pair 0 turns by 3 rad, pair 1 by 3·100^(−1/2) = 0.3.
  std::vector<float> half = {1, 1, 0, 0};   // pairs (0, 2) and (1, 3)
  std::vector<float> inter = {1, 0, 1, 0};  // pairs (0, 1) and (2, 3)
  Rope(4, 100.0, false).Apply(half.data(), 1, 4, 3);
  Rope(4, 100.0, true).Apply(inter.data(), 1, 4, 3);
  const std::vector<double> want_half = {std::cos(3.0), std::cos(0.3), std::sin(3.0),
                                         std::sin(0.3)};
  const std::vector<double> want_inter = {std::cos(3.0), std::sin(3.0), std::cos(0.3),
                                          std::sin(0.3)};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(half[i], want_half[i], 2 * kU) << i;
    EXPECT_NEAR(inter[i], want_inter[i], 2 * kU) << i;
  }
  // Position 0 is the identity, exactly.
  Rng rng(1);
  const std::vector<float> x = rng.UniformVector(16, -1, 1);
  std::vector<float> y = x;
  Rope(16, 10000.0, false).Apply(y.data(), 1, 16, 0);
  EXPECT_EQ(x, y);
}

// Interleaved pairing is rotate_half conjugated by the channel permutation
// (2k, 2k+1) ↔ (k, k + r/2); both use the same arithmetic per pair, so exactly equal.
TEST(RopeTest, InterleavedIsPermutedRotateHalf) {
  const int64_t r = 32;
  Rng rng(2, "perm");
  const std::vector<float> x = rng.UniformVector(r, -1, 1);
  std::vector<float> inter = x, half(r);
  for (int64_t k = 0; k < r / 2; ++k) {
    half[k] = x[2 * k];
    half[k + r / 2] = x[2 * k + 1];
  }
  Rope(r, 500000.0, true).Apply(inter.data(), 1, r, 777);
  Rope(r, 500000.0, false).Apply(half.data(), 1, r, 777);
  for (int64_t k = 0; k < r / 2; ++k) {
    EXPECT_EQ(inter[2 * k], half[k]);
    EXPECT_EQ(inter[2 * k + 1], half[k + r / 2]);
  }
}

// The reason RoPE exists: RoPE(q, p)·RoPE(k, p') depends only on p − p'. Each
// rotated pair is off by ≤ 3√2·u of its norm (see FastMatchesNaive), so each dot
// is off by ≤ (6√2·u + γ̃(r))·Σ_pairs ‖q_k‖‖k_k‖, and the two dots by twice that.
TEST(RopeTest, ScoresDependOnRelativePosition) {
  for (const bool interleave : {false, true}) {
    const int64_t r = 64;
    const Rope rope(r, 10000.0, interleave);
    Rng rng(interleave ? 3 : 4, "relative");
    const std::vector<float> q = rng.UniformVector(r, -1, 1);
    const std::vector<float> k = rng.UniformVector(r, -1, 1);
    double pair_sum = 0.0;
    for (int64_t p = 0; p < r / 2; ++p) {
      pair_sum += PairNorm(q.data(), p, r, interleave) * PairNorm(k.data(), p, r, interleave);
    }
    const double tol = 2 * (6 * std::sqrt(2.0) * kU + GammaTilde(r)) * pair_sum;
    auto score = [&](int64_t pq, int64_t pk) {
      std::vector<float> a = q, b = k;
      rope.Apply(a.data(), 1, r, pq);
      rope.Apply(b.data(), 1, r, pk);
      double dot = 0.0;
      for (int64_t i = 0; i < r; ++i) dot += double{a[i]} * b[i];
      return dot;
    };
    const double base = score(5, 2);
    for (const int64_t shift : {1, 1000, 50000}) {
      EXPECT_NEAR(score(5 + shift, 2 + shift), base, tol) << "shift " << shift;
    }
    // And it does depend on the offset (the test is not vacuous).
    EXPECT_GT(std::fabs(score(9, 2) - base), 100 * tol);
  }
}

}  // namespace
}  // namespace shardlm
