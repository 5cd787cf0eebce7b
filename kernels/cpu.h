// What the CPU can run, detected once per process from CPUID, and the instruction-set
// levels every kernel dispatches on (the matmul in kernels/, decode attention in
// attention/). The SIMD kernels are compiled with function-level target attributes, so
// they exist, and are picked at run time, even in a build without -march=native.
#ifndef SHARDLM_KERNELS_CPU_H_
#define SHARDLM_KERNELS_CPU_H_

#include <string>
#include <vector>

namespace shardlm {

struct CpuFeatures {
  bool avx2_fma = false;     // AVX2 + FMA + F16C
  bool avx512 = false;       // AVX-512 F, BW and VL
  bool avx512_bf16 = false;  // avx512 and AVX512-BF16 (vdpbf16ps)
  bool avx512_vnni = false;  // avx512 and AVX512-VNNI (vpdpbusd on zmm)
  bool avx_vnni = false;     // avx2_fma and AVX-VNNI (VEX vpdpbusd on ymm)
  // AMD family 19h with AVX-512, i.e. Zen 4 (Zen 3, the same family, has none): tunes how
  // far ahead the matmul prefetches its weights (kernels/matmul.h, WeightPrefetch).
  bool amd_zen4 = false;
};
// Detected on first call (x86-64: CPUID; elsewhere: nothing).
const CpuFeatures& Cpu();
// The CPU's brand string (CPUID leaves 0x80000002–4), e.g. "AMD EPYC 9R45", for benchmark
// records; "unknown" where CPUID has none.
std::string CpuModelName();

// Instruction-set levels of the kernels, lowest first. A kernel family implements some of
// them; asked for a level it lacks, it runs the best one it has below it.
enum class Isa {
  kPortable,  // plain C++ (GCC vector extensions)
  kAvx2Fma,   // 256-bit FMA
  kAvx512,    // 512-bit FMA with masked tails
};
const char* IsaName(Isa isa);      // "portable", "avx2+fma", "avx512"
bool IsaAvailable(Isa isa);        // the CPU runs it
Isa BestIsa();                     // the highest available level
std::vector<Isa> AvailableIsas();  // every available level, portable first

}  // namespace shardlm

#endif  // SHARDLM_KERNELS_CPU_H_
