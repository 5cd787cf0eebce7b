// Status plumbing for boundaries (files, configs, MPI) and CHECKs for kernels.
#ifndef SHARDLM_BASE_STATUS_H_
#define SHARDLM_BASE_STATUS_H_

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#define SHARDLM_CONCAT_INNER(a, b) a##b
#define SHARDLM_CONCAT(a, b) SHARDLM_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status shardlm_status_ = (expr);           \
    if (!shardlm_status_.ok()) return shardlm_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MaybeX());` declares x or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  SHARDLM_ASSIGN_OR_RETURN_IMPL(SHARDLM_CONCAT(shardlm_sor_, __LINE__), lhs, expr)
#define SHARDLM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

namespace shardlm::internal {
[[noreturn]] inline void CheckFailed(const char* file, int line, const char* cond,
                                     const std::string& msg) {
  std::fprintf(stderr, "shardlm: CHECK failed at %s:%d: %s %s\n", file, line, cond,
               msg.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace shardlm::internal

// Invariants inside kernels: a failed CHECK is a bug, not a user error.
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) ::shardlm::internal::CheckFailed(__FILE__, __LINE__, #cond, ""); \
  } while (0)
#define CHECK_MSG(cond, ...)                                                \
  do {                                                                      \
    if (!(cond))                                                            \
      ::shardlm::internal::CheckFailed(__FILE__, __LINE__, #cond,           \
                                       ::absl::StrCat(__VA_ARGS__));        \
  } while (0)
#define CHECK_EQ(a, b) CHECK_MSG((a) == (b), (a), " vs ", (b))
#define CHECK_LE(a, b) CHECK_MSG((a) <= (b), (a), " vs ", (b))
#define CHECK_LT(a, b) CHECK_MSG((a) < (b), (a), " vs ", (b))
#define CHECK_GE(a, b) CHECK_MSG((a) >= (b), (a), " vs ", (b))
#define CHECK_GT(a, b) CHECK_MSG((a) > (b), (a), " vs ", (b))
#ifdef NDEBUG
#define DCHECK(cond) \
  do {               \
  } while (0)
#else
#define DCHECK(cond) CHECK(cond)
#endif

#endif  // SHARDLM_BASE_STATUS_H_
