#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "base/status.h"
#include "base/text.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using Json = nlohmann::json;

absl::Status Unsupported(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what, " is not supported"));
}

// ---------------------------------------------------------------------------
// Text helpers.

// GPT-2's byte ↔ character map: printable bytes stand for themselves, the others for
// U+0100 and up, so every byte sequence is a string of visible characters.
struct ByteLevelMap {
  std::string byte_to_char[256];                       // UTF-8 of the character of each byte
  std::unordered_map<uint32_t, uint8_t> char_to_byte;  // code point → byte
  ByteLevelMap() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256u + next++;
      char buf[4];
      const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp),
                                          reinterpret_cast<utf8proc_uint8_t*>(buf));
      byte_to_char[b].assign(buf, static_cast<size_t>(n));
      char_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteLevelMap& ByteLevel() {
  static const ByteLevelMap map;
  return map;
}

// Code points of valid UTF-8 (invalid bytes are taken one at a time as U+FFFD).
std::vector<std::pair<size_t, size_t>> Utf8Chars(std::string_view s) {  // (offset, length)
  std::vector<std::pair<size_t, size_t>> chars;
  for (size_t i = 0; i < s.size();) {
    size_t n = Utf8SequenceLength(s, i);
    if (n == 0) n = 1;
    chars.emplace_back(i, n);
    i += n;
  }
  return chars;
}

uint32_t FirstCodePoint(std::string_view s) {
  utf8proc_int32_t cp = -1;
  utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                   static_cast<utf8proc_ssize_t>(s.size()), &cp);
  return cp < 0 ? 0xFFFD : static_cast<uint32_t>(cp);
}

bool IsSpace(uint32_t cp) {
  return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C ||
         utf8proc_category(static_cast<utf8proc_int32_t>(cp)) == UTF8PROC_CATEGORY_ZS;
}

// ---------------------------------------------------------------------------
// Regex (PCRE2, UTF + Unicode properties, JIT).

class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern, bool literal,
                                                        const std::string& source) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    // PCRE2_LITERAL admits no Unicode-property option.
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(absl::StrCat(source, ": regex \"", Printable(pattern),
                                                     "\" does not compile at offset ", offset, ": ",
                                                     reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if it fails
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }

  // Every non-overlapping match of `s`, left to right, as (begin, end) byte offsets.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t start = 0;
    while (start <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start,
                                 PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: not a piece; step over one character
        if (b >= s.size()) break;
        size_t n = Utf8SequenceLength(s, b);
        start = b + (n == 0 ? 1 : n);
        continue;
      }
      out.emplace_back(b, e);
      start = e;
    }
    pcre2_match_data_free(md);
    return out;
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// A {"String": s} or {"Regex": r} pattern of tokenizer.json.
absl::StatusOr<std::unique_ptr<Regex>> Pattern(const Json& p, const std::string& source) {
  if (p.contains("String")) return Regex::Compile(p["String"].get<std::string>(), true, source);
  if (p.contains("Regex")) return Regex::Compile(p["Regex"].get<std::string>(), false, source);
  return absl::InvalidArgumentError(absl::StrCat(source, ": a pattern needs String or Regex"));
}

// The parts of a Sequence component: each built by `make`; null parts (JSON null) are skipped.
template <typename T, typename Make>
absl::StatusOr<std::vector<std::unique_ptr<T>>> MakeParts(const Json& list, const Make& make,
                                                          const std::string& source) {
  std::vector<std::unique_ptr<T>> parts;
  for (const Json& item : list) {
    ASSIGN_OR_RETURN(std::unique_ptr<T> part, make(item, source));
    if (part != nullptr) parts.push_back(std::move(part));
  }
  return parts;
}

// Metaspace's prepend_scheme, or what the older add_prefix_space means.
std::string MetaspaceScheme(const Json& j) {
  std::string scheme = j.value("prepend_scheme", "");
  if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
  return scheme;
}

// ---------------------------------------------------------------------------
// Normalizers: text → text.

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Apply(std::string& s) const = 0;
};

class NfcNormalizer final : public Normalizer {
 public:
  void Apply(std::string& s) const override {
    if (!IsValidUtf8(s)) return;  // utf8proc rejects invalid input; leave it as it is
    utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()));
    if (out == nullptr) return;
    s.assign(reinterpret_cast<char*>(out));
    free(out);
  }
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Apply(std::string& s) const override {
    std::string out;
    size_t last = 0;
    for (const auto& [b, e] : pattern_->FindAll(s)) {
      out.append(s, last, b - last);
      out += content_;
      last = e;
    }
    out.append(s, last, std::string::npos);
    s = std::move(out);
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void Apply(std::string& s) const override {
    for (const auto& p : parts_) p->Apply(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

absl::StatusOr<std::unique_ptr<Normalizer>> MakeNormalizer(const Json& j,
                                                           const std::string& source) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  const std::string type = j.value("type", "");
  if (type == "NFC") return std::unique_ptr<Normalizer>(new NfcNormalizer());
  if (type == "Prepend") {
    return std::unique_ptr<Normalizer>(new PrependNormalizer(j.at("prepend").get<std::string>()));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pattern, Pattern(j.at("pattern"), source));
    return std::unique_ptr<Normalizer>(
        new ReplaceNormalizer(std::move(pattern), j.at("content").get<std::string>()));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto parts,
                     MakeParts<Normalizer>(j.at("normalizers"), MakeNormalizer, source));
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(parts)));
  }
  return Unsupported(source, absl::StrCat("normalizer type \"", Printable(type), "\""));
}

// ---------------------------------------------------------------------------
// Pre-tokenizers: a list of pieces → a finer list of pieces.

using Pieces = std::vector<std::string>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual Pieces Apply(Pieces pieces) const = 0;
};

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `s` at the matches of `regex` (or, inverted, at the text between matches).
void SplitPiece(const std::string& s, const Regex& regex, SplitBehavior behavior, bool invert,
                Pieces* out) {
  if (behavior == SplitBehavior::kIsolated && !invert) {  // the common case, without copies
    size_t last = 0;
    for (const auto& [b, e] : regex.FindAll(s)) {
      if (b > last) out->emplace_back(s, last, b - last);
      out->emplace_back(s, b, e - b);
      last = e;
    }
    if (last < s.size()) out->emplace_back(s, last, std::string::npos);
    return;
  }
  // (begin, end, is_match) spans covering s.
  std::vector<std::tuple<size_t, size_t, bool>> spans;
  size_t last = 0;
  for (const auto& [b, e] : regex.FindAll(s)) {
    if (b > last) spans.emplace_back(last, b, invert);
    spans.emplace_back(b, e, !invert);
    last = e;
  }
  if (last < s.size()) spans.emplace_back(last, s.size(), invert);
  std::vector<std::pair<std::string, bool>> parts;  // (text, is_delimiter)
  for (const auto& [b, e, m] : spans) parts.emplace_back(s.substr(b, e - b), m);
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (auto& [t, m] : parts) out->push_back(std::move(t));
      return;
    case SplitBehavior::kRemoved:
      for (auto& [t, m] : parts) {
        if (!m) out->push_back(std::move(t));
      }
      return;
    case SplitBehavior::kMergedWithPrevious:
    case SplitBehavior::kMergedWithNext:
    case SplitBehavior::kContiguous: {
      // Whether a part joins the piece before it: a delimiter after plain text (previous), plain
      // text after a delimiter (next), a delimiter after a delimiter (contiguous).
      auto joins = [behavior](bool delim, bool prev_delim) {
        switch (behavior) {
          case SplitBehavior::kMergedWithPrevious:
            return delim && !prev_delim;
          case SplitBehavior::kMergedWithNext:
            return !delim && prev_delim;
          default:
            return delim && prev_delim;
        }
      };
      const size_t first = out->size();  // pieces of earlier calls are not joined
      bool prev_delim = false;
      for (auto& [t, m] : parts) {
        if (out->size() > first && joins(m, prev_delim)) {
          out->back() += t;
        } else {
          out->push_back(std::move(t));
        }
        prev_delim = m;
      }
      return;
    }
  }
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  Pieces Apply(Pieces pieces) const override {
    Pieces out;
    for (const std::string& p : pieces) SplitPiece(p, *regex_, behavior_, invert_, &out);
    return out;
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

constexpr char kGpt2Regex[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  Pieces Apply(Pieces pieces) const override {
    Pieces split;
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string p = std::move(pieces[i]);
      if (add_prefix_space_ && i == 0 && !p.empty() && p[0] != ' ') p = ' ' + p;
      if (regex_ != nullptr) {
        SplitPiece(p, *regex_, SplitBehavior::kIsolated, false, &split);
      } else {
        split.push_back(std::move(p));
      }
    }
    // Every byte becomes its visible character.
    const ByteLevelMap& map = ByteLevel();
    std::string mapped;
    for (std::string& p : split) {
      mapped.clear();
      for (unsigned char c : p) mapped += map.byte_to_char[c];
      p.swap(mapped);
    }
    return split;
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, std::string scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(std::move(scheme)), split_(split) {}
  Pieces Apply(Pieces pieces) const override {
    Pieces out;
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string p = absl::StrReplaceAll(pieces[i], {{" ", replacement_}});
      const bool prepend = scheme_ == "always" || (scheme_ == "first" && i == 0);
      if (prepend && !p.empty() && p.rfind(replacement_, 0) != 0) p.insert(0, replacement_);
      if (!split_) {
        out.push_back(std::move(p));
        continue;
      }
      // Split before every replacement character (merged with the text that follows it).
      size_t start = 0;
      for (size_t pos = p.find(replacement_, 1); pos != std::string::npos;
           pos = p.find(replacement_, pos + replacement_.size())) {
        out.push_back(p.substr(start, pos - start));
        start = pos;
      }
      if (start < p.size()) out.push_back(p.substr(start));
    }
    return out;
  }

 private:
  std::string replacement_, scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  Pieces Apply(Pieces pieces) const override {
    for (const auto& p : parts_) pieces = p->Apply(std::move(pieces));
    return pieces;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

absl::StatusOr<SplitBehavior> Behavior(const std::string& name, const std::string& source) {
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return Unsupported(source, absl::StrCat("Split behavior \"", Printable(name), "\""));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePreTokenizer(const Json& j,
                                                               const std::string& source) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  const std::string type = j.value("type", "");
  if (type == "Split") {
    ASSIGN_OR_RETURN(auto regex, Pattern(j.at("pattern"), source));
    ASSIGN_OR_RETURN(SplitBehavior behavior, Behavior(j.value("behavior", "Isolated"), source));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(regex), behavior, j.value("invert", false)));
  }
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (j.value("use_regex", true)) {
      ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2Regex, false, source));
    }
    return std::unique_ptr<PreTokenizer>(
        new ByteLevelPreTokenizer(j.value("add_prefix_space", true), std::move(regex)));
  }
  if (type == "Metaspace") {
    const std::string scheme = MetaspaceScheme(j);
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return Unsupported(source, absl::StrCat("Metaspace prepend_scheme \"", scheme, "\""));
    }
    return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(
        j.value("replacement", "\xE2\x96\x81"), scheme, j.value("split", true)));
  }
  if (type == "Digits") {
    const std::string pattern = j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)";
    ASSIGN_OR_RETURN(auto regex, Regex::Compile(pattern, false, source));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(regex), SplitBehavior::kIsolated, false));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto parts,
                     MakeParts<PreTokenizer>(j.at("pretokenizers"), MakePreTokenizer, source));
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(parts)));
  }
  return Unsupported(source, absl::StrCat("pre_tokenizer type \"", Printable(type), "\""));
}

// ---------------------------------------------------------------------------
// Decoders: a list of token strings → a list of strings, joined at the end.

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void Apply(std::vector<std::string>& tokens) const = 0;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void Apply(std::vector<std::string>& tokens) const override {
    // As the tokenizers library: a token whose characters all stand for bytes becomes those
    // bytes; any other token (an added token such as DeepSeek's <｜begin▁of▁sentence｜>) is
    // kept as it is.
    const ByteLevelMap& map = ByteLevel();
    std::string joined;
    for (const std::string& t : tokens) {
      std::string bytes;
      bool all = true;
      for (const auto& [off, len] : Utf8Chars(t)) {
        const auto it = map.char_to_byte.find(FirstCodePoint(std::string_view(t).substr(off, len)));
        if (it == map.char_to_byte.end()) {
          all = false;
          break;
        }
        bytes.push_back(static_cast<char>(it->second));
      }
      joined += all ? bytes : t;
    }
    tokens.assign(1, std::move(joined));
  }
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void Apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&] {
      if (!bytes.empty()) out.push_back(ReplaceInvalidUtf8(bytes));
      bytes.clear();
    };
    for (const std::string& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        const int v = std::stoi(t.substr(3, 2), nullptr, 16);
        bytes.push_back(static_cast<char>(v));
        continue;
      }
      flush();
      out.push_back(t);
    }
    flush();
    tokens = std::move(out);
  }
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Regex> pattern, std::string content)
      : normalizer_(std::move(pattern), std::move(content)) {}
  void Apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) normalizer_.Apply(t);
  }

 private:
  ReplaceNormalizer normalizer_;
};

class FuseDecoder final : public Decoder {
 public:
  void Apply(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& t : tokens) joined += t;
    tokens.assign(1, std::move(joined));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, int start, int stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void Apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      for (int i = 0; i < start_ && t.rfind(content_, 0) == 0; ++i) t.erase(0, content_.size());
      for (int i = 0; i < stop_ && t.size() >= content_.size() &&
                      t.compare(t.size() - content_.size(), content_.size(), content_) == 0;
           ++i) {
        t.erase(t.size() - content_.size());
      }
    }
  }

 private:
  std::string content_;
  int start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool prepended)
      : replacement_(std::move(replacement)), prepended_(prepended) {}
  void Apply(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string t = absl::StrReplaceAll(tokens[i], {{replacement_, " "}});
      if (i == 0 && prepended_ && !t.empty() && t[0] == ' ') t.erase(0, 1);
      tokens[i] = std::move(t);
    }
  }

 private:
  std::string replacement_;
  bool prepended_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  void Apply(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->Apply(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const Json& j, const std::string& source) {
  if (j.is_null()) return std::unique_ptr<Decoder>();
  const std::string type = j.value("type", "");
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pattern, Pattern(j.at("pattern"), source));
    return std::unique_ptr<Decoder>(
        new ReplaceDecoder(std::move(pattern), j.at("content").get<std::string>()));
  }
  if (type == "Strip") {
    return std::unique_ptr<Decoder>(
        new StripDecoder(j.value("content", " "), j.value("start", 0), j.value("stop", 0)));
  }
  if (type == "Metaspace") {
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(j.value("replacement", "\xE2\x96\x81"),
                                                         MetaspaceScheme(j) != "never"));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto parts, MakeParts<Decoder>(j.at("decoders"), MakeDecoder, source));
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(parts)));
  }
  return Unsupported(source, absl::StrCat("decoder type \"", Printable(type), "\""));
}

// ---------------------------------------------------------------------------
// Reading tokenizer.json: the bulk of a real file is model.vocab and model.merges (Llama 3:
// 128k and 280k entries of a 9 MB file). A document tree of them costs four times the parse
// itself, so a SAX handler streams those two into flat vectors and builds the tree of the rest.

struct BpeTables {
  bool has_vocab = false, has_merges = false;
  // Every string of both tables back to back: no allocation per entry.
  std::string text;
  struct Span {
    uint32_t offset = 0, size = 0;
  };
  struct Entry {
    Span token;
    int32_t id = 0;
  };
  std::vector<Entry> vocab;
  // A merge as written: "left right" (split: one string to cut at its space) or
  // ["left", "right"].
  struct Merge {
    Span left, right;
    bool split = false;
  };
  std::vector<Merge> merges;

  absl::string_view View(Span s) const { return absl::string_view(text.data() + s.offset, s.size); }
  // False when the tables outgrow 32-bit offsets (a 4 GB tokenizer.json).
  bool Append(const std::string& s, Span* span) {
    if (text.size() + s.size() > UINT32_MAX) return false;
    *span = {static_cast<uint32_t>(text.size()), static_cast<uint32_t>(s.size())};
    text += s;
    return true;
  }
};

class TokenizerJsonReader final : public nlohmann::json_sax<Json> {
 public:
  Json root;
  BpeTables tables;
  std::string error;  // why parsing stopped, when it did

  bool null() override { return Add(Json(nullptr)); }
  bool boolean(bool v) override { return Add(Json(v)); }
  bool number_integer(number_integer_t v) override {
    return mode_ == Mode::kVocab ? VocabId(v) : Add(Json(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == Mode::kVocab) {
      return VocabId(v > static_cast<uint64_t>(INT64_MAX) ? -1 : static_cast<int64_t>(v));
    }
    return Add(Json(v));
  }
  bool number_float(number_float_t v, const string_t&) override { return Add(Json(v)); }
  bool string(string_t& v) override {
    if (mode_ == Mode::kMerges) {
      BpeTables::Span span;
      if (!tables.Append(v, &span)) return Bad("model.merges: too large");
      if (merge_depth_ == 0) {
        tables.merges.push_back({span, {}, true});
      } else if (++merge_parts_ <= 2) {
        (merge_parts_ == 1 ? tables.merges.back().left : tables.merges.back().right) = span;
      }
      return true;
    }
    return Add(Json(std::move(v)));
  }
  bool binary(binary_t&) override { return Bad("binary value"); }
  bool start_object(std::size_t) override {
    if (mode_ == Mode::kVocab) return Bad("");
    if (mode_ == Mode::kMerges) return Bad("model.merges: a merge is a string or a pair of strings");
    if (AtModel("vocab")) {
      mode_ = Mode::kVocab;
      tables.has_vocab = true;
      tables.vocab.clear();  // a repeated key: the last one counts, as in a document tree
      tables.vocab.reserve(1 << 16);
      return Add(Json::object());
    }
    return Open(Json::object());
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    if (mode_ == Mode::kVocab) {
      mode_ = Mode::kDom;
      return true;
    }
    open_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (mode_ == Mode::kMerges) {
      if (merge_depth_ != 0) return Bad("model.merges: a merge is a string or a pair of strings");
      merge_depth_ = 1;
      merge_parts_ = 0;
      tables.merges.push_back({});
      return true;
    }
    if (mode_ == Mode::kVocab) return Bad("");
    if (AtModel("merges")) {
      mode_ = Mode::kMerges;
      tables.has_merges = true;
      tables.merges.clear();
      tables.merges.reserve(1 << 16);
      return Add(Json::array());
    }
    return Open(Json::array());
  }
  bool end_array() override {
    if (mode_ == Mode::kMerges) {
      if (merge_depth_ == 0) {
        mode_ = Mode::kDom;
      } else {
        merge_depth_ = 0;
        if (merge_parts_ != 2) return Bad("model.merges: a merge is a string or a pair of strings");
      }
      return true;
    }
    open_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = absl::StrCat("not a valid JSON object (", e.what(), ")");
    return false;
  }

 private:
  enum class Mode { kDom, kVocab, kMerges };

  // Whether the next value is root["model"][name], the tables the tree does not hold.
  bool AtModel(std::string_view name) const {
    return open_.size() == 2 && open_[1]->is_object() && open_names_[1] == "model" &&
           key_ == name;
  }
  bool VocabId(int64_t id) {
    if (id < INT32_MIN || id > INT32_MAX) return Bad("model.vocab: an id beyond 32 bits");
    BpeTables::Span span;
    if (!tables.Append(key_, &span)) return Bad("model.vocab: too large");
    tables.vocab.push_back({span, static_cast<int32_t>(id)});
    return true;
  }
  bool Bad(std::string_view what) {
    // An empty `what`: a value inside model.vocab that is not an id.
    error = what.empty()
                ? absl::StrCat("model.vocab: the id of \"", Printable(key_), "\" must be an integer")
                : std::string(what);
    return false;
  }
  // Puts a value into the innermost open container (or at the root); returns false (stop)
  // for a value inside the streamed tables that is not what they hold.
  bool Add(Json&& v) { return Place(std::move(v)) != nullptr; }
  Json* Place(Json&& v) {
    if (mode_ == Mode::kVocab && !v.is_object()) {
      Bad("");
      return nullptr;
    }
    if (mode_ == Mode::kMerges && !v.is_array()) {
      Bad("model.merges: a merge is a string or a pair of strings");
      return nullptr;
    }
    if (open_.empty()) {
      root = std::move(v);
      return &root;
    }
    Json& parent = *open_.back();
    if (parent.is_object()) return &(parent[key_] = std::move(v));
    parent.push_back(std::move(v));
    return &parent.back();
  }
  bool Open(Json&& container) {
    std::string name = open_.empty() || !open_.back()->is_object() ? std::string() : key_;
    Json* placed = Place(std::move(container));
    if (placed == nullptr) return false;
    open_.push_back(placed);
    open_names_.resize(open_.size());
    open_names_.back() = std::move(name);
    return true;
  }

  Mode mode_ = Mode::kDom;
  std::vector<Json*> open_;              // the containers being filled, outermost first
  std::vector<std::string> open_names_;  // each one's key in its parent object ("" otherwise)
  std::string key_;
  int merge_depth_ = 0, merge_parts_ = 0;
};

// ---------------------------------------------------------------------------
// The tokenizer.json tokenizer.

struct AddedToken {
  std::string content;  // what is matched: the normalized content for a `normalized` token
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

// Added tokens of one kind (matched on the raw text, or on the normalized text), longest first,
// indexed by their first byte.
struct AddedTable {
  std::vector<AddedToken> tokens;
  std::vector<const AddedToken*> by_byte[256];

  void Index() {
    std::stable_sort(tokens.begin(), tokens.end(), [](const auto& a, const auto& b) {
      return a.content.size() > b.content.size();
    });
    for (const AddedToken& a : tokens) {
      if (!a.content.empty()) by_byte[static_cast<unsigned char>(a.content[0])].push_back(&a);
    }
  }
};

class JsonTokenizer final : public Tokenizer {
 public:
  // `j` is tokenizer.json without model.vocab and model.merges, which are in `tables`.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(const Json& j, const BpeTables& tables,
                                                          const Json& config,
                                                          const std::string& source);

  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t TokenId(std::string_view token) const override {
    const auto it = vocab_.find(absl::string_view(token.data(), token.size()));
    return it == vocab_.end() ? -1 : it->second;
  }

 private:
  void EncodeWord(const std::string& word, std::vector<int32_t>* ids) const;
  // Pre-tokenizes and encodes normalized text that holds no added token.
  void EncodeNormalized(std::string segment, std::vector<int32_t>* ids) const;
  // Appends the ids of `table`'s tokens found in `text` and hands the text between them to
  // `between` (leftmost match, longest at a position; lstrip/rstrip take the whitespace beside
  // a match into it).
  void SplitOnAdded(std::string_view text, const AddedTable& table, std::vector<int32_t>* ids,
                    absl::FunctionRef<void(std::string)> between) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;  // model vocabulary and added tokens
  std::vector<std::string> id_to_token_;
  absl::flat_hash_map<std::pair<int32_t, int32_t>, std::pair<int32_t, int32_t>>
      merges_;                                         // (left id, right id) → (rank, merged id)
  // As the tokenizers library: tokens with `normalized: false` are found in the raw text first,
  // then the text between them is normalized and the `normalized: true` tokens are found in it.
  AddedTable raw_added_, normalized_added_;
  std::unordered_set<int32_t> special_ids_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // added around a sequence (post-processor)
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  int32_t unk_id_ = -1;
  std::string continuing_prefix_, end_suffix_;
  bool clean_up_spaces_ = false;
  int64_t vocab_size_ = 0;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_;  // word → ids
};

absl::StatusOr<std::unique_ptr<Tokenizer>> JsonTokenizer::Build(const Json& j,
                                                                const BpeTables& tables,
                                                                const Json& config,
                                                                const std::string& source) {
  auto t = std::unique_ptr<JsonTokenizer>(new JsonTokenizer());
  const Json& model = j.at("model");
  const std::string type = model.value("type", "BPE");
  if (type != "BPE")
    return Unsupported(source, absl::StrCat("model type \"", Printable(type), "\""));
  if (model.contains("dropout") && !model["dropout"].is_null()) {
    return Unsupported(source, "BPE dropout");
  }
  if (!tables.has_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, model.contains("vocab") ? ": model.vocab must be an object {token: id}"
                                        : ": model.vocab is missing"));
  }
  t->vocab_.reserve(tables.vocab.size() + 1024);
  for (const BpeTables::Entry& e : tables.vocab) {
    t->vocab_.insert_or_assign(std::string(tables.View(e.token)), e.id);
  }
  for (const Json& a : j.value("added_tokens", Json::array())) {
    AddedToken added{a.at("content").get<std::string>(), a.at("id").get<int32_t>(),
                     a.value("special", false),          a.value("lstrip", false),
                     a.value("rstrip", false),           a.value("single_word", false)};
    t->vocab_[added.content] = added.id;
    if (added.special) t->special_ids_.insert(added.id);
    const bool normalized = a.value("normalized", !added.special);
    (normalized ? t->normalized_added_ : t->raw_added_).tokens.push_back(std::move(added));
  }
  int32_t max_id = -1;
  for (const auto& [token, id] : t->vocab_) max_id = std::max(max_id, id);
  t->vocab_size_ = max_id + 1;
  t->id_to_token_.resize(static_cast<size_t>(t->vocab_size_));
  for (const auto& [token, id] : t->vocab_) {
    if (id >= 0) t->id_to_token_[id] = token;
  }
  int32_t rank = 0;
  if (!tables.has_merges && model.contains("merges") && !model["merges"].is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": model.merges must be an array"));
  }
  t->merges_.reserve(tables.merges.size());
  std::string joined;  // left + right, reused
  for (const BpeTables::Merge& m : tables.merges) {
    absl::string_view left = tables.View(m.left), right = tables.View(m.right);
    if (m.split) {
      const size_t space = left.find(' ', 1);
      if (space == absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": bad merge \"", Printable(std::string_view(left.data(), left.size())), "\""));
      }
      right = left.substr(space + 1);
      left = left.substr(0, space);
    }
    joined.assign(left.data(), left.size());
    joined.append(right.data(), right.size());
    const auto l = t->vocab_.find(left), r = t->vocab_.find(right), merged = t->vocab_.find(joined);
    if (l == t->vocab_.end() || r == t->vocab_.end() || merged == t->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": merge \"", Printable(std::string_view(left.data(), left.size())),
                       " ", Printable(std::string_view(right.data(), right.size())),
                       "\" has a part not in the vocabulary"));
    }
    t->merges_.emplace(std::make_pair(l->second, r->second),
                       std::make_pair(rank++, merged->second));
  }
  t->ignore_merges_ = model.value("ignore_merges", false);
  t->byte_fallback_ = model.value("byte_fallback", false);
  t->fuse_unk_ = model.value("fuse_unk", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    t->unk_id_ = t->TokenId(model["unk_token"].get<std::string>());
  }
  if (model.contains("continuing_subword_prefix") &&
      model["continuing_subword_prefix"].is_string()) {
    t->continuing_prefix_ = model["continuing_subword_prefix"].get<std::string>();
  }
  if (model.contains("end_of_word_suffix") && model["end_of_word_suffix"].is_string()) {
    t->end_suffix_ = model["end_of_word_suffix"].get<std::string>();
  }
  ASSIGN_OR_RETURN(t->normalizer_, MakeNormalizer(j.value("normalizer", Json()), source));
  ASSIGN_OR_RETURN(t->pre_tokenizer_, MakePreTokenizer(j.value("pre_tokenizer", Json()), source));
  ASSIGN_OR_RETURN(t->decoder_, MakeDecoder(j.value("decoder", Json()), source));
  // A `normalized` token is looked for in normalized text as its own content normalized.
  for (AddedToken& a : t->normalized_added_.tokens) {
    if (t->normalizer_ != nullptr) t->normalizer_->Apply(a.content);
  }
  t->raw_added_.Index();
  t->normalized_added_.Index();

  // Post-processor: the ids a sequence gets around it.
  std::function<absl::Status(const Json&)> post = [&](const Json& p) -> absl::Status {
    if (p.is_null()) return absl::OkStatus();
    const std::string ptype = p.value("type", "");
    if (ptype == "ByteLevel") return absl::OkStatus();  // offsets only
    if (ptype == "Sequence") {
      for (const Json& q : p.at("processors")) RETURN_IF_ERROR(post(q));
      return absl::OkStatus();
    }
    if (ptype == "TemplateProcessing") {
      bool after = false;
      for (const Json& piece : p.at("single")) {
        if (piece.contains("Sequence")) {
          after = true;
          continue;
        }
        const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
        const Json& special = p.at("special_tokens").at(name);
        for (const Json& id : special.at("ids")) {
          (after ? t->suffix_ids_ : t->prefix_ids_).push_back(id.get<int32_t>());
        }
      }
      return absl::OkStatus();
    }
    return Unsupported(source, absl::StrCat("post_processor type \"", Printable(ptype), "\""));
  };
  RETURN_IF_ERROR(post(j.value("post_processor", Json())));
  // A Llama tokenizer class builds its template from add_bos_token / add_eos_token.
  if (config.is_object()) {
    const std::string cls = config.value("tokenizer_class", "");
    auto token_of = [&](const char* key) -> std::string {
      if (!config.contains(key)) return "";
      const Json& v = config[key];
      if (v.is_string()) return v.get<std::string>();
      if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
      return "";
    };
    if (cls == "LlamaTokenizerFast" || cls == "LlamaTokenizer") {
      t->prefix_ids_.clear();
      t->suffix_ids_.clear();
      const bool bos = config.value("add_bos_token", true),
                 eos = config.value("add_eos_token", false);
      if (bos && t->TokenId(token_of("bos_token")) >= 0) {
        t->prefix_ids_.push_back(t->TokenId(token_of("bos_token")));
      }
      if (eos && t->TokenId(token_of("eos_token")) >= 0) {
        t->suffix_ids_.push_back(t->TokenId(token_of("eos_token")));
      }
    }
    t->clean_up_spaces_ = config.value("clean_up_tokenization_spaces", false);
  }
  return std::unique_ptr<Tokenizer>(std::move(t));
}

// BPE on one pre-token: its characters, merged pair by pair in rank order.
void JsonTokenizer::EncodeWord(const std::string& word, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (const auto it = cache_.find(word); it != cache_.end()) {
    ids->insert(ids->end(), it->second.begin(), it->second.end());
    return;
  }
  // Initial symbols: characters (with the subword prefix/suffix), or their bytes.
  std::vector<int32_t> symbols;
  const auto chars = Utf8Chars(word);
  bool last_unk = false;
  for (size_t c = 0; c < chars.size(); ++c) {
    std::string s = word.substr(chars[c].first, chars[c].second);
    if (c > 0) s.insert(0, continuing_prefix_);
    if (c + 1 == chars.size()) s += end_suffix_;
    if (const auto it = vocab_.find(s); it != vocab_.end()) {
      symbols.push_back(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      std::vector<int32_t> bytes;
      for (size_t b = 0; b < chars[c].second; ++b) {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "<0x%02X>",
                      static_cast<unsigned char>(word[chars[c].first + b]));
        const int32_t id = TokenId(hex);
        if (id < 0) all = false;
        bytes.push_back(id);
      }
      if (all) {
        symbols.insert(symbols.end(), bytes.begin(), bytes.end());
        last_unk = false;
        continue;
      }
    }
    if (unk_id_ >= 0 && !(fuse_unk_ && last_unk)) symbols.push_back(unk_id_);
    last_unk = true;
  }
  // Merge the lowest-ranked adjacent pair, leftmost first, until none is in the merges.
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX, best_id = -1;
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto it = merges_.find({symbols[i], symbols[i + 1]});
      if (it != merges_.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        best_id = it->second.second;
        best = i;
      }
    }
    if (best_id < 0) break;
    symbols[best] = best_id;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  ids->insert(ids->end(), symbols.begin(), symbols.end());
  if (cache_.size() < (1u << 20)) cache_.emplace(word, std::move(symbols));
}

void JsonTokenizer::EncodeNormalized(std::string segment, std::vector<int32_t>* ids) const {
  if (segment.empty()) return;
  Pieces pieces;
  pieces.push_back(std::move(segment));
  if (pre_tokenizer_ != nullptr) pieces = pre_tokenizer_->Apply(std::move(pieces));
  for (const std::string& p : pieces) {
    if (!p.empty()) EncodeWord(p, ids);
  }
}

bool IsWordChar(uint32_t cp) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) ||
         (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME);
}

void JsonTokenizer::SplitOnAdded(std::string_view text, const AddedTable& table,
                                 std::vector<int32_t>* ids,
                                 absl::FunctionRef<void(std::string)> between) const {
  std::string pending;
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (const AddedToken* candidate : table.by_byte[static_cast<unsigned char>(text[i])]) {
      const AddedToken& a = *candidate;
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        size_t prev = i;  // start of the character before the match
        while (prev > 0 && (static_cast<unsigned char>(text[--prev]) & 0xC0) == 0x80) {
        }
        const bool before_ok = i == 0 || !IsWordChar(FirstCodePoint(text.substr(prev, i - prev)));
        const size_t end = i + a.content.size();
        const bool after_ok = end >= text.size() || !IsWordChar(FirstCodePoint(text.substr(end)));
        if (!before_ok || !after_ok) continue;
      }
      hit = &a;
      break;
    }
    if (hit == nullptr) {
      // Up to the next byte that starts some added token.
      size_t next = i + 1;
      while (next < text.size() && table.by_byte[static_cast<unsigned char>(text[next])].empty()) {
        ++next;
      }
      pending.append(text.substr(i, next - i));
      i = next;
      continue;
    }
    if (hit->lstrip) {
      while (!pending.empty() && IsSpace(static_cast<unsigned char>(pending.back()))) {
        pending.pop_back();
      }
    }
    if (!pending.empty()) between(std::move(pending));
    pending.clear();
    ids->push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) {
      while (i < text.size() && IsSpace(static_cast<unsigned char>(text[i]))) ++i;
    }
  }
  if (!pending.empty()) between(std::move(pending));
}

std::vector<int32_t> JsonTokenizer::Encode(std::string_view raw, bool add_special_tokens) const {
  // The library works on Unicode strings: bytes that are not UTF-8 become U+FFFD first (the
  // regexes then run without rechecking the encoding).
  std::string valid;
  std::string_view text = raw;
  if (!IsValidUtf8(raw)) {
    valid = ReplaceInvalidUtf8(raw);
    text = valid;
  }
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = prefix_ids_;
  SplitOnAdded(text, raw_added_, &ids, [&](std::string segment) {
    if (normalizer_ != nullptr) normalizer_->Apply(segment);
    SplitOnAdded(segment, normalized_added_, &ids,
                 [&](std::string piece) { EncodeNormalized(std::move(piece), &ids); });
  });
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string JsonTokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  // As the tokenizers library: every token (added ones too) through the decoder chain; with no
  // decoder, the tokens joined by spaces.
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) continue;
    if (skip_special_tokens && special_ids_.contains(id)) continue;
    tokens.push_back(id_to_token_[id]);
  }
  std::string text;
  if (decoder_ != nullptr) {
    decoder_->Apply(tokens);
    for (const std::string& t : tokens) text += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) text += ' ';
      text += tokens[i];
    }
  }
  if (clean_up_spaces_) {
    text = absl::StrReplaceAll(text, {{" .", "."},
                                      {" ?", "?"},
                                      {" !", "!"},
                                      {" ,", ","},
                                      {" ' ", "'"},
                                      {" n't", "n't"},
                                      {" 'm", "'m"},
                                      {" 's", "'s"},
                                      {" 've", "'ve"},
                                      {" 're", "'re"}});
  }
  return text;
}

// ---------------------------------------------------------------------------
// The byte tokenizer.

class BytesTokenizer final : public Tokenizer {
 public:
  explicit BytesTokenizer(int32_t bos) : bos_(bos) {}
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() + 1);
    if (add_special_tokens && bos_ >= 0) ids.push_back(bos_);
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string Decode(std::span<const int32_t> ids, bool) const override {
    std::string text;
    for (int32_t id : ids) {
      if (id >= 0 && id < 256) text.push_back(static_cast<char>(id));
    }
    return text;
  }
  int64_t vocab_size() const override { return 256; }
  int32_t TokenId(std::string_view token) const override {
    return token.size() == 1 ? static_cast<unsigned char>(token[0]) : -1;
  }

 private:
  int32_t bos_;
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const std::streamoff size = in.tellg();
  if (size < 0) return absl::DataLossError(absl::StrCat("cannot read ", path));
  std::string text(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(text.data(), size)) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return text;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                               std::string_view config_json,
                                                               const std::string& source) {
  TokenizerJsonReader reader;
  if (!Json::sax_parse(tokenizer_json, &reader) || !reader.root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", reader.error.empty() ? "not a valid JSON object" : reader.error));
  }
  const Json& j = reader.root;
  Json config;
  if (!config_json.empty()) {
    config = Json::parse(config_json, nullptr, false);
    if (config.is_discarded()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tokenizer_config.json is not valid JSON"));
    }
  }
  // nlohmann throws on a wrong type inside (a number where a string is due, …): the project
  // does not use exceptions elsewhere, so this is the one place that turns them into a Status.
  try {
    return JsonTokenizer::Build(j, reader.tables, config, source);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::string path = model_dir + "/tokenizer.json";
  ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  std::string config;
  if (absl::StatusOr<std::string> c = ReadFile(model_dir + "/tokenizer_config.json"); c.ok()) {
    config = std::move(*c);
  }
  return FromJson(text, config, path);
}

std::unique_ptr<Tokenizer> Tokenizer::Bytes(int32_t bos_id) {
  return std::make_unique<BytesTokenizer>(bos_id);
}

std::string StreamDecoder::Next(int32_t id) {
  ids_.push_back(id);
  const std::string text = tokenizer_.Decode(ids_, skip_special_);
  // Hold back a trailing incomplete UTF-8 character (or a replacement character that a later
  // byte may still complete, as a decoder's lossy conversion writes one).
  size_t end = text.size();
  for (size_t back = 1; back <= 3 && back <= text.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (need > back) end = text.size() - back;
    break;
  }
  // A decoder that replaces bytes it cannot complete (ByteFallback) writes U+FFFD where the
  // next token may still finish the character: hold trailing ones back too.
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  while (end >= kReplacement.size() &&
         std::string_view(text).substr(end - kReplacement.size(), kReplacement.size()) ==
             kReplacement) {
    end -= kReplacement.size();
  }
  if (end <= emitted_) return "";
  std::string piece = text.substr(emitted_, end - emitted_);
  emitted_ = end;
  return piece;
}

std::string StreamDecoder::Finish() {
  const std::string text = tokenizer_.Decode(ids_, skip_special_);
  if (emitted_ >= text.size()) return "";
  std::string rest = ReplaceInvalidUtf8(text.substr(emitted_));
  emitted_ = text.size();
  return rest;
}

}  // namespace shardlm
