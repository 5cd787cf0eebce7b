// Rank 0's tokenizer for a model: tokenizer.json (tokenizer/) when the directory has one, the
// built-in byte codec for configs with "tokenizer": "bytes" (token id = byte value, 0..255;
// text gets bos_token_id in front, DESIGN §6), else none (requests then give "tokens").
#ifndef SHARDLM_COORDINATOR_TOKEN_CODEC_H_
#define SHARDLM_COORDINATOR_TOKEN_CODEC_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/dims.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {

inline std::vector<int64_t> ByteEncode(const std::string& text, int64_t bos_token_id) {
  std::vector<int64_t> ids;
  ids.reserve(text.size() + 1);
  if (bos_token_id >= 0) ids.push_back(bos_token_id);
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

// Null (and OK) when the model has no tokenizer.
inline absl::StatusOr<std::unique_ptr<Tokenizer>> LoadModelTokenizer(const std::string& model_dir,
                                                                     const ModelDims& dims) {
  if (dims.byte_tokenizer) return Tokenizer::Bytes(static_cast<int32_t>(dims.bos_token_id));
  std::error_code ec;
  if (!std::filesystem::exists(model_dir + "/tokenizer.json", ec)) {
    return std::unique_ptr<Tokenizer>();
  }
  return Tokenizer::Load(model_dir);
}

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_TOKEN_CODEC_H_
