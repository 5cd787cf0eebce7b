#include "base/rng.h"

#include <cmath>

namespace shardlm {

Rng::Rng(uint64_t seed, std::string_view name) : state_(seed ^ 0x9e3779b97f4a7c15ull) {
  // FNV-1a over the name, mixed into the seed.
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  state_ ^= h;
  NextU64();
}

uint64_t Rng::NextU64() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

float Rng::Uniform() { return static_cast<float>(NextU64() >> 40) * (1.0f / 16777216.0f); }

float Rng::Normal() {
  const double u1 = (static_cast<double>(NextU64() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
  const double u2 = static_cast<double>(NextU64() >> 11) * (1.0 / 9007199254740992.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

std::vector<float> Rng::UniformVector(size_t n, float lo, float hi) {
  std::vector<float> v(n);
  for (float& x : v) x = Uniform(lo, hi);
  return v;
}

}  // namespace shardlm
