// Checks inside fuzz targets. A failed check prints what broke and aborts, which
// libFuzzer reports as a crash (and saves the input) and a replay test as a
// failure. Unlike CHECK in library code, these state the contract of a parser
// as seen from outside, so they stay on in every build.
#ifndef SHARDLM_FUZZ_FUZZ_CHECK_H_
#define SHARDLM_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <string>

namespace shardlm {

[[noreturn]] inline void FuzzCheckFailed(const char* file, int line, const char* condition,
                                         const std::string& detail) {
  std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n  %s\n", file, line, condition,
               detail.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace shardlm

// FUZZ_CHECK(condition, detail): `detail` is any expression yielding a string,
// evaluated only on failure.
#define FUZZ_CHECK(condition, detail)                                                       \
  do {                                                                                      \
    if (!(condition)) ::shardlm::FuzzCheckFailed(__FILE__, __LINE__, #condition, (detail)); \
  } while (false)

#endif  // SHARDLM_FUZZ_FUZZ_CHECK_H_
