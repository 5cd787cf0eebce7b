// What the CPU can run, detected once per process from CPUID, and the instruction-set
// levels every kernel dispatches on (the matmul in kernels/, decode attention in
// attention/). The SIMD kernels are compiled with function-level target attributes, so
// they exist, and are picked at run time, even in a build without -march=native.
#ifndef SHARDLM_KERNELS_CPU_H_
#define SHARDLM_KERNELS_CPU_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shardlm {

struct CpuFeatures {
  bool avx2_fma = false;     // AVX2 + FMA + F16C
  bool avx512 = false;       // AVX-512 F, BW and VL
  bool avx512_bf16 = false;  // avx512 and AVX512-BF16 (vdpbf16ps)
  bool avx512_vnni = false;  // avx512 and AVX512-VNNI (vpdpbusd on zmm)
  bool avx_vnni = false;     // avx2_fma and AVX-VNNI (VEX vpdpbusd on ymm)
  // AMD family 19h: Zen 3 (no AVX-512) and Zen 4 (AVX-512). Picks StreamPrefetch::kFar.
  bool amd_family_19h = false;
};
// Detected on first call (x86-64: CPUID; elsewhere: nothing).
const CpuFeatures& Cpu();
// The CPU's brand string (CPUID leaves 0x80000002–4), e.g. "AMD EPYC 9R45", for benchmark
// records; "unknown" where CPUID has none.
std::string CpuModelName();

// How far ahead the kernels prefetch what they stream from memory: the matmul its weights
// (kernels/matmul*), decode attention the cache rows of its next block
// (attention/decode_core.cc). Process-wide; results do not depend on it. The figures are in
// docs/BENCHMARKS.md ("Weights from memory on a Zen 4 core").
enum class StreamPrefetch {
  // Into L1. The matmul: the next chunk (K block of the tile's rows), and with several row
  // blocks per chunk also into L2 two chunks ahead. Measured on Zen 5 cores, where the matmul
  // streamed W at 94–103% of a plain read at n = 1. The default on every CPU but Zen 3 and 4.
  kNear,
  // Into L2, where it is far from DRAM. The matmul's float kernels: kNear's prefetches at
  // several row blocks, and at one row block (n up to the tile's rows: 4 on AVX-512) into L2
  // only, four chunks ahead; its quantized kernels: also into L2 four K blocks ahead, beside
  // L1's next one. Decode attention: the same lines as kNear, into L2. On a Zen 4 core L1
  // alone keeps too few misses in flight for the DRAM latency: there the batch-1 decode step
  // of a d 1024, 24-layer model took 31–47% less time than with kNear (F32, BF16, Q8_0 and
  // Q4_0 weights), and decode attention at 8k 8–45% less (GQA, GTA, GLA; MLA unchanged). On a
  // Zen 3 core (AVX2 kernels) the paper-m batch-1 step took 0.90 of kNear's time with F32 and
  // BF16 weights (F32 at 94–95% of the probe), 0.96 with Q8_0, the same with Q4_0 and at
  // batch 16; decode attention the same either way.
  kFar,
};
const char* StreamPrefetchName(StreamPrefetch prefetch);  // "near", "far"
// The setting StreamPrefetchName gives `name`, or nullopt for any other text (flags).
std::optional<StreamPrefetch> ParseStreamPrefetch(std::string_view name);
// Selects the prefetch for every later call (benchmarks and tests compare both); set it
// before decoding starts.
void SetStreamPrefetch(StreamPrefetch prefetch);
StreamPrefetch SelectedStreamPrefetch();  // kFar on AMD family 19h (Zen 3, 4), else kNear

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
