#include "kernels/cpu.h"

#include <atomic>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace shardlm {
namespace {

#if defined(__x86_64__)
// F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c".
bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}

// "AuthenticAMD" and CPUID leaf 1's family (base + extended when the base is 0xF) is 0x19.
bool IsAmdFamily19h() {
  unsigned max_leaf = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &max_leaf, &ebx, &ecx, &edx) == 0) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  unsigned eax = 0;
  if (std::strcmp(vendor, "AuthenticAMD") != 0 || __get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) {
    return false;
  }
  const unsigned base = (eax >> 8) & 0xf, extended = (eax >> 20) & 0xff;
  return (base == 0xf ? base + extended : base) == 0x19;
}
#endif

CpuFeatures Detect() {
  CpuFeatures cpu;
#if defined(__x86_64__)
  __builtin_cpu_init();
  cpu.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
  cpu.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
  cpu.avx512_bf16 = cpu.avx512 && __builtin_cpu_supports("avx512bf16");
  cpu.avx512_vnni = cpu.avx512 && __builtin_cpu_supports("avx512vnni");
  cpu.avx_vnni = cpu.avx2_fma && __builtin_cpu_supports("avxvnni");
  cpu.amd_family_19h = IsAmdFamily19h();
#endif
  return cpu;
}

}  // namespace

const CpuFeatures& Cpu() {
  static const CpuFeatures cpu = Detect();
  return cpu;
}

namespace {
std::atomic<StreamPrefetch>& StreamPrefetchSetting() {
  static std::atomic<StreamPrefetch> setting{Cpu().amd_family_19h ? StreamPrefetch::kFar
                                                                  : StreamPrefetch::kNear};
  return setting;
}
}  // namespace

const char* StreamPrefetchName(StreamPrefetch prefetch) {
  return prefetch == StreamPrefetch::kFar ? "far" : "near";
}
std::optional<StreamPrefetch> ParseStreamPrefetch(std::string_view name) {
  for (const StreamPrefetch prefetch : {StreamPrefetch::kNear, StreamPrefetch::kFar}) {
    if (name == StreamPrefetchName(prefetch)) return prefetch;
  }
  return std::nullopt;
}
void SetStreamPrefetch(StreamPrefetch prefetch) {
  StreamPrefetchSetting().store(prefetch, std::memory_order_relaxed);
}
StreamPrefetch SelectedStreamPrefetch() {
  return StreamPrefetchSetting().load(std::memory_order_relaxed);
}

std::string CpuModelName() {
#if defined(__x86_64__)
  unsigned regs[12] = {};
  unsigned max_leaf = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0x80000000u, &max_leaf, &ebx, &ecx, &edx) != 0 && max_leaf >= 0x80000004u) {
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002u + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2],
                  &regs[4 * i + 3]);
    }
    char brand[49] = {};
    std::memcpy(brand, regs, 48);
    std::string name(brand);
    const size_t begin = name.find_first_not_of(' '), end = name.find_last_not_of(' ');
    if (begin != std::string::npos) return name.substr(begin, end - begin + 1);
  }
#endif
  return "unknown";
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return "portable";
    case Isa::kAvx2Fma:
      return "avx2+fma";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

bool IsaAvailable(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return true;
    case Isa::kAvx2Fma:
      return Cpu().avx2_fma;
    case Isa::kAvx512:
      return Cpu().avx512;
  }
  return false;
}

Isa BestIsa() {
  if (IsaAvailable(Isa::kAvx512)) return Isa::kAvx512;
  if (IsaAvailable(Isa::kAvx2Fma)) return Isa::kAvx2Fma;
  return Isa::kPortable;
}

std::vector<Isa> AvailableIsas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2Fma, Isa::kAvx512}) {
    if (IsaAvailable(isa)) isas.push_back(isa);
  }
  return isas;
}

}  // namespace shardlm
