// Rotary position embedding (DESIGN §2): r rotated channels, position p from 0,
// theta_k = rope_theta^(-2k/r) for k < r/2, then scaled as the config says (RopeScaling). Pairing
// "rotate_half" (k, k + r/2) by default, (2k, 2k+1) when interleaved.
#ifndef SHARDLM_ATTENTION_ROPE_H_
#define SHARDLM_ATTENTION_ROPE_H_

#include <cstdint>
#include <vector>

#include "shard/dims.h"

namespace shardlm {

// θ_k after `scaling` (shard/dims.h), k < rot_dim / 2, in double: the frequencies RoPE uses.
std::vector<double> RopeFrequencies(int64_t rot_dim, double theta, const RopeScaling& scaling);

class Rope {
 public:
  Rope(int64_t rot_dim, double theta, bool interleave, const RopeScaling& scaling = {});

  // Rotates the first rot_dim channels of `count` vectors that start `stride`
  // floats apart (e.g. all heads of one token), all at position `pos`.
  void Apply(float* x, int64_t count, int64_t stride, int64_t pos) const;

  int64_t rot_dim() const { return rot_dim_; }

 private:
  int64_t rot_dim_;
  bool interleave_;
  double cos_sin_scale_;          // yarn's attention factor, else 1
  std::vector<double> inv_freq_;  // [rot_dim / 2]
};

// Reference: the formula computed directly in double for one vector (with `scaling`, the
// frequencies of RopeFrequencies and cos/sin times its attention factor).
void RopeNaive(float* x, int64_t rot_dim, int64_t pos, double theta, bool interleave,
               const RopeScaling& scaling = {});

}  // namespace shardlm

#endif  // SHARDLM_ATTENTION_ROPE_H_
