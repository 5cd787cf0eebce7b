// Command-line flags of the `shardlm` subcommands: `--name value`, `--name=value`
// and boolean `--name`. Unknown flags and bad values are errors naming the flag.
#ifndef SHARDLM_LAUNCH_FLAGS_H_
#define SHARDLM_LAUNCH_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/matmul.h"

namespace shardlm {

struct FlagSpec {
  std::string name;  // without the leading dashes
  bool takes_value = true;
  std::string help;
};

class Flags {
 public:
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  absl::StatusOr<std::string> Required(const std::string& name) const;
  std::string String(const std::string& name, const std::string& fallback) const;
  // Integer in [min, max], or `fallback` when absent.
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t fallback, int64_t min,
                              int64_t max) const;
  absl::StatusOr<double> Double(const std::string& name, double fallback, double min,
                                double max) const;
  bool Bool(const std::string& name) const { return Has(name); }
  // --name on|off; `fallback` when absent.
  absl::StatusOr<bool> OnOff(const std::string& name, bool fallback) const;
  // --threads: an integer in [1, 1024], or "auto" (AutoComputeThreads); 1 when absent.
  absl::StatusOr<int> Threads() const;
  // --bf16-math: "exact" (kExact, the default) or "dot" (kDot, kernels/matmul.h); "dot" is an
  // error on a CPU without AVX512-BF16. Decides per rank: callers agree on the status.
  absl::StatusOr<Bf16Math> Bf16MathMode() const;

 private:
  std::map<std::string, std::string> values_;
};

// "  --name VALUE   help" lines for a usage message.
std::string FlagsHelp(const std::vector<FlagSpec>& specs);

}  // namespace shardlm

#endif  // SHARDLM_LAUNCH_FLAGS_H_
