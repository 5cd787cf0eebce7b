// Inner kernels of DecodeAttention (decode_core.h) for one block of up to kBlock (or
// kLongBlock) rows and one group of g query heads, in three builds: AVX-512
// (decode_kernels_x86.cc, function target attributes, used when kernels/cpu.h reports
// AVX-512F/BW/VL), AVX2 + FMA (decode_kernels_avx2.cc, the same way, where the CPU has AVX2 but
// not AVX-512) and portable (decode_core.cc, GCC vector extension). Each build is deterministic
// on its own: a fixed summation order that does not depend on where the rows come from.
#ifndef SHARDLM_ATTENTION_DECODE_KERNELS_H_
#define SHARDLM_ATTENTION_DECODE_KERNELS_H_

#include <cstdint>

namespace shardlm::attention_internal {

// Positions per block inside a chunk (see decode_core.h): the rows of a block are
// read once from memory for all query heads, and the running softmax state is
// rescaled once per block. Blocks are aligned to multiples of their length: kBlock
// positions, or kLongBlock where the running sums outgrow L1 (decode_core.cc: BlockLength).
// Each kernel takes the length as `block`, the stride of its [g, block] scores.
inline constexpr int64_t kBlock = 16;
inline constexpr int64_t kLongBlock = 32;

// Rows a kernel requests from memory while it reads its own: rows[r] beside the kernel's row r
// (r < n), the same parts of them, one request per line. They are the next block's rows, so each
// line is asked for about a block before it is read, and the requests are spread over the
// block's arithmetic. Into L2, or into L1 where `l1` (StreamPrefetch::kNear, kernels/cpu.h).
struct RowsAhead {
  const unsigned char* const* rows = nullptr;
  int64_t n = 0;
  bool l1 = false;
};

// Rows are in the cache's format (attention/kv_cache.h: KvRowFormat), offsets and lengths
// count values. A kernel reads the stored type directly: f32, bf16 (widened exactly), or
// int8, each value multiplied by its segment's scale (one fp32 rounding) as it is loaded.
//
// scores[h·block + r] = qa_h · rows[r][a_off, +a_len) + qb_h · rows[r][b_off, +b_len)
// for h < g, r < nb, where qa_h = qa + h·qa_head and qb_h = qb + h·qb_head. The two
// parts may share partial sums. Unscaled (by the softmax scale).
struct ScoreArgs {
  const unsigned char* const* rows = nullptr;  // [nb] row pointers
  int64_t nb = 0;
  int64_t a_off = 0, a_len = 0, b_off = 0, b_len = 0;
  // int8: the scales of the a and b parts are floats a_seg and b_seg at row + scale_off.
  int64_t scale_off = 0, a_seg = 0, b_seg = 0;
  const float* qa = nullptr;
  int64_t qa_head = 0;
  const float* qb = nullptr;
  int64_t qb_head = 0;
  int64_t g = 0;
  float* scores = nullptr;  // [g, block]
  int64_t block = kBlock;
  // The same queries with the heads in lanes, for DecodeKernels::lane_scores: qt[k·qt_stride +
  // h] is element k of qa_h for k < a_len and element k − a_len of qb_h after it; qt_stride ≥ g
  // is a multiple of 16 and the lanes [g, qt_stride) are zero.
  const float* qt = nullptr;
  int64_t qt_stride = 0;
  // The same queries in quads of heads, for a `scores` kernel with DecodeKernels::quad_scores
  // (null: none; only where a_len and b_len are multiples of 4): for heads 4m … 4m + 3,
  // qq[4m·(a_len + b_len) + 16k + 4h + j] is element 4k + j of head 4m + h's query, the a
  // part's elements first, then the b part's. Heads past the last whole quad come from qa, qb.
  const float* qq = nullptr;
  RowsAhead ahead;  // their a and b parts (and an int8 row's scales)
};

// acc_h[c] = alpha[h] · acc_h[c] + Σ_{r < nb} p[h·block + r] · rows[r][v_off + c] for
// h < g, c < v_len, with acc_h = acc + h·acc_head; the sum runs in row order after
// the rescale.
struct ValueArgs {
  const unsigned char* const* rows = nullptr;  // [nb] row pointers
  int64_t nb = 0;
  int64_t v_off = 0, v_len = 0;
  int64_t scale_off = 0, v_seg = 0;  // int8: the value part's scale, as in ScoreArgs
  const float* p = nullptr;      // [g, block] softmax numerators
  int64_t block = kBlock;
  const float* alpha = nullptr;  // [g] rescale of the running sums
  int64_t g = 0;
  float* acc = nullptr;
  int64_t acc_head = 0;
  // The score pass has just read these values (they are the key: GTA, latent attention), so
  // they are in L1; else they come from L2 or memory (GQA). Picks the tile width only.
  bool values_cached = false;
  RowsAhead ahead;  // their value parts (and an int8 row's scales)
};

// Online-softmax step of one block for g heads. In: scores[h·block + r] (r < nb ≤ block)
// unscaled dot products, max[h] the running max m (−inf before the first block),
// sum[h] the running Σ e^(s − m). Out: scores[h·block + r] = e^(scale·score − m'),
// the numerators against the new max m' = max(m, max_r scale·score) (the largest
// is exactly 1), alpha[h] = e^(m − m') (0 when m = −inf), max[h] = m',
// sum[h] = alpha[h]·sum[h] + Σ_r numerators.
struct SoftmaxArgs {
  float* scores = nullptr;  // [g, block]
  int64_t block = kBlock;
  int64_t nb = 0;
  int64_t g = 0;
  float scale = 0.0f;
  float* max = nullptr;    // [g]
  float* sum = nullptr;    // [g]
  float* alpha = nullptr;  // [g]
};

struct DecodeKernels {
  // By the rows' KvDType (kv_cache.h), in its order: f32, bf16, int8.
  void (*scores[3])(const ScoreArgs&);
  // The same scores computed with the heads in lanes, from ScoreArgs::qt (null where the build
  // has none): each score is one chain of multiply-adds in element order, a then b, so its bits
  // differ from `scores`' but depend on nothing but its own row and query. For many heads per
  // group (the latent families), where every row element is broadcast once for 16 heads and no
  // lane sums are left to reduce; see decode_core.cc: kMinLaneHeads.
  void (*lane_scores[3])(const ScoreArgs&);
  // Whether scores[kind] takes the heads' quads from ScoreArgs::qq where it is given: each
  // quad's scores then come from vectors of 4 heads × 4 elements, each score its lanes' own
  // sums (two chains of FMAs, then a 4-lane tree: decode_kernels_x86.cc, QuadScoreTile), whose
  // bits differ from the lane-sum tiles' but depend on nothing but its own row and query.
  bool quad_scores[3];
  void (*softmax)(const SoftmaxArgs&);
  void (*values[3])(const ValueArgs&);
  // y[i] = e^x[i], the exp the softmax uses (exposed for its accuracy test).
  void (*exp)(const float* x, int64_t n, float* y);
  const char* name;
};

// Relative error bound of DecodeKernels::exp over the inputs softmax gives it
// (x ≤ 0, results above the fp32 normal range), in units of u = 2^-24: std::exp
// is correctly rounded or nearly so (≤ 1); the AVX-512 polynomial is ≤ 4 (see
// decode_kernels_x86.cc; the AVX2 build's gives the same bits), which the derived test bounds
// use.
inline constexpr double kExpUlps = 4.0;

// The scale of segment `seg` of an int8 row: KvRowFormat::Scale with the builtin memcpy, for
// the SIMD builds, where only intrinsics and plain arithmetic may be inlined into the
// functions with target attributes (decode_kernels_x86.cc, top).
inline float RowScale(const unsigned char* row, int64_t scale_off, int64_t seg) {
  float s;
  __builtin_memcpy(&s, row + scale_off + seg * 4, sizeof(s));
  return s;
}

DecodeKernels PortableKernels();
// AVX-512 kernels; only call when Cpu().avx512 (kernels/cpu.h). On a build for
// another architecture they are the portable ones.
DecodeKernels Avx512Kernels();
// AVX2 + FMA scores (lane scores too; no quad scores), softmax, values and exp; only call when
// Cpu().avx2_fma. On a build for another architecture they are the portable ones.
DecodeKernels Avx2Kernels();

// The set DecodeAttention uses (decode_core.h: SetDecodeIsa; by default the best the CPU runs).
DecodeKernels ActiveDecodeKernels();
// The rows per block DecodeAttention takes (kBlock or kLongBlock) for a group of g heads whose
// values (v_len floats) are scored first for all rows (`rows_first`: GQA) or read right after
// their scores, with the heads in lanes or not, rows of row_bytes (decode_core.cc).
int64_t BlockLength(bool rows_first, bool lanes, int64_t row_bytes, int64_t g, int64_t v_len);
// The queries of g heads (qa_h = qa + h·qa_head, qb_h likewise) with the heads in lanes, as
// ScoreArgs::qt wants them: qt[k·stride + h], zero in the lanes [g, stride).
void TransposeQueries(const float* qa, int64_t qa_head, int64_t a_len, const float* qb,
                      int64_t qb_head, int64_t b_len, int64_t g, int64_t stride, float* qt);

}  // namespace shardlm::attention_internal

#endif  // SHARDLM_ATTENTION_DECODE_KERNELS_H_
