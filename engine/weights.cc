#include "engine/weights.h"

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "base/half.h"
#include "base/status.h"
#include "kernels/quant.h"

namespace shardlm {

std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

std::vector<TensorSpec> CheckpointTensors(const ModelDims& dims) {
  const int64_t d = dims.hidden;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {dims.vocab, d}, false});
  for (int64_t i = 0; i < dims.layers; ++i) {
    const std::string p = LayerPrefix(i), a = p + "self_attn.";
    specs.push_back({p + "input_layernorm.weight", {d}, false});
    specs.push_back({p + "post_attention_layernorm.weight", {d}, false});
    AttentionFamily::Of(dims.type).AppendTensors(dims, a, &specs);
    specs.push_back({p + "mlp.gate_proj", {dims.intermediate, d}, true});
    specs.push_back({p + "mlp.up_proj", {dims.intermediate, d}, true});
    specs.push_back({p + "mlp.down_proj", {d, dims.intermediate}, true});
  }
  specs.push_back({"model.norm.weight", {d}, false});
  if (!dims.tie_word_embeddings) specs.push_back({"lm_head", {dims.vocab, d}, true});
  return specs;
}

int64_t ModelWeights::bytes() const {
  auto vec = [](const std::vector<float>& v) {
    return static_cast<int64_t>(v.size() * sizeof(float));
  };
  int64_t total = embed.bytes() + vec(final_norm) + lm_head.bytes();
  for (const LayerWeights& l : layers) {
    total += vec(l.attn_norm) + vec(l.mlp_norm) + l.attn->bytes() + l.gate.bytes() + l.up.bytes() +
             l.down.bytes();
  }
  return total;
}

namespace {

// Reads the checkpoint for one rank, tensor by tensor (the WeightSource of attention/).
class ShardLoader final : public WeightSource {
 public:
  explicit ShardLoader(SafetensorsDir& dir) : dir_(dir) {}
  using WeightSource::Rows;
  using WeightSource::Vector;

  absl::StatusOr<Linear> Rows(const std::string& name, int64_t rows_total, int64_t in,
                              std::span<const Range> ranges) override {
    Linear lin;
    lin.in = in;
    for (const Range& r : ranges) lin.out += r.size();
    int64_t row = 0;
    for (const Range& r : ranges) {
      RETURN_IF_ERROR(ReadWeight(name + ".weight", {rows_total, in}, r, Range{0, in}, row, &lin));
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
  absl::StatusOr<Linear> Cols(const std::string& name, int64_t out, int64_t in_total, Range cols,
                              bool keep_bias) override {
    Linear lin;
    lin.out = out;
    lin.in = cols.size();
    RETURN_IF_ERROR(ReadWeight(name + ".weight", {out, in_total}, Range{0, out}, cols, 0, &lin));
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
    RETURN_IF_ERROR(ReadWeight(tensor, {vocab, d}, rows, Range{0, d}, 0, &lin));
    return lin;
  }

  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n, Range r) override {
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
  bool Has(const std::string& name) const override { return dir_.Has(name); }

 private:
  // Reads the block rows × cols of the 2-D weight `tensor` into rows [row, row + rows.size())
  // of `lin` (whose out and in are set). The first call fixes lin's dtype: the tensor's, or
  // Q8_0 / Q4_0 for an I8 / U8 tensor with its `weight_scale` (kernels/quant.h).
  absl::Status ReadWeight(const std::string& tensor, std::vector<int64_t> shape, Range rows,
                          Range cols, int64_t row, Linear* lin) {
    ASSIGN_OR_RETURN(const DType stored, dir_.StoredDType(tensor));
    const DType format = stored == DType::kI8   ? DType::kQ8_0
                         : stored == DType::kU8 ? DType::kQ4_0
                                                : stored;
    if (row == 0) {
      lin->dtype = format;
      if (IsBlockQuantized(format)) {
        RETURN_IF_ERROR(CheckBlockSplit(tensor, format, shape[1], cols));
        lin->wq.resize(static_cast<size_t>(lin->out * WeightRowBytes(format, lin->in)));
      } else if (format == DType::kF32) {
        lin->w.resize(static_cast<size_t>(lin->out * lin->in));
      } else {
        lin->w16.resize(static_cast<size_t>(lin->out * lin->in));
      }
    }
    if (IsBlockQuantized(format)) return ReadQuantized(tensor, format, shape, rows, cols, row, lin);
    if (lin->dtype == DType::kF32) {
      return dir_.Read(tensor, shape, rows.begin, rows.end, cols.begin, cols.end,
                       lin->w.data() + row * lin->in);
    }
    return dir_.ReadBits16(tensor, shape, rows.begin, rows.end, cols.begin, cols.end,
                           lin->w16.data() + row * lin->in);
  }

  // A quantized weight's rows are whole blocks of 32, and a rank's columns too.
  static absl::Status CheckBlockSplit(const std::string& tensor, DType format, int64_t in_total,
                                      Range cols) {
    if (in_total % kQuantBlock == 0 && cols.begin % kQuantBlock == 0 &&
        cols.end % kQuantBlock == 0) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat(
        tensor, " is ", DTypeName(format), " (blocks of 32 columns) but this rank takes its "
        "columns [", cols.begin, ", ", cols.end, ") of ", in_total,
        ": a quantized weight can only be split between blocks; use another --tp, or "
        "quantize a model whose split widths are multiples of 32"));
  }

  // The quants and scales of a Q8_0 / Q4_0 weight (docs/QUANTIZATION.md), packed row by row.
  absl::Status ReadQuantized(const std::string& tensor, DType format,
                             const std::vector<int64_t>& shape, Range rows, Range cols,
                             int64_t row, Linear* lin) {
    const int64_t in_total = shape[1];  // whole blocks, and `cols` between them (ReadWeight)
    const std::string scale_name =
        absl::StrCat(tensor.substr(0, tensor.size() - std::string("weight").size()), "weight_scale");
    if (!absl::EndsWith(tensor, "weight") || !dir_.Has(scale_name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          tensor, " is ", DTypeName(format == DType::kQ8_0 ? DType::kI8 : DType::kU8),
          ", a quantized weight, but ", scale_name, " (its F16 scales) is missing"));
    }
    ASSIGN_OR_RETURN(const DType scale_type, dir_.StoredDType(scale_name));
    if (scale_type != DType::kF16) {
      return absl::InvalidArgumentError(
          absl::StrCat(scale_name, " is ", DTypeName(scale_type), "; quantization scales are F16"));
    }
    const int64_t per_byte = format == DType::kQ8_0 ? 1 : 2;  // elements per stored byte
    const int64_t n_rows = rows.size(), n_cols = cols.size();
    std::vector<uint8_t> quants(static_cast<size_t>(n_rows * n_cols / per_byte));
    std::vector<uint16_t> scales(static_cast<size_t>(n_rows * n_cols / kQuantBlock));
    const std::vector<int64_t> quant_shape = {shape[0], in_total / per_byte};
    const std::vector<int64_t> scale_shape = {shape[0], in_total / kQuantBlock};
    RETURN_IF_ERROR(dir_.ReadStored(tensor, quant_shape, rows.begin, rows.end,
                                    cols.begin / per_byte, cols.end / per_byte, quants.data()));
    RETURN_IF_ERROR(dir_.ReadBits16(scale_name, scale_shape, rows.begin, rows.end,
                                    cols.begin / kQuantBlock, cols.end / kQuantBlock,
                                    scales.data()));
    for (size_t k = 0; k < scales.size(); ++k) {
      if (!std::isfinite(F16ToF32(scales[k]))) {
        return absl::InvalidArgumentError(absl::StrCat(
            scale_name, " has a non-finite scale (row ", rows.begin + k / (n_cols / kQuantBlock),
            ", block ", cols.begin / kQuantBlock + k % (n_cols / kQuantBlock), ")"));
      }
    }
    const int64_t row_bytes = WeightRowBytes(format, lin->in);
    for (int64_t r = 0; r < n_rows; ++r) {
      PackQuantRow(format, quants.data() + r * n_cols / per_byte,
                   scales.data() + r * n_cols / kQuantBlock, n_cols,
                   lin->wq.data() + (row + r) * row_bytes);
    }
    return absl::OkStatus();
  }

  SafetensorsDir& dir_;
};

}  // namespace

absl::StatusOr<ModelWeights> LoadWeights(SafetensorsDir& dir, const ModelDims& dims,
                                         const ShardPlan& plan) {
  ShardLoader load(dir);
  const int64_t d = dims.hidden;
  ModelWeights w;
  // Row 0 for the fingerprint (widened or dequantized); the table itself is read below, this
  // rank's vocab rows only.
  w.embed_row0.resize(static_cast<size_t>(d));
  {
    ASSIGN_OR_RETURN(const Linear row0,
                     load.VocabRows("model.embed_tokens.weight", dims.vocab, d, Range{0, 1}));
    row0.WidenRow(0, w.embed_row0.data());
  }
  w.layers.resize(static_cast<size_t>(dims.layers));
  for (int64_t i = 0; i < dims.layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = LayerPrefix(i);
    ASSIGN_OR_RETURN(l.attn_norm, load.Vector(p + "input_layernorm.weight", d));
    ASSIGN_OR_RETURN(l.mlp_norm, load.Vector(p + "post_attention_layernorm.weight", d));
    ASSIGN_OR_RETURN(l.attn,
                     AttentionFamily::Of(dims.type).Load(load, dims, plan, p + "self_attn."));
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
    ASSIGN_OR_RETURN(w.lm_head,
                     load.VocabRows("model.embed_tokens.weight", dims.vocab, d, plan.vocab_rows));
  } else {
    ASSIGN_OR_RETURN(w.embed,
                     load.VocabRows("model.embed_tokens.weight", dims.vocab, d, plan.vocab_rows));
    ASSIGN_OR_RETURN(w.lm_head, load.Rows("lm_head", dims.vocab, d, plan.vocab_rows));
  }
  const std::vector<std::string> unused = dir.Unused();
  if (!unused.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint has ", unused.size(), " tensor(s) this ", AttentionTypeName(dims.type),
        " model does not use: ",
        absl::StrJoin(unused.begin(), unused.begin() + std::min<size_t>(unused.size(), 5), ", "),
        unused.size() > 5 ? ", …" : ""));
  }
  return w;
}

}  // namespace shardlm
