// Fuzz target: the safetensors header parser (engine/safetensors.h).
// Contract: any byte string either fails to parse with a status, or parses into
// tensors that all read back in full, with no crash, hang, over-read or
// undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/safetensors.h"
#include "fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto file = shardlm::SafetensorsFile::FromBytes(bytes, "fuzz");
  if (!file.ok()) return 0;
  std::vector<float> out;
  for (const shardlm::TensorInfo& t : (*file)->tensors()) {
    // The 2-D view of ReadF32: [shape[0], rest], 1-D as [1, n], scalars [1, 1].
    const int64_t rows = t.shape.size() >= 2 ? t.shape[0] : 1;
    int64_t cols = 1;
    for (size_t i = t.shape.size() >= 2 ? 1 : 0; i < t.shape.size(); ++i) cols *= t.shape[i];
    // Parsing bounded the byte count, so the element count, by the input size.
    FUZZ_CHECK(t.offset >= 0 && t.bytes >= 0 && t.offset + t.bytes <= static_cast<int64_t>(size),
               absl::StrCat("tensor bytes [", t.offset, ", +", t.bytes, ") outside the ", size,
                            "-byte input"));
    out.resize(static_cast<size_t>(t.NumElements()));
    const absl::Status read = (*file)->ReadF32(t, 0, rows, 0, cols, out.data());
    FUZZ_CHECK(read.ok(), read.ToString());
  }
  return 0;
}
