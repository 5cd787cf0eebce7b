#include "attention/decode_core.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/attention.h"
#include "base/thread_pool.h"
#include "kernels/cpu.h"

namespace shardlm::attention_internal {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------
// Portable kernels (decode_kernels.h): per (row, head) one fp32 dot product per
// score part, the GCC vector extension for the weighted sum of values.

// Values [off, off + len) of a row as fp32: the row itself for f32, else widened (and, for
// int8, multiplied by segment `seg`'s scale) into `dst`, which then holds len floats.
template <KvDType D>
const float* RowPart(const unsigned char* row, int64_t off, int64_t len, int64_t scale_off,
                     int64_t seg, float* dst) {
  if constexpr (D == KvDType::kF32) {
    return reinterpret_cast<const float*>(row) + off;
  } else {
    const float s = D == KvDType::kInt8 ? KvRowFormat::Scale(row, scale_off, seg) : 1.0f;
    KvRowFormat::Decode(D, row, off, len, s, dst);
    return dst;
  }
}

// Scratch for widened row parts, at least `floats` long (f32 rows need none).
template <KvDType D>
float* PartScratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (D != KvDType::kF32 && static_cast<int64_t>(buf.size()) < floats) {
    buf.resize(static_cast<size_t>(floats));
  }
  return buf.data();
}

// Row by row, each row's parts widened once for all g heads (and read from L1 by all of them).
template <KvDType D>
void ScoresPortable(const ScoreArgs& a) {
  float* buf = PartScratch<D>(a.a_len + a.b_len);
  for (int64_t r = 0; r < a.nb; ++r) {
    const float* ra = RowPart<D>(a.rows[r], a.a_off, a.a_len, a.scale_off, a.a_seg, buf);
    const float* rb =
        a.b_len > 0 ? RowPart<D>(a.rows[r], a.b_off, a.b_len, a.scale_off, a.b_seg, buf + a.a_len)
                    : nullptr;
    for (int64_t h = 0; h < a.g; ++h) {
      float s = Dot(a.qa + h * a.qa_head, ra, a.a_len);
      if (a.b_len > 0) s += Dot(a.qb + h * a.qb_head, rb, a.b_len);
      a.scores[h * a.block + r] = s;
    }
  }
}

// The block's value parts are widened once for all heads; each head's sums then take them
// with AddWeightedRows (in registers 32 columns at a time over all rows), each element's
// additions in row order after the rescale, as ValueArgs says.
template <KvDType D>
void ValuesPortable(const ValueArgs& a) {
  float* buf = PartScratch<D>(a.nb * a.v_len);
  const float* v[kLongBlock];
  CHECK_LE(a.nb, kLongBlock);
  for (int64_t r = 0; r < a.nb; ++r) {
    v[r] = RowPart<D>(a.rows[r], a.v_off, a.v_len, a.scale_off, a.v_seg, buf + r * a.v_len);
  }
  for (int64_t h = 0; h < a.g; ++h) {
    float* acc = a.acc + h * a.acc_head;
    const float alpha = a.alpha[h];
    for (int64_t c = 0; c < a.v_len; ++c) acc[c] *= alpha;
    AddWeightedRows(a.p + h * a.block, v, a.nb, a.v_len, acc);
  }
}

// The scalar online-softmax step, numerators with std::exp.
void SoftmaxPortable(const SoftmaxArgs& a) {
  for (int64_t h = 0; h < a.g; ++h) {
    float* sc = a.scores + h * a.block;
    float m = a.max[h];
    for (int64_t r = 0; r < a.nb; ++r) {
      sc[r] *= a.scale;
      m = std::max(m, sc[r]);
    }
    a.alpha[h] = a.max[h] == kNegInf ? 0.0f : std::exp(a.max[h] - m);
    float block_sum = 0.0f;
    for (int64_t r = 0; r < a.nb; ++r) {
      sc[r] = std::exp(sc[r] - m);
      block_sum += sc[r];
    }
    a.sum[h] = a.sum[h] * a.alpha[h] + block_sum;
    a.max[h] = m;
  }
}

void ExpPortable(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

// The best kernel set at or below `isa` that exists and the CPU runs.
DecodeKernels KernelsAtOrBelow(Isa isa) {
  if (isa == Isa::kAvx512 && Cpu().avx512) return Avx512Kernels();
  if (isa != Isa::kPortable && Cpu().avx2_fma) return Avx2Kernels();
  return PortableKernels();
}

DecodeKernels& ActiveKernels() {
  static DecodeKernels kernels = KernelsAtOrBelow(BestIsa());
  return kernels;
}

// ---------------------------------------------------------------------------
// Scratch.

// Per-thread state of one work item: the running softmax of every query head of
// the token over the chunk. Grows to the largest shape seen, then is reused, so
// steady-state decode does not allocate.
struct ItemScratch {
  // [kChunk + kLongBlock]: row pointers of the chunk, then of the next item's first block
  std::vector<const unsigned char*> rows;
  std::vector<float> acc;     // [h_q, v_len]: Σ e^(s − m) · value
  std::vector<float> max;     // [h_q]: running max m of the scores
  std::vector<float> sum;     // [h_q]: Σ e^(s − m)
  std::vector<float> scores;  // [h_q, block ≤ kLongBlock]: scores, then numerators
  std::vector<float> alpha;   // [h_q]: e^(m_old − m_new) of the current block
  // The token's queries rearranged: [groups, a_len + b_len, g rounded up to 16] with the heads
  // in lanes (ScoreArgs::qt), or [groups, g / 4, a_len + b_len, 4] in quads (ScoreArgs::qq).
  std::vector<float> qt;
  // The DecodeAttention call and token whose queries `qt` holds (call 0: none). A thread's
  // items are mostly consecutive chunks of one token, which then rearrange its queries once.
  uint64_t qt_call = 0;
  int64_t qt_token = -1;

  void Reserve(int64_t h_q, int64_t v_len, int64_t qt_floats) {
    if (rows.size() < static_cast<size_t>(kChunk + kLongBlock)) rows.resize(kChunk + kLongBlock);
    Grow(acc, h_q * v_len);
    Grow(max, h_q);
    Grow(sum, h_q);
    Grow(scores, h_q * kLongBlock);
    Grow(alpha, h_q);
    if (static_cast<int64_t>(qt.size()) < qt_floats) qt_call = 0;
    Grow(qt, qt_floats);
  }
  static void Grow(std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  }
};

ItemScratch& ThreadItemScratch() {
  thread_local ItemScratch scratch;
  return scratch;
}

// Per-call state, owned by the calling thread and shared (read-only structure,
// disjoint writes) with the pool's workers.
struct CallScratch {
  std::vector<int64_t> first_chunk;  // [tokens]: index of the token's first chunk
  std::vector<int64_t> item_begin;   // [tokens + 1]: first work item of each token
  std::vector<int64_t> part_begin;   // [tokens]: offset of the token's partials, or −1
  std::vector<float> parts;          // per multi-chunk token: [h_q, chunks, v_len]
  std::vector<float> lses;           // per multi-chunk token: [h_q, chunks]
};

CallScratch& ThreadCallScratch() {
  thread_local CallScratch scratch;
  return scratch;
}

// Touches the lines of bytes [0, len) of p so they are on their way from memory: into L1, or
// into L2 when `l2` (StreamPrefetch::kFar, kernels/cpu.h: on a Zen 4 core the L1 prefetches
// of the next block left GQA at 42–44% of the page-order probe at 8k, the L2 ones 62–66%). The
// empty volatile asm is a side effect: GCC counts prefetches as none, so without it the IPA
// pass could mark a caller `const` and delete its calls (it did: no prefetch at all was in the
// binary; `objdump -d … | grep prefetch` now finds them).
inline void PrefetchRange(const unsigned char* p, int64_t len, bool l2) {
  constexpr int64_t kLine = 64;
  if (l2) {
    for (int64_t i = 0; i < len; i += kLine) __builtin_prefetch(p + i, 0, 2);
    if (len > 0) __builtin_prefetch(p + len - 1, 0, 2);
  } else {
    for (int64_t i = 0; i < len; i += kLine) __builtin_prefetch(p + i);
    if (len > 0) __builtin_prefetch(p + len - 1);
  }
  asm volatile("");
}

// Query heads per group from which the scores are computed with the heads in lanes
// (DecodeKernels::lane_scores), where the kernel set has them. Below it the lane-sum tiles
// stay: a group of 8 heads would leave half of each lane vector idle.
constexpr int64_t kMinLaneHeads = 16;

int64_t RoundUp16(int64_t n) { return (n + 15) / 16 * 16; }

// Floats of ItemScratch::qt for `groups` groups of g heads with q_len query floats each (0
// where the lane scores are not used).
int64_t LaneQueryFloats(int64_t groups, int64_t g, int64_t q_len) {
  return g >= kMinLaneHeads ? groups * RoundUp16(g) * q_len : 0;
}

// The same for the queries in quads of heads (ScoreArgs::qq): a group's whole quads.
int64_t QuadQueryFloats(int64_t groups, int64_t g, int64_t q_len) {
  return groups * (g / 4 * 4) * q_len;
}

// Group j's queries in quads (ScoreArgs::qq): for heads 4m … 4m + 3, qq[4m·q_len + 16k + 4h +
// i] is element 4k + i of head 4m + h's query (a part, then b part).
void QuadQueries(const float* qa, int64_t qa_head, int64_t a_len, const float* qb, int64_t qb_head,
                 int64_t b_len, int64_t g, float* qq) {
  const int64_t q_len = a_len + b_len;
  for (int64_t m = 0; m < g / 4; ++m) {
    float* dst = qq + 4 * m * q_len;
    for (int64_t h = 0; h < 4; ++h) {
      const float* a = qa + (4 * m + h) * qa_head;
      for (int64_t e = 0; e < a_len; ++e) dst[16 * (e / 4) + 4 * h + e % 4] = a[e];
      const float* b = qb != nullptr ? qb + (4 * m + h) * qb_head : nullptr;
      for (int64_t e = 0; e < b_len; ++e) dst[16 * ((a_len + e) / 4) + 4 * h + e % 4] = b[e];
    }
  }
}

// Rows per score call: the block's rows are scored this many at a time for every group
// before the next rows (see RunChunk); 4 is the AVX-512 score tile's height.
constexpr int64_t kScoreRows = 4;

static_assert(kChunk % kLongBlock == 0, "chunks are cut between blocks");

struct Problem {
  const CacheView* cache;
  const RowLayout* layout;
  const DecodeQueries* queries;
  float scale;
  int64_t h_q;
  uint64_t call;  // distinct for every DecodeAttention call (ItemScratch::qt_call)
};

// The work item a thread runs next, whose first rows RunChunk prefetches during its own last
// block (token == nullptr: none).
struct NextItem {
  const QueryToken* token = nullptr;
  int64_t c_lo = 0, c_hi = -1;
};

// One work item: token `t`, positions [c_lo, c_hi] (one chunk). Writes each head's
// normalized output to dst + i·dst_head and, when lse != nullptr, its log-sum-exp
// to lse[i·lse_head].
void RunChunk(const Problem& pb, const QueryToken& token, int64_t t, int64_t c_lo, int64_t c_hi,
              const NextItem& next_item, float* dst, int64_t dst_head, float* lse,
              int64_t lse_head) {
  const CacheView& cache = *pb.cache;
  const RowLayout& lay = *pb.layout;
  const DecodeQueries& q = *pb.queries;
  const DecodeKernels& kernels = ActiveKernels();
  const bool l2 = SelectedStreamPrefetch() == StreamPrefetch::kFar;  // PrefetchRange
  const int64_t g = q.g;
  const int64_t v_len = lay.v_len;
  ItemScratch& s = ThreadItemScratch();
  // Whether a group's value lies outside its key parts (GQA) rather than being one of
  // them (GTA, latent attention): that decides the order of the block's passes.
  const int64_t a0 = lay.a_off, v0 = lay.v_off;
  const bool rows_first = v0 + v_len <= a0 || v0 >= a0 + lay.a_len;
  // Whether the value has lines the score pass does not read (GTA's: its state past the
  // unrotated half); the value pass then requests them for the next block.
  const bool value_past_key = v0 < a0 || v0 + v_len > a0 + lay.a_len;
  // Scores with the heads in lanes: where a group has many heads, and the block's passes run
  // group by group (in the rows-first order a score call has only kScoreRows rows).
  const bool lanes = !rows_first && g >= kMinLaneHeads &&
                     kernels.lane_scores[static_cast<int>(cache.dtype())] != nullptr;
  // Otherwise, in the rows-first order, the quads of heads where the kernel set takes them
  // (DecodeKernels::quad_scores). Measured on a Zen 4 core (attention_bench, f32, one thread,
  // alternated in two sittings): GQA-4 at 16 × 8k 63.1–64.2 ms against 67.4–73.3, at 1 × 8k
  // 3.86–3.92 against 3.99–4.11; but GTA-4, whose group-order score pass meets its rows first
  // with more FMAs per byte, 40.0–41.5 against 38.7–39.3 ms at 16 × 8k. A quad's FMA takes a
  // broadcast load (`vbroadcastf32x4`), and those issue at about 0.74 a cycle on that core
  // (as do `vbroadcastss` and lane shuffles) against 1 FMA with a plain or embedded load.
  const bool quads = rows_first && g >= 4 && lay.a_len % 4 == 0 && lay.b_len % 4 == 0 &&
                     kernels.quad_scores[static_cast<int>(cache.dtype())];
  const int64_t q_len = lay.a_len + lay.b_len;
  const int64_t qt_stride = RoundUp16(g);
  const int64_t group_floats = lanes   ? LaneQueryFloats(1, g, q_len)
                               : quads ? QuadQueryFloats(1, g, q_len)
                                       : 0;
  s.Reserve(pb.h_q, v_len, lay.groups * group_floats);

  const int64_t len = c_hi - c_lo + 1;
  const unsigned char** rows = s.rows.data();
  // The row pointers of positions [lo, hi] of `tok`, from dst on.
  const auto gather_rows = [&](const QueryToken& tok, int64_t lo, int64_t hi,
                               const unsigned char** dst) {
    ForEachRun(cache, tok.block_table, lo, hi,
               [&](const unsigned char* row, int64_t t0, int64_t n) {
                 for (int64_t i = 0; i < n; ++i) dst[t0 - lo + i] = row + i * cache.row_bytes;
               });
  };
  gather_rows(token, c_lo, c_hi, rows);
  // Whole-block prefetches run a block ahead, so the last block would fetch nothing and the
  // next item's first block would start cold (at context 256, one of its 8 blocks): the
  // prefetch loops below run on past `len` into the next item's first rows.
  int64_t ahead_len = len;
  if (next_item.token != nullptr) {
    const int64_t n = std::min(kLongBlock, next_item.c_hi - next_item.c_lo + 1);
    gather_rows(*next_item.token, next_item.c_lo, next_item.c_lo + n - 1, rows + len);
    ahead_len += n;
  }
  // The rows' format, and for int8 where each group's parts find their scales (a part is one
  // segment of the row: a head, a latent head, the RoPE key).
  const KvDType dtype = cache.dtype();
  const int kind = static_cast<int>(dtype);
  const KvRowFormat* fmt = dtype == KvDType::kInt8 ? cache.format : nullptr;
  const int64_t scale_off = fmt != nullptr ? fmt->scale_offset : 0;
  auto seg = [&](int64_t first) { return fmt != nullptr ? fmt->SegmentOf(first) : 0; };
  std::fill_n(s.acc.data(), pb.h_q * v_len, 0.0f);
  std::fill_n(s.max.data(), pb.h_q, kNegInf);
  std::fill_n(s.sum.data(), pb.h_q, 0.0f);

  const float* qa_t = q.qa + t * q.qa_token;
  const float* qb_t = q.qb != nullptr ? q.qb + t * q.qb_token : nullptr;
  if ((lanes || quads) && (s.qt_call != pb.call || s.qt_token != t)) {
    s.qt_call = pb.call;
    s.qt_token = t;
    for (int64_t j = 0; j < lay.groups; ++j) {
      const float* qa_j = qa_t + j * g * q.qa_head;
      const float* qb_j = qb_t != nullptr ? qb_t + j * g * q.qb_head : nullptr;
      if (lanes) {
        TransposeQueries(qa_j, q.qa_head, lay.a_len, qb_j, q.qb_head, lay.b_len, g, qt_stride,
                         s.qt.data() + j * group_floats);
      } else {
        QuadQueries(qa_j, q.qa_head, lay.a_len, qb_j, q.qb_head, lay.b_len, g,
                    s.qt.data() + j * group_floats);
      }
    }
  }
  // Blocks [b_lo, b_hi] relative to c_lo, cut at multiples of `block` positions.
  const int64_t block = BlockLength(rows_first, lanes, cache.row_bytes, g, v_len);
  for (int64_t b_lo = 0; b_lo < len;) {
    const int64_t b_hi = std::min(len - 1, ((c_lo + b_lo) / block + 1) * block - 1 - c_lo);
    const int64_t nb = b_hi - b_lo + 1;
    // In the group-by-group order (not rows_first) the kernels request the next block's rows
    // themselves, each line beside the same line of this block (RowsAhead): a group's parts of
    // consecutive rows are short runs a row apart, which the hardware prefetchers do not follow.
    // Until session 19 they were requested here, in one burst per group before its score call
    // (a 4 KB row's 8 lines, 16 rows); spread over the arithmetic instead, at 16 × 8k, one
    // thread, GTA f32 took 37.5–39 ms against 51–53, bf16 37.5 against 42.5, int8 41 against
    // 44 (at two threads 20 against 27), and the latent families with the heads in lanes GLA
    // 55.5 against 67, MLA 104 against 111.
    const RowsAhead ahead{rows + b_hi + 1, std::clamp<int64_t>(ahead_len - b_hi - 1, 0, block),
                          !l2};
    // Scores of group j for rows [r0, r0 + n) of the block.
    auto score = [&](int64_t j, int64_t r0, int64_t n) {
      const int64_t head0 = j * g;
      ScoreArgs sa;
      sa.rows = rows + b_lo + r0;
      sa.nb = n;
      sa.a_off = lay.a_off + j * lay.a_step;
      sa.a_len = lay.a_len;
      sa.b_off = lay.b_off + j * lay.b_step;
      sa.b_len = lay.b_len;
      sa.scale_off = scale_off;
      sa.a_seg = seg(sa.a_off);
      sa.b_seg = lay.b_len > 0 ? seg(sa.b_off) : 0;
      sa.qa = qa_t + head0 * q.qa_head;
      sa.qa_head = q.qa_head;
      sa.qb = qb_t != nullptr ? qb_t + head0 * q.qb_head : nullptr;
      sa.qb_head = q.qb_head;
      sa.g = g;
      sa.scores = s.scores.data() + head0 * block + r0;
      sa.block = block;
      if (!rows_first) sa.ahead = ahead;
      if (lanes) {
        sa.qt = s.qt.data() + j * group_floats;
        sa.qt_stride = qt_stride;
        kernels.lane_scores[kind](sa);
      } else {
        if (quads) sa.qq = s.qt.data() + j * group_floats;
        kernels.scores[kind](sa);
      }
    };
    // Each (row, head) dot product is the same arithmetic in any tiling and order, so
    // the two orders below give the same bits.
    if (rows_first) {
      // Values apart from keys (GQA): score every group, kScoreRows rows at a time with
      // the groups inner, so the block is read in address order (rows are contiguous in
      // a page, a group's parts at increasing offsets), a stream the hardware
      // prefetchers follow; the value pass then finds the rows in cache.
      //
      // The prefetchers stop at the page's end, though, and a block is at most a page: the
      // next block's rows are fetched meanwhile, the same rows one block on, a 1/groups
      // slice of each beside each group's score call (so the prefetches are spread over
      // the block's arithmetic). At 8k context (attention_bench's shapes, one thread) the
      // step took 39% less time with int8 rows, 22% less with bf16, 8–10% less with f32;
      // the whole rows at once (no slices) made bf16 12% slower and int8 only 16% faster.
      const int64_t slice = (cache.row_bytes + lay.groups - 1) / lay.groups;
      for (int64_t r0 = 0; r0 < nb; r0 += kScoreRows) {
        const int64_t next = std::min(ahead_len, b_lo + r0 + block);
        const int64_t next_end = std::min(ahead_len, next + kScoreRows);
        for (int64_t j = 0; j < lay.groups; ++j) {
          const int64_t from = j * slice, bytes = std::min(slice, cache.row_bytes - from);
          for (int64_t r = next; r < next_end && bytes > 0; ++r) {
            PrefetchRange(rows[r] + from, bytes, l2);
          }
          score(j, r0, std::min(kScoreRows, nb - r0));
        }
      }
    }
    for (int64_t j = 0; j < lay.groups; ++j) {
      const int64_t head0 = j * g;
      // The value is the key (GTA's tied state, a latent): score the group, and its value
      // pass re-reads the same lines while they are still in L1. Meanwhile the group's
      // parts of the next block's rows are requested (`ahead`).
      if (!rows_first) score(j, 0, nb);
      SoftmaxArgs sm;
      sm.scores = s.scores.data() + head0 * block;
      sm.block = block;
      sm.nb = nb;
      sm.g = g;
      sm.scale = pb.scale;
      sm.max = s.max.data() + head0;
      sm.sum = s.sum.data() + head0;
      sm.alpha = s.alpha.data() + head0;
      kernels.softmax(sm);

      ValueArgs va;
      va.rows = rows + b_lo;
      va.nb = nb;
      va.v_off = lay.v_off + j * lay.v_step;
      va.v_len = v_len;
      va.scale_off = scale_off;
      va.v_seg = seg(va.v_off);
      va.p = s.scores.data() + head0 * block;
      va.block = block;
      va.alpha = s.alpha.data() + head0;
      va.g = g;
      va.acc = s.acc.data() + head0 * v_len;
      va.acc_head = v_len;
      va.values_cached = !rows_first;
      if (!rows_first && value_past_key) va.ahead = ahead;
      kernels.values[kind](va);
    }
    b_lo = b_hi + 1;
  }

  for (int64_t i = 0; i < pb.h_q; ++i) {
    // The sum is ≥ 1 (its largest term is e^0), so the inverse and log are finite.
    const float inv = 1.0f / s.sum[i];
    const float* acc = s.acc.data() + i * v_len;
    float* d = dst + i * dst_head;
    for (int64_t c = 0; c < v_len; ++c) d[c] = acc[c] * inv;
    if (lse != nullptr) lse[i * lse_head] = s.max[i] + std::log(s.sum[i]);
  }
}

}  // namespace

DecodeKernels ActiveDecodeKernels() { return ActiveKernels(); }

// Group j's queries with the heads in lanes (ScoreArgs::qt): qt[k·stride + h] for the g heads,
// zero in the lanes past them. In 16 × 16 tiles, so that the reads and the writes each stay
// within 16 lines at a time. Once per chunk it took about 4% of an MLA step at 16 × 8k (perf);
// once per token and thread (RunChunk), RunChunk with it took under 3% (measured when it was
// inlined there; it is now also attention_bench --kernels' transpose, so called out of line).
void TransposeQueries(const float* qa, int64_t qa_head, int64_t a_len, const float* qb,
                      int64_t qb_head, int64_t b_len, int64_t g, int64_t stride, float* qt) {
  const auto part = [&](const float* q, int64_t q_head, int64_t len, float* dst) {
    for (int64_t k0 = 0; k0 < len; k0 += 16) {
      const int64_t k1 = std::min(len, k0 + 16);
      for (int64_t h0 = 0; h0 < g; h0 += 16) {
        const int64_t h1 = std::min(g, h0 + 16);
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t k = k0; k < k1; ++k) dst[k * stride + h] = q[h * q_head + k];
        }
      }
      for (int64_t k = k0; k < k1; ++k) {
        std::fill(dst + k * stride + g, dst + (k + 1) * stride, 0.0f);
      }
    }
  };
  part(qa, qa_head, a_len, qt);
  part(qb, qb_head, b_len, qt + a_len * stride);
}

// Positions per block. Each block loads, rescales and stores every running sum once and takes
// one softmax step per head, so a longer block halves that work; but its rows must still be
// in cache when the value pass reads them again. Measured at 8k context, one thread, 32 rows
// against 16 alternated call by call (BENCHMARKS, session 14):
// - Values apart from keys (rows_first: GQA, MHA, MQA): the value pass finds the block's rows
//   in L2 while the next block's are fetched. GQA 1–9% and MQA 3–5% faster; MHA f32, whose
//   32 rows are 1 MiB, 24% slower. Long blocks while two of them fit in half of a 1 MiB L2.
// - The value is the key (GTA, latent): the value pass re-reads a group's parts from L1 right
//   after scoring them. Long blocks pay where the running sums outgrow half of L1: MLA's 32
//   heads × 512 floats (64 KB) took 4–9% less time. GTA f32 and bf16 were 12–28% slower.
// - Scores with the heads in lanes (`lanes`: the latent families' 16 and more heads per group,
//   session 19): a block's rows are read once for all heads, and long blocks took GLA f32 from
//   70 to 65 ms (16 sequences of 8k, one thread; 16 heads × 256 floats of running sums).
int64_t BlockLength(bool rows_first, bool lanes, int64_t row_bytes, int64_t g, int64_t v_len) {
  constexpr int64_t kL1Half = 24 << 10, kL2Half = 512 << 10;  // bytes
  const bool longer = rows_first
                          ? 2 * kLongBlock * row_bytes <= kL2Half
                          : lanes || g * v_len * static_cast<int64_t>(sizeof(float)) > kL1Half;
  return longer ? kLongBlock : kBlock;
}
DecodeKernels PortableKernels() {
  return {{&ScoresPortable<KvDType::kF32>, &ScoresPortable<KvDType::kBF16>,
           &ScoresPortable<KvDType::kInt8>},
          {nullptr, nullptr, nullptr},
          {false, false, false},
          &SoftmaxPortable,
          {&ValuesPortable<KvDType::kF32>, &ValuesPortable<KvDType::kBF16>,
           &ValuesPortable<KvDType::kInt8>},
          &ExpPortable,
          "portable"};
}

void SetDecodeIsa(Isa isa) { ActiveKernels() = KernelsAtOrBelow(isa); }

void DecodeAttentionReserve(int64_t h_q, int64_t v_len, int64_t groups, int64_t q_len) {
  const int64_t qt_floats = std::max(LaneQueryFloats(groups, h_q / groups, q_len),
                                     QuadQueryFloats(groups, h_q / groups, q_len));
  OnEveryComputeThread(
      [h_q, v_len, qt_floats] { ThreadItemScratch().Reserve(h_q, v_len, qt_floats); });
}

const char* DecodeIsaName() { return ActiveKernels().name; }

void DecodeAttention(const CacheView& cache, std::span<const QueryToken> tokens, int64_t window,
                     const RowLayout& layout, float scale, const DecodeQueries& queries, float* out,
                     int64_t out_token, int64_t out_head) {
  CHECK_GT(queries.g, 0);
  CHECK_GT(layout.groups, 0);
  const int64_t num_tokens = static_cast<int64_t>(tokens.size());
  const int64_t h_q = layout.groups * queries.g;
  const int64_t v_len = layout.v_len;
  static std::atomic<uint64_t> calls{0};
  const Problem pb{&cache, &layout, &queries, scale, h_q, ++calls};

  // Work items: every chunk of every token, tokens in order.
  CallScratch& cs = ThreadCallScratch();
  cs.first_chunk.resize(static_cast<size_t>(num_tokens));
  cs.item_begin.resize(static_cast<size_t>(num_tokens + 1));
  cs.part_begin.resize(static_cast<size_t>(num_tokens));
  int64_t items = 0, part_floats = 0, lse_floats = 0;
  for (int64_t t = 0; t < num_tokens; ++t) {
    CheckToken(cache, tokens[t]);
    const int64_t first = tokens[t].Lo(window) / kChunk;
    const int64_t chunks = tokens[t].pos / kChunk - first + 1;
    cs.first_chunk[t] = first;
    cs.item_begin[t] = items;
    items += chunks;
    cs.part_begin[t] = -1;
    if (chunks > 1) {
      cs.part_begin[t] = part_floats;
      part_floats += h_q * chunks * v_len;
      lse_floats += h_q * chunks;
    }
  }
  cs.item_begin[num_tokens] = items;
  if (static_cast<int64_t>(cs.parts.size()) < part_floats) cs.parts.resize(part_floats);
  if (static_cast<int64_t>(cs.lses.size()) < lse_floats) cs.lses.resize(lse_floats);

  // Positions [c_lo, c_hi] of chunk c of token t.
  const auto bounds = [&](int64_t t, int64_t c) {
    return std::pair{std::max(tokens[t].Lo(window), (cs.first_chunk[t] + c) * kChunk),
                     std::min(tokens[t].pos, (cs.first_chunk[t] + c + 1) * kChunk - 1)};
  };
  // Each item writes only its own slots, so the schedule cannot change a bit.
  ParallelFor(items, 1, [&](int64_t begin, int64_t end) {
    int64_t t = std::upper_bound(cs.item_begin.begin(), cs.item_begin.end(), begin) -
                cs.item_begin.begin() - 1;
    for (int64_t item = begin; item < end; ++item) {
      while (item >= cs.item_begin[t + 1]) ++t;
      const QueryToken& token = tokens[t];
      const int64_t c = item - cs.item_begin[t];  // chunk index within the token
      const int64_t chunks = cs.item_begin[t + 1] - cs.item_begin[t];
      const auto [c_lo, c_hi] = bounds(t, c);
      NextItem next;
      if (item + 1 < end) {
        const int64_t nt = item + 1 < cs.item_begin[t + 1] ? t : t + 1;
        next.token = &tokens[nt];
        std::tie(next.c_lo, next.c_hi) = bounds(nt, item + 1 - cs.item_begin[nt]);
      }
      if (chunks == 1) {
        RunChunk(pb, token, t, c_lo, c_hi, next, out + t * out_token, out_head, nullptr, 0);
      } else {
        const int64_t lse_base = cs.part_begin[t] / v_len;  // [h_q, chunks] per token
        RunChunk(pb, token, t, c_lo, c_hi, next, cs.parts.data() + cs.part_begin[t] + c * v_len,
                 chunks * v_len, cs.lses.data() + lse_base + c, chunks);
      }
    }
  });

  // Merge the chunks of long tokens, per head in chunk order.
  ParallelFor(num_tokens * h_q, 1, [&](int64_t begin, int64_t end) {
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / h_q, i = th % h_q;
      if (cs.part_begin[t] < 0) continue;
      const int64_t chunks = cs.item_begin[t + 1] - cs.item_begin[t];
      const float* parts = cs.parts.data() + cs.part_begin[t] + i * chunks * v_len;
      const float* lses = cs.lses.data() + cs.part_begin[t] / v_len + i * chunks;
      MergeLse(std::span<const float>(parts, static_cast<size_t>(chunks * v_len)),
               std::span<const float>(lses, static_cast<size_t>(chunks)), v_len,
               out + t * out_token + i * out_head);
    }
  });
}

}  // namespace shardlm::attention_internal
