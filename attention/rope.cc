#include "attention/rope.h"

#include <cmath>
#include <vector>

#include "base/status.h"

namespace shardlm {

Rope::Rope(int64_t rot_dim, double theta, bool interleave)
    : rot_dim_(rot_dim), interleave_(interleave), inv_freq_(static_cast<size_t>(rot_dim / 2)) {
  CHECK_MSG(rot_dim >= 0 && rot_dim % 2 == 0, "rot_dim ", rot_dim, " must be even and >= 0");
  CHECK_MSG(theta > 0.0, "rope_theta ", theta, " must be > 0");
  for (int64_t k = 0; k < rot_dim / 2; ++k) {
    inv_freq_[k] = std::pow(theta, -2.0 * static_cast<double>(k) / static_cast<double>(rot_dim));
  }
}

// The angle pos · θ_k is formed in double: at pos 1e5 a float angle would be off
// by up to ~4e-3 rad. cos/sin are then rounded to float once per call and shared
// by all `count` vectors; the rotation itself is fp32 (error ≤ 3u of the pair norm).
void Rope::Apply(float* x, int64_t count, int64_t stride, int64_t pos) const {
  const int64_t half = rot_dim_ / 2;
  if (half == 0 || count == 0) return;
  thread_local std::vector<float> cos_sin;  // [cos: half | sin: half], grows only
  if (static_cast<int64_t>(cos_sin.size()) < 2 * half)
    cos_sin.resize(static_cast<size_t>(2 * half));
  float* c = cos_sin.data();
  float* s = c + half;
  for (int64_t k = 0; k < half; ++k) {
    const double angle = static_cast<double>(pos) * inv_freq_[k];
    c[k] = static_cast<float>(std::cos(angle));
    s[k] = static_cast<float>(std::sin(angle));
  }
  for (int64_t v = 0; v < count; ++v) {
    float* y = x + v * stride;
    if (interleave_) {  // pair k: (y[2k], y[2k + 1])
      for (int64_t k = 0; k < half; ++k) {
        const float x1 = y[2 * k];
        const float x2 = y[2 * k + 1];
        y[2 * k] = x1 * c[k] - x2 * s[k];
        y[2 * k + 1] = x2 * c[k] + x1 * s[k];
      }
    } else {  // rotate_half, pair k: (y[k], y[k + half])
      for (int64_t k = 0; k < half; ++k) {
        const float x1 = y[k];
        const float x2 = y[k + half];
        y[k] = x1 * c[k] - x2 * s[k];
        y[k + half] = x2 * c[k] + x1 * s[k];
      }
    }
  }
}

void RopeNaive(float* x, int64_t rot_dim, int64_t pos, double theta, bool interleave) {
  CHECK(rot_dim >= 0 && rot_dim % 2 == 0);
  const int64_t half = rot_dim / 2;
  for (int64_t k = 0; k < half; ++k) {
    // θ_k = theta^(−2k/r), written as HF does: 1 / theta^(2k/r).
    const double freq = 1.0 / std::pow(theta, 2.0 * static_cast<double>(k) / rot_dim);
    const double angle = static_cast<double>(pos) * freq;
    const int64_t i1 = interleave ? 2 * k : k;
    const int64_t i2 = interleave ? 2 * k + 1 : k + half;
    const double x1 = x[i1];
    const double x2 = x[i2];
    x[i1] = static_cast<float>(x1 * std::cos(angle) - x2 * std::sin(angle));
    x[i2] = static_cast<float>(x2 * std::cos(angle) + x1 * std::sin(angle));
  }
}

}  // namespace shardlm
