#include "launch/flags.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "base/thread_pool.h"

namespace shardlm {

absl::StatusOr<Flags> Flags::Parse(const std::vector<std::string>& args,
                                   const std::vector<FlagSpec>& specs) {
  Flags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& s : specs) {
      if (s.name == name) spec = &s;
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (spec->takes_value && !inline_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    } else if (!spec->takes_value && inline_value) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " takes no value"));
    }
    if (flags.values_.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
    flags.values_[name] = value;
  }
  return flags;
}

absl::StatusOr<std::string> Flags::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("missing required flag --", name));
  }
  return it->second;
}

std::string Flags::String(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<int64_t> Flags::Int(const std::string& name, int64_t fallback, int64_t min,
                                   int64_t max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v) || v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be an integer in [", min,
                                                   ", ", max, "], got \"", it->second, "\""));
  }
  return v;
}

absl::StatusOr<int> Flags::Threads() const {
  auto it = values_.find("threads");
  if (it != values_.end() && it->second == "auto") return AutoComputeThreads();
  absl::StatusOr<int64_t> threads = Int("threads", 1, 1, 1024);
  if (!threads.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--threads must be an integer in [1, 1024] or auto, got \"", it->second, "\""));
  }
  return static_cast<int>(*threads);
}

absl::StatusOr<Bf16Math> Flags::Bf16MathMode() const {
  const std::string value = String("bf16-math", "exact");
  if (value == "exact") return Bf16Math::kExact;
  if (value != "dot") {
    return absl::InvalidArgumentError(
        absl::StrCat("--bf16-math must be exact or dot, got \"", value, "\""));
  }
  if (!Bf16MathAvailable(Bf16Math::kDot)) {
    return absl::FailedPreconditionError(
        "--bf16-math dot needs AVX512-BF16 (vdpbf16ps), which this CPU does not have");
  }
  return Bf16Math::kDot;
}

absl::StatusOr<bool> Flags::OnOff(const std::string& name, bool fallback) const {
  const std::string value = String(name, fallback ? "on" : "off");
  if (value == "on") return true;
  if (value == "off") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("--", name, " must be on or off, got \"", value, "\""));
}

absl::StatusOr<double> Flags::Double(const std::string& name, double fallback, double min,
                                     double max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second, &v) || !std::isfinite(v) || v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number in [", min, ", ",
                                                   max, "], got \"", it->second, "\""));
  }
  return v;
}

std::string FlagsHelp(const std::vector<FlagSpec>& specs) {
  std::string out;
  for (const FlagSpec& s : specs) {
    absl::StrAppend(&out, absl::StrFormat("  --%-22s %s\n",
                                          s.takes_value ? s.name + " V" : s.name, s.help));
  }
  return out;
}

}  // namespace shardlm
