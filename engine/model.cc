#include "engine/model.h"

#include <algorithm>
#include <chrono>

#include "base/status.h"
#include "engine/config.h"
#include "engine/dump.h"
#include "kernels/matmul.h"

namespace shardlm {

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& model_dir, int rank,
                                                   int size, AttentionSplit attention) {
  ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(model_dir));
  ASSIGN_OR_RETURN(ModelDims dims, ResolveDims(config, model_dir + "/config.json"));
  ASSIGN_OR_RETURN(ShardPlan plan, PlanShard(dims, rank, size, attention));
  ASSIGN_OR_RETURN(auto dir, SafetensorsDir::Open(model_dir));
  ASSIGN_OR_RETURN(ModelWeights weights, LoadWeights(*dir, dims, plan));
  return std::unique_ptr<Model>(new Model(std::move(dims), plan, std::move(weights)));
}

Model::Model(ModelDims dims, ShardPlan plan, ModelWeights weights)
    : dims_(std::move(dims)), plan_(plan), weights_(std::move(weights)),
      attention_(AttentionFamily::Of(dims_.type).MakeBlock(dims_, plan_)) {}

void Model::Reserve(int64_t max_tokens) {
  // The widest input of any linear layer bounds every call's row length.
  const int64_t widest = std::max({dims_.hidden, dims_.intermediate, dims_.q_lora_rank,
                                   dims_.num_heads * std::max(dims_.QkHeadDim(), dims_.VHeadDim())});
  SkinnyMatMulReserve(max_tokens, widest);
  attention_->Reserve();
}

absl::Status Model::Forward(const ForwardBatch& batch, PagedKvCache& cache, Comm& comm,
                            std::vector<float>* logits) {
  const int64_t n = static_cast<int64_t>(batch.token_ids.size()), d = dims_.hidden;
  CHECK_EQ(static_cast<int64_t>(batch.slots.size()), n);
  float* x = Scratch(x_, n * d);              // [n, d] residual stream
  float* xn = Scratch(xn_, n * d);            // [n, d] normalized input of a block
  float* partial = Scratch(partial_, n * d);  // [n, d] this rank's partial sum
  const int64_t mlp = plan_.mlp_cols.size();
  float* gate = Scratch(gate_, n * mlp);      // [n, mlp_l]
  float* up = Scratch(up_, n * mlp);          // [n, mlp_l]

  // Vocab-parallel embedding: each rank fills the rows of the tokens in its vocab slice, zeros
  // elsewhere, and the all-reduce sums them (one non-zero term per element: exact).
  const Linear& table = weights_.embedding();
  const Range own = plan_.vocab_rows;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = batch.token_ids[t];
    CHECK(id >= 0 && id < dims_.vocab);
    if (id >= own.begin && id < own.end) {
      table.WidenRow(id - own.begin, x + t * d);
    } else {
      std::fill_n(x + t * d, d, 0.0f);
    }
  }
  if (comm.size() > 1) RETURN_IF_ERROR(AllReduce(x, n * d, comm));
  for (int64_t l = 0; l < dims_.layers; ++l) {
    const LayerWeights& w = weights_.layers[l];
    // h = x + Attn(RMSNorm(x)): each rank's heads give a partial o_proj sum.
    RmsNorm(x, n, d, d, w.attn_norm.data(), dims_.rms_eps, xn);
    SHARDLM_DUMP(plan_.rank, stats_.forwards, l, "attn_norm", xn, n, d);
    if (plan_.data_parallel_attention()) {
      AttendOwnedRows(*w.attn, xn, batch, cache.Layer(l), partial);
    } else {
      attention_->Forward(*w.attn, xn, batch.slots, cache.Layer(l), partial);
    }
    RETURN_IF_ERROR(AllReduce(partial, n * d, comm));
    SHARDLM_DUMP(plan_.rank, stats_.forwards, l, "attn_out", partial, n, d);
    for (int64_t i = 0; i < n * d; ++i) x[i] += partial[i];
    // x' = h + down(silu(gate(h̃)) ⊙ up(h̃)): each rank's columns give a partial sum.
    RmsNorm(x, n, d, d, w.mlp_norm.data(), dims_.rms_eps, xn);
    ApplyLinear(xn, n, w.gate, gate);
    ApplyLinear(xn, n, w.up, up);
    SiluMul(gate, up, n * mlp);
    ApplyLinear(gate, n, w.down, partial);
    RETURN_IF_ERROR(AllReduce(partial, n * d, comm));
    SHARDLM_DUMP(plan_.rank, stats_.forwards, l, "mlp_out", partial, n, d);
    for (int64_t i = 0; i < n * d; ++i) x[i] += partial[i];
  }
  // Final norm of the rows that need logits only.
  const int64_t m = static_cast<int64_t>(batch.logit_rows.size());
  float* head_in = Scratch(head_in_, m * d);  // [m, d]
  for (int64_t i = 0; i < m; ++i) {
    const int32_t row = batch.logit_rows[i];
    CHECK(row >= 0 && row < n);
    RmsNorm(x + row * d, 1, d, d, weights_.final_norm.data(), dims_.rms_eps, head_in + i * d);
  }
  ++stats_.forwards;
  return GatherLogits(head_in, m, comm, logits);
}

void Model::AttendOwnedRows(const AttentionWeights& w, const float* xn, const ForwardBatch& batch,
                            const CacheView& cache, float* out) {
  const int64_t n = static_cast<int64_t>(batch.token_ids.size()), d = dims_.hidden;
  const int64_t k = static_cast<int64_t>(batch.attention_rows.size());
  std::fill_n(out, n * d, 0.0f);
  if (k == 0) return;
  float* in = Scratch(owned_in_, k * d);
  float* attended = Scratch(owned_out_, k * d);
  owned_slots_.clear();
  for (int64_t i = 0; i < k; ++i) {
    const int32_t row = batch.attention_rows[i];
    CHECK(row >= 0 && row < n);
    std::copy_n(xn + row * d, d, in + i * d);
    owned_slots_.push_back(batch.slots[row]);
  }
  attention_->Forward(w, in, owned_slots_, cache, attended);
  for (int64_t i = 0; i < k; ++i) {
    std::copy_n(attended + i * d, d, out + batch.attention_rows[i] * d);
  }
}

absl::Status Model::AllReduce(float* partial, int64_t count, Comm& comm) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = comm.AllReduceSum({partial, static_cast<size_t>(count)});
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                         std::chrono::steady_clock::now() - start)
                         .count();
  stats_.allreduce_ns += ns;
  if (stats_.record_allreduce_calls) stats_.allreduce_call_ns.push_back(ns);
  ++stats_.allreduce_calls;
  stats_.allreduce_bytes += count * static_cast<int64_t>(sizeof(float));
  return status;
}

absl::Status Model::GatherLogits(const float* hidden, int64_t m, Comm& comm,
                                 std::vector<float>* logits) {
  const int64_t vocab_local = plan_.vocab_rows.size();
  float* local = Scratch(local_logits_, m * vocab_local);  // [m, vocab_l]
  ApplyLinear(hidden, m, weights_.lm_head, local);
  std::vector<int>& counts = gather_counts_;
  const auto gather_start = std::chrono::steady_clock::now();
  absl::Status gathered =
      comm.Gatherv({local, static_cast<size_t>(m * vocab_local)}, 0, &gathered_, &counts);
  stats_.gather_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - gather_start).count();
  RETURN_IF_ERROR(gathered);
  logits->clear();
  if (comm.rank() != 0) return absl::OkStatus();
  // gathered_ holds rank r's [m, vocab_r] block after those of ranks < r.
  logits->resize(static_cast<size_t>(m * dims_.vocab));
  const float* block = gathered_.data();
  for (int r = 0; r < comm.size(); ++r) {
    const Range rows = BalancedRange(dims_.vocab, comm.size(), r);
    CHECK_EQ(counts[r], m * rows.size());
    for (int64_t i = 0; i < m; ++i) {
      std::copy_n(block + i * rows.size(), rows.size(), logits->data() + i * dims_.vocab + rows.begin);
    }
    block += m * rows.size();
  }
  return absl::OkStatus();
}

}  // namespace shardlm
