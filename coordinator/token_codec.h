// The built-in byte tokenizer (config "tokenizer": "bytes"): token id = byte
// value, 0..255; text gets bos_token_id in front (DESIGN §6).
#ifndef SHARDLM_COORDINATOR_TOKEN_CODEC_H_
#define SHARDLM_COORDINATOR_TOKEN_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

namespace shardlm {

inline std::vector<int64_t> ByteEncode(const std::string& text, int64_t bos_token_id) {
  std::vector<int64_t> ids;
  ids.reserve(text.size() + 1);
  if (bos_token_id >= 0) ids.push_back(bos_token_id);
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

// Ids above 255 (BOS, EOS, …) are not text and are dropped.
inline std::string ByteDecode(const std::vector<int32_t>& ids) {
  std::string text;
  for (int32_t id : ids) {
    if (id >= 0 && id < 256) text.push_back(static_cast<char>(id));
  }
  return text;
}

}  // namespace shardlm

#endif  // SHARDLM_COORDINATOR_TOKEN_CODEC_H_
