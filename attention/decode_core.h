// The decode core shared by the fast attention paths (GQA, GTA, latent): a
// ragged batch of query tokens over a paged cache, computed flash-decoding style
// (chunks of positions merged by log-sum-exp). Each family only says where its
// key and value parts sit in a cache row (RowLayout) and where its queries are
// (DecodeQueries). Internal to attention/; the public API is attention.h.
#ifndef SHARDLM_ATTENTION_DECODE_CORE_H_
#define SHARDLM_ATTENTION_DECODE_CORE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include "attention/decode_kernels.h"
#include "attention/kv_cache.h"
#include "base/status.h"
#include "kernels/cpu.h"

namespace shardlm::attention_internal {

// Positions per chunk. A sequence's range [Lo(window), pos] is cut at every
// multiple of kChunk *positions* (never at page boundaries), each chunk yields a
// normalized partial output and its log-sum-exp, and the partials are merged
// with MergeLse in chunk order (DESIGN §4). Chunks are the unit of work handed to
// the compute threads, so one long sequence still occupies every thread; since
// the cuts depend only on positions, a query's result does not depend on page
// size, page placement, batch composition or thread count.
inline constexpr int64_t kChunk = 512;

// Where a family's keys and values sit inside one cache row, for each of
// `groups` KV (or latent) groups. The score of a query (qa, qb) of group j is
//   scale · (qa · row[a_off + j·a_step, +a_len) + qb · row[b_off + j·b_step, +b_len))
// and its value is row[v_off + j·v_step, +v_len). The b part may be empty
// (b_len 0) or shared by all groups (b_step 0: the RoPE key of GTA and latent
// attention); the value may overlap the key parts (GTA, latent: one state is both).
struct RowLayout {
  int64_t groups = 1;
  int64_t a_off = 0;
  int64_t a_len = 0;
  int64_t a_step = 0;
  int64_t b_off = 0;
  int64_t b_len = 0;
  int64_t b_step = 0;
  int64_t v_off = 0;
  int64_t v_len = 0;
  int64_t v_step = 0;
};

// The queries of a batch: query head i = j·g + h (head h of group j) of token t
// has score parts qa + t·qa_token + i·qa_head (a_len floats) and
// qb + t·qb_token + i·qb_head (b_len floats; unused when b_len is 0).
struct DecodeQueries {
  int64_t g = 0;  // query heads per group
  const float* qa = nullptr;
  int64_t qa_token = 0;
  int64_t qa_head = 0;
  const float* qb = nullptr;
  int64_t qb_token = 0;
  int64_t qb_head = 0;
};

// For every token t and query head i writes out + t·out_token + i·out_head
// (v_len floats): Σ_p softmax_p(score) · value_p over p in [Lo(window), pos].
// Work items are (token, chunk), run in parallel on the compute pool; each
// streams its rows block by block, every row fetched once for all heads of all
// groups (contiguous reads within a page), with online softmax inside the chunk;
// multi-chunk tokens are then merged with MergeLse in chunk order. fp32
// throughout; dot products and weighted sums use AVX-512, or AVX2 + FMA, when the CPU has it.
// CHECKs that every page a range touches is in the block table and the pool.
// out must not overlap the cache or the queries.
void DecodeAttention(const CacheView& cache, std::span<const QueryToken> tokens, int64_t window,
                     const RowLayout& layout, float scale, const DecodeQueries& queries, float* out,
                     int64_t out_token, int64_t out_head);

// Which inner kernels DecodeAttention uses: the best at or below `isa` that exists
// (AVX-512, AVX2 + FMA or portable) and the CPU runs. By default BestIsa(); tests compare
// levels.
// Not thread-safe; set before decoding.
void SetDecodeIsa(Isa isa);

// Grows every compute thread's per-item scratch for calls with up to h_q query heads in
// `groups` groups, values of v_len floats and q_len query floats per head (a_len + b_len), so
// that decode steps do not allocate (call at start-up).
void DecodeAttentionReserve(int64_t h_q, int64_t v_len, int64_t groups, int64_t q_len);
const char* DecodeIsaName();

// Calls f(first_row, t0, n) for each maximal run of consecutive positions
// [t0, t0 + n) within [first, last] that share a page; row i of a run is
// first_row + i·row_bytes. Page ids are CHECKed once per run, not per row.
template <typename F>
void ForEachRun(const CacheView& cache, std::span<const int32_t> block_table, int64_t first,
                int64_t last, F&& f) {
  int64_t t = first;
  while (t <= last) {
    const int64_t block = t / cache.page_size;
    const int64_t offset = t % cache.page_size;
    const int64_t n = std::min(cache.page_size - offset, last - t + 1);
    CHECK_LT(block, static_cast<int64_t>(block_table.size()));
    const int64_t page = block_table[block];
    CHECK_MSG(page >= 0 && page < cache.num_pages, "page ", page, " of ", cache.num_pages);
    f(cache.Page(page) + offset * cache.row_bytes, t, n);
    t += n;
  }
}

// Eight floats as one value, via the GCC/Clang vector extension: arithmetic on it
// lowers to AVX/AVX-512/NEON or to scalar code without ISA-specific intrinsics.
// Vec8 is passed only by reference: by value it would change the ABI between
// builds with and without AVX (-Wpsabi).
typedef float Vec8 __attribute__((vector_size(32)));
inline void LoadVec8(const float* p, Vec8& v) { std::memcpy(&v, p, sizeof(v)); }  // unaligned
inline void StoreVec8(float* p, const Vec8& v) { std::memcpy(p, &v, sizeof(v)); }
// acc += a[0, 8) ⊙ b[0, 8)
inline void MulAdd8(const float* a, const float* b, Vec8& acc) {
  Vec8 x, y;
  LoadVec8(a, x);
  LoadVec8(b, y);
  acc += x * y;
}
// acc += w · x[0, 8)
inline void ScaleAdd8(float w, const float* x, Vec8& acc) {
  Vec8 v;
  LoadVec8(x, v);
  acc += w * v;
}

// fp32 dot product. A plain `s += a[i] * b[i]` loop is one serial dependency
// chain (without -ffast-math the compiler may not reorder float additions), and
// an array of partial sums is vectorized poorly by GCC (~4 floats/ns at n = 128
// vs ~20 here). So the partial sums are four explicit Vec8s, which also hide the
// FMA latency. The summation order is fixed (deterministic run to run), with an
// error chain of about n/32 + 6 additions.
inline float Dot(const float* a, const float* b, int64_t n) {
  Vec8 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    MulAdd8(a + i, b + i, acc0);
    MulAdd8(a + i + 8, b + i + 8, acc1);
    MulAdd8(a + i + 16, b + i + 16, acc2);
    MulAdd8(a + i + 24, b + i + 24, acc3);
  }
  for (; i + 8 <= n; i += 8) MulAdd8(a + i, b + i, acc0);
  const Vec8 acc = (acc0 + acc1) + (acc2 + acc3);
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y[0, n) += Σ_{i < count} w[i] · rows[i][0, n): the weighted sum of `count` rows. Blocked
// over 32 columns so that each block's partial sums stay in registers for all rows (one load
// and store of y per block, not per row); per element the additions run in row order, as a
// plain loop would do them. y must not overlap the rows.
inline void AddWeightedRows(const float* w, const float* const* rows, int64_t count, int64_t n,
                            float* y) {
  Vec8 y0, y1, y2, y3;
  int64_t b = 0;
  for (; b + 32 <= n; b += 32) {
    LoadVec8(y + b, y0);
    LoadVec8(y + b + 8, y1);
    LoadVec8(y + b + 16, y2);
    LoadVec8(y + b + 24, y3);
    for (int64_t i = 0; i < count; ++i) {
      const float* r = rows[i] + b;
      ScaleAdd8(w[i], r, y0);
      ScaleAdd8(w[i], r + 8, y1);
      ScaleAdd8(w[i], r + 16, y2);
      ScaleAdd8(w[i], r + 24, y3);
    }
    StoreVec8(y + b, y0);
    StoreVec8(y + b + 8, y1);
    StoreVec8(y + b + 16, y2);
    StoreVec8(y + b + 24, y3);
  }
  for (; b + 8 <= n; b += 8) {
    LoadVec8(y + b, y0);
    for (int64_t i = 0; i < count; ++i) ScaleAdd8(w[i], rows[i] + b, y0);
    StoreVec8(y + b, y0);
  }
  for (; b < n; ++b) {
    float y_b = y[b];
    for (int64_t i = 0; i < count; ++i) y_b += w[i] * rows[i][b];
    y[b] = y_b;
  }
}

// Checks shared by the three families for one query token: the block table covers
// rows 0..pos (per-row lookups only DCHECK).
inline void CheckToken(const CacheView& cache, const QueryToken& token) {
  CHECK_GE(token.pos, 0);
  CHECK_MSG(token.pos / cache.page_size < static_cast<int64_t>(token.block_table.size()),
            "position ", token.pos, " needs page ", token.pos / cache.page_size,
            " but the block table has ", token.block_table.size());
}

}  // namespace shardlm::attention_internal

#endif  // SHARDLM_ATTENTION_DECODE_CORE_H_
