#include "engine/dump.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace shardlm {

TensorDump& TensorDump::Get() {
  static TensorDump dump;
  return dump;
}

TensorDump::TensorDump() {
  const char* dir = std::getenv("SHARDLM_DUMP");
  if (dir != nullptr) dir_ = dir;
}

void TensorDump::Write(int rank, int64_t forward, int64_t layer, const char* name,
                       const float* data, int64_t rows, int64_t cols) const {
  const std::string folder = absl::StrCat(dir_, "/rank", rank, "/fwd", forward);
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  const std::string base = absl::StrCat(folder, "/layer", layer, ".", name);
  if (std::FILE* f = std::fopen((base + ".f32").c_str(), "wb")) {
    std::fwrite(data, sizeof(float), static_cast<size_t>(rows * cols), f);
    std::fclose(f);
  }
  if (std::FILE* f = std::fopen((base + ".shape").c_str(), "w")) {
    std::fprintf(f, "%lld %lld\n", static_cast<long long>(rows), static_cast<long long>(cols));
    std::fclose(f);
  }
}

}  // namespace shardlm
