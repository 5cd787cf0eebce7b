#include "attention/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/status.h"

namespace shardlm {

std::vector<double> RopeFrequencies(int64_t rot_dim, double theta, const RopeScaling& scaling) {
  CHECK_MSG(rot_dim >= 0 && rot_dim % 2 == 0, "rot_dim ", rot_dim, " must be even and >= 0");
  CHECK_MSG(theta > 0.0, "rope_theta ", theta, " must be > 0");
  const int64_t half = rot_dim / 2;
  std::vector<double> freq(static_cast<size_t>(half));
  for (int64_t k = 0; k < half; ++k) {
    freq[k] = std::pow(theta, -2.0 * static_cast<double>(k) / static_cast<double>(rot_dim));
  }
  const double factor = scaling.factor;
  switch (scaling.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (double& f : freq) f /= factor;
      break;
    case RopeScaling::Type::kLlama3: {
      const double old_len = static_cast<double>(scaling.original_max_positions);
      const double low_wavelen = old_len / scaling.low_freq_factor;
      const double high_wavelen = old_len / scaling.high_freq_factor;
      for (double& f : freq) {
        const double wavelen = 2.0 * M_PI / f;
        if (wavelen > low_wavelen) {
          f /= factor;  // low frequencies: interpolated
        } else if (wavelen >= high_wavelen) {
          const double smooth = (old_len / wavelen - scaling.low_freq_factor) /
                                (scaling.high_freq_factor - scaling.low_freq_factor);
          f = (1.0 - smooth) * f / factor + smooth * f;
        }  // high frequencies: unchanged
      }
      break;
    }
    case RopeScaling::Type::kYarn: {
      // The dim (of rot_dim) at which a frequency makes `rotations` turns over the original
      // context, and the ramp between those of beta_fast and beta_slow.
      const double dim = static_cast<double>(rot_dim);
      const double old_len = static_cast<double>(scaling.original_max_positions);
      auto correction_dim = [&](double rotations) {
        return dim * std::log(old_len / (rotations * 2.0 * M_PI)) / (2.0 * std::log(theta));
      };
      double low = correction_dim(scaling.beta_fast), high = correction_dim(scaling.beta_slow);
      if (scaling.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, dim - 1.0);
      if (low == high) high += 0.001;
      for (int64_t k = 0; k < half; ++k) {
        // ramp 0 below `low` (keep the original frequency) … 1 above `high` (interpolate).
        const double ramp = std::clamp((static_cast<double>(k) - low) / (high - low), 0.0, 1.0);
        freq[k] = freq[k] / factor * ramp + freq[k] * (1.0 - ramp);
      }
      break;
    }
  }
  return freq;
}

Rope::Rope(int64_t rot_dim, double theta, bool interleave, const RopeScaling& scaling)
    : rot_dim_(rot_dim),
      interleave_(interleave),
      cos_sin_scale_(scaling.type == RopeScaling::Type::kYarn ? scaling.attention_factor : 1.0),
      inv_freq_(RopeFrequencies(rot_dim, theta, scaling)) {}

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
    c[k] = static_cast<float>(std::cos(angle) * cos_sin_scale_);
    s[k] = static_cast<float>(std::sin(angle) * cos_sin_scale_);
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

void RopeNaive(float* x, int64_t rot_dim, int64_t pos, double theta, bool interleave,
               const RopeScaling& scaling) {
  CHECK(rot_dim >= 0 && rot_dim % 2 == 0);
  const int64_t half = rot_dim / 2;
  const std::vector<double> scaled = RopeFrequencies(rot_dim, theta, scaling);
  const double m = scaling.type == RopeScaling::Type::kYarn ? scaling.attention_factor : 1.0;
  for (int64_t k = 0; k < half; ++k) {
    // θ_k = theta^(−2k/r), written as HF does: 1 / theta^(2k/r); scaled when configured.
    const double freq = scaling.type == RopeScaling::Type::kNone
                            ? 1.0 / std::pow(theta, 2.0 * static_cast<double>(k) / rot_dim)
                            : scaled[k];
    const double angle = static_cast<double>(pos) * freq;
    const int64_t i1 = interleave ? 2 * k : k;
    const int64_t i2 = interleave ? 2 * k + 1 : k + half;
    const double x1 = x[i1];
    const double x2 = x[i2];
    x[i1] = static_cast<float>(x1 * std::cos(angle) * m - x2 * std::sin(angle) * m);
    x[i2] = static_cast<float>(x2 * std::cos(angle) * m + x1 * std::sin(angle) * m);
  }
}

}  // namespace shardlm
