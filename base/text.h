// Byte-level text checks shared by the parsers of untrusted input (safetensors
// headers, config.json, request lines) and by the writers of JSON output.
#ifndef SHARDLM_BASE_TEXT_H_
#define SHARDLM_BASE_TEXT_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace shardlm {

// Length (1–4) of the well-formed UTF-8 sequence starting at s[i], or 0 when
// the bytes there are not one: a stray continuation byte, a truncated
// sequence, an overlong form, a surrogate or a code point past U+10FFFF.
size_t Utf8SequenceLength(std::string_view s, size_t i);

bool IsValidUtf8(std::string_view s);

// `s` with every byte that does not start a valid UTF-8 sequence replaced by
// U+FFFD: JSON strings (and protobuf's JSON printer) need valid UTF-8.
std::string ReplaceInvalidUtf8(std::string_view s);

// Checks that JSON text nests objects and arrays at most `max_depth` deep and
// never closes more than it opened, without parsing it. protobuf's JSON parser
// takes time quadratic in the depth, so untrusted input is checked first.
// Strings follow protobuf's parser: quoted by '"' or '\'', with '\\' escapes.
absl::Status CheckJsonNesting(std::string_view json, int max_depth);

// Hostile names can be huge or binary: `s` C-escaped, and shortened to its first
// `max_len` bytes with its length noted when longer. For error messages.
std::string Printable(std::string_view s, size_t max_len = 120);

}  // namespace shardlm

#endif  // SHARDLM_BASE_TEXT_H_
