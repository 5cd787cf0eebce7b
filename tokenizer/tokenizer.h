// Tokenizers (DESIGN §9): text → token ids → text, as the model directory describes them.
//
// `tokenizer.json` (+ `tokenizer_config.json`) is read as the Hugging Face `tokenizers` library
// reads it: added tokens matched in the raw text first, then normalizer, pre-tokenizer, the BPE
// model, and the post-processor; decoding runs the decoder chain. Implemented pieces:
//   model: BPE (ignore_merges, byte_fallback, fuse_unk, unk_token, continuing_subword_prefix,
//          end_of_word_suffix);
//   normalizers: NFC, Prepend, Replace, Sequence;
//   pre-tokenizers: Split (regex or string; every behaviour; invert), ByteLevel, Metaspace,
//          Digits, Sequence;
//   post-processors: TemplateProcessing (single), ByteLevel, Sequence; `add_bos_token` /
//          `add_eos_token` of a Llama tokenizer class;
//   decoders: ByteLevel, ByteFallback, Metaspace, Replace, Fuse, Strip, Sequence, and
//          `clean_up_tokenization_spaces`.
// Any other type or option is a load error that names it. Regexes run on PCRE2 (UTF, Unicode
// properties, JIT); NFC comes from utf8proc.
#ifndef SHARDLM_TOKENIZER_TOKENIZER_H_
#define SHARDLM_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace shardlm {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // `model_dir`/tokenizer.json and, when present, tokenizer_config.json.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);
  // The same from the files' text (tests); `config_json` may be empty.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                             std::string_view config_json,
                                                             const std::string& source);
  // The byte tokenizer of models with "tokenizer": "bytes": id = byte value, `bos_id` (if ≥ 0)
  // in front when special tokens are added; decoding drops ids above 255.
  static std::unique_ptr<Tokenizer> Bytes(int32_t bos_id);

  // Token ids of `text`, with the post-processor's special tokens (BOS, …) when asked.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const = 0;
  // The text of `ids`: bytes, possibly not valid UTF-8 where a character is cut (the caller
  // replaces or holds those back). Unknown ids decode to nothing.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  // The highest id it can produce, plus one.
  virtual int64_t vocab_size() const = 0;
  // The id of a token string (vocabulary or added token), or -1.
  virtual int32_t TokenId(std::string_view token) const = 0;
};

// Text of a growing id sequence, piece by piece, never cutting a UTF-8 character: a token that
// ends inside a character waits for the next one. The pieces concatenate to the text of all ids
// (with invalid sequences replaced by U+FFFD once Finish is called).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  // The new text after appending `id` (may be empty).
  std::string Next(int32_t id);
  // Whatever was held back, at the end of the sequence.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_;
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;  // bytes of the decoded text already returned
};

}  // namespace shardlm

#endif  // SHARDLM_TOKENIZER_TOKENIZER_H_
