// Compute-only probes of one core's arithmetic peak for each matmul path (issue 16: "the
// measured peak of the path used, a compute-only loop of the same instructions"). Each probe
// is a register-only loop of a kernel's arithmetic in the kernel's own proportions, with
// enough independent chains to hide the latencies; `matmul_bench` and `shardlm bench` time
// them beside the kernels and divide a call's (or a step's) arithmetic by the rates.
//
// The quantized kernels' probe is not vpdpbusd alone. Per 16 blocks of one (x row, weight
// row) pair they run 8 vpdpbusd and then the contract's fold (kernels/matmul.h): one
// int32→f32 conversion, the product of the two scales and one FMA. On a Zen 4 core the
// multiply and the FMA issue to the same two pipes as vpdpbusd (measured with register-only
// loops: 16 vpdpbusd + 4 FMAs took 20 cycles, + 4 more multiplies 24; conversions, shifts
// and ANDs beside them cost nothing), so the fold caps any tile at 8/10 of the vpdpbusd-only
// rate. kQuantFold measures that ceiling; kDot keeps the vpdpbusd-only rate for comparison.
#ifndef SHARDLM_KERNELS_PEAK_PROBE_H_
#define SHARDLM_KERNELS_PEAK_PROBE_H_

namespace shardlm {

enum class PeakProbe {
  kFma,        // 16-lane f32 FMAs: the F32, F16 and exact BF16 paths (16 multiply-adds each)
               // and the BF16 dot path's vdpbf16ps (32 each, at the same rate on the CPUs seen)
  kDot,        // vpdpbusd alone (64 byte products each)
  kQuantFold,  // vpdpbusd with the quantized kernels' fold: 8 vpdpbusd, then cvtdq2ps, vmulps
               // and vfmadd231ps, per (x row, weight row) pair and 16 blocks
};

// Whether this CPU runs a form of the probe: the AVX-512 one (AVX512-VNNI for the other two),
// else the AVX2 kernels' (ymm FMAs; vpmaddubsw-based dots, or AVX-VNNI's vpdpbusd on ymm),
// counted in the AVX-512 instructions' units (a ymm FMA is half a 16-lane FMA, 32 byte
// products half a vpdpbusd), so every bound divides by one rate.
bool HavePeakProbe(PeakProbe probe);
// Runs the probe once on the calling thread: PeakProbeCount(probe) of its counted instruction
// (FMAs for kFma, vpdpbusd for the other two). Does nothing when !HavePeakProbe(probe).
void RunPeakProbe(PeakProbe probe);
double PeakProbeCount(PeakProbe probe);

// The probe's rate in counted instructions per ns over the compute pool's threads (each runs
// it once at the same time), best of `reps` timed runs after a warm-up; 0 when absent.
double MeasurePeakRate(PeakProbe probe, int reps);

}  // namespace shardlm

#endif  // SHARDLM_KERNELS_PEAK_PROBE_H_
