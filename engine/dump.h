// Named intermediates for debugging disagreements between rank counts (in the
// spirit of llama.cpp's cb(cur, "attn_norm", il)). Off unless SHARDLM_DUMP=DIR is
// set; then every rank writes each named tensor of each forward pass to
// DIR/rank{r}/fwd{f}/layer{l}.{name}.f32 as raw little-endian f32 [rows, cols],
// with the shape in the name's .shape sibling. Costs one branch when off.
#ifndef SHARDLM_ENGINE_DUMP_H_
#define SHARDLM_ENGINE_DUMP_H_

#include <cstdint>
#include <string>

namespace shardlm {

class TensorDump {
 public:
  // Reads SHARDLM_DUMP once.
  static TensorDump& Get();
  bool enabled() const { return !dir_.empty(); }
  void Write(int rank, int64_t forward, int64_t layer, const char* name, const float* data,
             int64_t rows, int64_t cols) const;

 private:
  TensorDump();
  std::string dir_;
};

// `DUMP(rank, forward, layer, "name", ptr, rows, cols)`: free when dumping is off.
#define SHARDLM_DUMP(rank, forward, layer, name, data, rows, cols)                     \
  do {                                                                                 \
    if (::shardlm::TensorDump::Get().enabled())                                        \
      ::shardlm::TensorDump::Get().Write(rank, forward, layer, name, data, rows, cols); \
  } while (0)

}  // namespace shardlm

#endif  // SHARDLM_ENGINE_DUMP_H_
