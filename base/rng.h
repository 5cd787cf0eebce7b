// Seeded, platform-independent random numbers (SplitMix64) for checkpoints and tests.
#ifndef SHARDLM_BASE_RNG_H_
#define SHARDLM_BASE_RNG_H_

#include <cstdint>
#include <string_view>
#include <vector>

namespace shardlm {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // Seed derived from a base seed and a name, so each tensor has its own stream.
  Rng(uint64_t seed, std::string_view name);

  uint64_t NextU64();
  // Uniform in [0, 1) with 24 random bits.
  float Uniform();
  // Uniform in [lo, hi).
  float Uniform(float lo, float hi) { return lo + (hi - lo) * Uniform(); }
  // Standard normal (Box-Muller).
  float Normal();
  // n values uniform in [lo, hi).
  std::vector<float> UniformVector(size_t n, float lo, float hi);

 private:
  uint64_t state_;
};

}  // namespace shardlm

#endif  // SHARDLM_BASE_RNG_H_
