#include "engine/weights.h"

#include <cmath>

#include "absl/strings/str_join.h"
#include "base/status.h"

namespace shardlm {

std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

std::vector<TensorSpec> CheckpointTensors(const ModelDims& dims) {
  const int64_t d = dims.hidden, h_q = dims.num_heads, kv = dims.num_kv_heads;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {dims.vocab, d}, false});
  for (int64_t i = 0; i < dims.layers; ++i) {
    const std::string p = LayerPrefix(i), a = p + "self_attn.";
    specs.push_back({p + "input_layernorm.weight", {d}, false});
    specs.push_back({p + "post_attention_layernorm.weight", {d}, false});
    switch (dims.type) {
      case AttentionType::kMha:
      case AttentionType::kMqa:
      case AttentionType::kGqa:
        specs.push_back({a + "q_proj", {h_q * dims.head_dim, d}, true});
        specs.push_back({a + "k_proj", {kv * dims.head_dim, d}, true});
        specs.push_back({a + "v_proj", {kv * dims.head_dim, d}, true});
        specs.push_back({a + "o_proj", {d, h_q * dims.head_dim}, true});
        break;
      case AttentionType::kGta:
        specs.push_back({a + "q_proj", {h_q * dims.head_dim, d}, true});
        specs.push_back({a + "kv_proj", {kv * dims.head_dim, d}, true});
        specs.push_back({a + "k_rope_proj", {dims.rope_dim, d}, true});
        specs.push_back({a + "o_proj", {d, h_q * dims.head_dim}, true});
        break;
      case AttentionType::kMla:
      case AttentionType::kGla: {
        const int64_t qk = dims.nope_dim + dims.rope_dim;
        if (dims.q_lora_rank > 0) {
          specs.push_back({a + "q_a_proj", {dims.q_lora_rank, d}, true});
          specs.push_back({a + "q_a_layernorm.weight", {dims.q_lora_rank}, false});
          specs.push_back({a + "q_b_proj", {h_q * qk, dims.q_lora_rank}, true});
        } else {
          specs.push_back({a + "q_proj", {h_q * qk, d}, true});
        }
        specs.push_back(
            {a + "kv_a_proj_with_mqa", {kv * dims.latent_dim + dims.rope_dim, d}, true});
        specs.push_back(
            {a + "kv_b_proj", {h_q * (dims.nope_dim + dims.v_head_dim), dims.latent_dim}, true});
        specs.push_back({a + "o_proj", {d, h_q * dims.v_head_dim}, true});
        break;
      }
    }
    specs.push_back({p + "mlp.gate_proj", {dims.intermediate, d}, true});
    specs.push_back({p + "mlp.up_proj", {dims.intermediate, d}, true});
    specs.push_back({p + "mlp.down_proj", {d, dims.intermediate}, true});
  }
  specs.push_back({"model.norm.weight", {d}, false});
  if (!dims.tie_word_embeddings) specs.push_back({"lm_head", {dims.vocab, d}, true});
  return specs;
}

int64_t ModelWeights::bytes() const {
  int64_t total = embed.bytes() + static_cast<int64_t>(final_norm.size() * sizeof(float)) +
                  lm_head.bytes();
  auto vec = [](const std::vector<float>& v) { return static_cast<int64_t>(v.size() * sizeof(float)); };
  for (const LayerWeights& l : layers) {
    const AttentionWeights& a = l.attn;
    total += vec(l.attn_norm) + vec(l.mlp_norm) + l.gate.bytes() + l.up.bytes() + l.down.bytes();
    total += a.q_proj.bytes() + a.q_a_proj.bytes() + vec(a.q_a_norm) + a.q_b_proj.bytes() +
             a.k_proj.bytes() + a.v_proj.bytes() + a.kv_proj.bytes() + a.k_rope_proj.bytes() +
             a.kv_a_proj.bytes() + vec(a.kv_a_norm) + a.kv_b_proj.bytes() + a.o_proj.bytes();
  }
  return total;
}

namespace {

// Reads the checkpoint for one rank, tensor by tensor.
class ShardLoader {
 public:
  explicit ShardLoader(SafetensorsDir& dir) : dir_(dir) {}

  // Rows of a linear `name` (.weight [rows_total, in], optional .bias [rows_total]),
  // concatenating the given row ranges in order. W keeps the checkpoint's dtype unless
  // `force_f32` (for weights that other code reads as floats).
  absl::StatusOr<Linear> Rows(const std::string& name, int64_t rows_total, int64_t in,
                              std::span<const Range> ranges, bool force_f32 = false) {
    Linear lin;
    lin.in = in;
    for (const Range& r : ranges) lin.out += r.size();
    int64_t row = 0;
    for (const Range& r : ranges) {
      RETURN_IF_ERROR(ReadWeight(name + ".weight", {rows_total, in}, r, Range{0, in}, force_f32,
                                 row, &lin));
      row += r.size();
    }
    if (dir_.Has(name + ".bias")) {
      lin.b.resize(static_cast<size_t>(lin.out));
      const std::vector<int64_t> bias_shape = {rows_total};
      float* b = lin.b.data();
      for (const Range& r : ranges) {
        // 1-D tensors read as [1, n]: the rows are columns of that view.
        RETURN_IF_ERROR(dir_.Read(name + ".bias", bias_shape, 0, 1, r.begin, r.end, b));
        b += r.size();
      }
    }
    return lin;
  }
  absl::StatusOr<Linear> Rows(const std::string& name, int64_t rows_total, int64_t in, Range r,
                              bool force_f32 = false) {
    return Rows(name, rows_total, in, std::span<const Range>(&r, 1), force_f32);
  }

  // Input columns `cols` of a row-parallel linear [out, in_total]. Its bias is a
  // full [out] vector that must be added once, so only `keep_bias` ranks load it.
  absl::StatusOr<Linear> Cols(const std::string& name, int64_t out, int64_t in_total, Range cols,
                              bool keep_bias) {
    Linear lin;
    lin.out = out;
    lin.in = cols.size();
    RETURN_IF_ERROR(ReadWeight(name + ".weight", {out, in_total}, Range{0, out}, cols,
                               /*force_f32=*/false, 0, &lin));
    if (dir_.Has(name + ".bias")) {
      const std::vector<int64_t> bias_shape = {out};
      std::vector<float> bias(static_cast<size_t>(out));
      RETURN_IF_ERROR(dir_.Read(name + ".bias", bias_shape, 0, 1, 0, out, bias.data()));
      if (keep_bias) lin.b = std::move(bias);
    }
    return lin;
  }

  // Vocab rows `rows` of the embedding tensor [vocab, d] as a bias-free linear in the
  // checkpoint's dtype: the embedding table itself, or a tied head's shard.
  absl::StatusOr<Linear> VocabRows(const std::string& tensor, int64_t vocab, int64_t d,
                                  Range rows) {
    Linear lin;
    lin.out = rows.size();
    lin.in = d;
    RETURN_IF_ERROR(
        ReadWeight(tensor, {vocab, d}, rows, Range{0, d}, /*force_f32=*/false, 0, &lin));
    return lin;
  }

  // A norm weight (or any 1-D vector) slice [begin, end) of a [n] tensor; must be finite.
  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n, Range r) {
    std::vector<float> v(static_cast<size_t>(r.size()));
    const std::vector<int64_t> shape = {n};
    RETURN_IF_ERROR(dir_.Read(name, shape, 0, 1, r.begin, r.end, v.data()));
    for (float x : v) {
      if (!std::isfinite(x)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has a non-finite value"));
      }
    }
    return v;
  }
  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n) {
    return Vector(name, n, Range{0, n});
  }

  bool Has(const std::string& name) const { return dir_.Has(name); }

 private:
  // Reads the block rows × cols of the 2-D weight `tensor` into rows [row, row + rows.size())
  // of `lin` (whose out and in are set). The first call fixes lin's dtype from the tensor's:
  // BF16/F16 stay 16-bit unless `force_f32`; F32 stays F32.
  absl::Status ReadWeight(const std::string& tensor, std::vector<int64_t> shape, Range rows,
                          Range cols, bool force_f32, int64_t row, Linear* lin) {
    ASSIGN_OR_RETURN(const DType stored, dir_.StoredDType(tensor));
    const size_t size = static_cast<size_t>(lin->out * lin->in);
    if (row == 0) {
      lin->dtype = force_f32 ? DType::kF32 : stored;
      if (lin->dtype == DType::kF32) {
        lin->w.resize(size);
      } else {
        lin->w16.resize(size);
      }
    }
    if (lin->dtype == DType::kF32) {
      return dir_.Read(tensor, shape, rows.begin, rows.end, cols.begin, cols.end,
                       lin->w.data() + row * lin->in);
    }
    return dir_.ReadBits16(tensor, shape, rows.begin, rows.end, cols.begin, cols.end,
                           lin->w16.data() + row * lin->in);
  }

  SafetensorsDir& dir_;
};

absl::Status LoadAttention(ShardLoader& load, const ModelDims& dims, const ShardPlan& plan,
                           const std::string& a, AttentionWeights* w) {
  const int64_t d = dims.hidden, h_q = dims.num_heads, kv = dims.num_kv_heads;
  const Range q = plan.q_heads, k = plan.kv_heads;
  auto scaled = [](Range r, int64_t s) { return Range{r.begin * s, r.end * s}; };
  const bool rank0 = plan.rank == 0;
  if (!IsLatent(dims.type)) {
    const int64_t dh = dims.head_dim;
    ASSIGN_OR_RETURN(w->q_proj, load.Rows(a + "q_proj", h_q * dh, d, scaled(q, dh)));
    if (dims.type == AttentionType::kGta) {
      ASSIGN_OR_RETURN(w->kv_proj, load.Rows(a + "kv_proj", kv * dh, d, scaled(k, dh)));
      ASSIGN_OR_RETURN(w->k_rope_proj,
                       load.Rows(a + "k_rope_proj", dims.rope_dim, d, Range{0, dims.rope_dim}));
    } else {
      ASSIGN_OR_RETURN(w->k_proj, load.Rows(a + "k_proj", kv * dh, d, scaled(k, dh)));
      ASSIGN_OR_RETURN(w->v_proj, load.Rows(a + "v_proj", kv * dh, d, scaled(k, dh)));
    }
    ASSIGN_OR_RETURN(w->o_proj, load.Cols(a + "o_proj", d, h_q * dh, scaled(q, dh), rank0));
    return absl::OkStatus();
  }
  const int64_t qk = dims.nope_dim + dims.rope_dim, dc = dims.latent_dim;
  if (dims.q_lora_rank > 0) {
    const int64_t r = dims.q_lora_rank;
    ASSIGN_OR_RETURN(w->q_a_proj, load.Rows(a + "q_a_proj", r, d, Range{0, r}));
    ASSIGN_OR_RETURN(w->q_a_norm, load.Vector(a + "q_a_layernorm.weight", r));
    ASSIGN_OR_RETURN(w->q_b_proj, load.Rows(a + "q_b_proj", h_q * qk, r, scaled(q, qk)));
  } else {
    ASSIGN_OR_RETURN(w->q_proj, load.Rows(a + "q_proj", h_q * qk, d, scaled(q, qk)));
  }
  // kv_a rows: [c_0 | … | c_{h_c−1} | k_rope]; keep own latents and the RoPE key.
  const int64_t kv_a_rows = kv * dc + dims.rope_dim;
  const Range kv_a_ranges[] = {scaled(k, dc), Range{kv * dc, kv_a_rows}};
  ASSIGN_OR_RETURN(w->kv_a_proj, load.Rows(a + "kv_a_proj_with_mqa", kv_a_rows, d, kv_a_ranges));
  if (load.Has(a + "kv_a_layernorm.weight")) {
    ASSIGN_OR_RETURN(w->kv_a_norm, load.Vector(a + "kv_a_layernorm.weight", kv * dc, scaled(k, dc)));
  }
  const int64_t per_head = dims.nope_dim + dims.v_head_dim;
  // f32 whatever the checkpoint holds: latent attention reads kv_b_proj's rows as floats
  // (absorbed into the query and output), not through MatMul.
  ASSIGN_OR_RETURN(w->kv_b_proj, load.Rows(a + "kv_b_proj", h_q * per_head, dc,
                                           scaled(q, per_head), /*force_f32=*/true));
  ASSIGN_OR_RETURN(w->o_proj,
                   load.Cols(a + "o_proj", d, h_q * dims.v_head_dim, scaled(q, dims.v_head_dim), rank0));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> LoadWeights(SafetensorsDir& dir, const ModelDims& dims,
                                         const ShardPlan& plan) {
  ShardLoader load(dir);
  const int64_t d = dims.hidden;
  ModelWeights w;
  // Row 0 for the fingerprint; the table itself is read below, this rank's vocab rows only.
  w.embed_row0.resize(static_cast<size_t>(d));
  const std::vector<int64_t> embed_shape = {dims.vocab, d};
  RETURN_IF_ERROR(
      dir.Read("model.embed_tokens.weight", embed_shape, 0, 1, 0, d, w.embed_row0.data()));
  w.layers.resize(static_cast<size_t>(dims.layers));
  for (int64_t i = 0; i < dims.layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = LayerPrefix(i);
    ASSIGN_OR_RETURN(l.attn_norm, load.Vector(p + "input_layernorm.weight", d));
    ASSIGN_OR_RETURN(l.mlp_norm, load.Vector(p + "post_attention_layernorm.weight", d));
    RETURN_IF_ERROR(LoadAttention(load, dims, plan, p + "self_attn.", &l.attn));
    ASSIGN_OR_RETURN(l.gate, load.Rows(p + "mlp.gate_proj", dims.intermediate, d, plan.mlp_cols));
    ASSIGN_OR_RETURN(l.up, load.Rows(p + "mlp.up_proj", dims.intermediate, d, plan.mlp_cols));
    ASSIGN_OR_RETURN(l.down, load.Cols(p + "mlp.down_proj", d, dims.intermediate, plan.mlp_cols,
                                       plan.rank == 0));
  }
  ASSIGN_OR_RETURN(w.final_norm, load.Vector("model.norm.weight", d));
  w.tied = dims.tie_word_embeddings;
  if (w.tied) {
    if (dir.Has("lm_head.weight")) dir.MarkUsed("lm_head.weight");
    // The head is this rank's vocab rows of the embedding, in the checkpoint's dtype, and
    // serves as the embedding too. No bias.
    ASSIGN_OR_RETURN(w.lm_head, load.VocabRows("model.embed_tokens.weight", dims.vocab, d,
                                              plan.vocab_rows));
  } else {
    ASSIGN_OR_RETURN(w.embed, load.VocabRows("model.embed_tokens.weight", dims.vocab, d,
                                            plan.vocab_rows));
    ASSIGN_OR_RETURN(w.lm_head, load.Rows("lm_head", dims.vocab, d, plan.vocab_rows));
  }
  const std::vector<std::string> unused = dir.Unused();
  if (!unused.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint has ", unused.size(), " tensor(s) this ", AttentionTypeName(dims.type),
        " model does not use: ", absl::StrJoin(unused.begin(), unused.begin() + std::min<size_t>(unused.size(), 5), ", "),
        unused.size() > 5 ? ", …" : ""));
  }
  return w;
}

}  // namespace shardlm
