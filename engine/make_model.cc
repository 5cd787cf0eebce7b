#include "engine/make_model.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_join.h"
#include "base/rng.h"
#include "base/status.h"
#include "engine/config.h"
#include "engine/quantize.h"
#include "engine/weights.h"

namespace shardlm {
namespace {

struct Preset {
  const char* name;
  int64_t hidden, intermediate, layers, vocab, heads, head_dim, max_positions;
  // Per family: KV heads / groups (mha uses heads, mqa 1), GTA d_r, latent d_c per
  // head for MLA (one head) and GLA (two heads), latent d_r, d_n, d_v, q LoRA rank.
  int64_t gqa_kv, gta_kv, gta_rope, mla_dc, gla_heads, gla_dc, latent_rope, nope, v_dim, q_lora;
  bool biases;  // biases on every linear but the LM head (exercises all bias paths)
  const char* doc;
};

// Tiny and small presets have odd MLP widths and vocabularies so uneven splits
// are always exercised; the paper presets follow Zadouri, Strauss & Dao (2025).
constexpr Preset kPresets[] = {
    {"tiny", 64, 101, 2,  259, 4,  16, 512, 2,    2,
     8,      32, 2,   16, 8,   16, 16, 24,  true, "2 layers, d 64, 4 heads of 16 (tests)"},
    {"small", 256, 683, 4,  1001, 8,  32, 2048, 2,     2,
     16,      128, 2,   64, 16,   32, 32, 0,    false, "4 layers, d 256, 8 heads of 32"},
    {"paper-m", 1024,
     2816,      24,
     32000,     16,
     64,        32768,
     4,         4,
     32,        256,
     2,         128,
     32,        64,
     64,        0,
     false,     "24 layers, d 1024, 16 heads of 64: GQA-4, GTA-4 (d_r 32), MLA 256, GLA-2 2x128"},
    {"paper-xl", 2048,
     5632,       24,
     32000,      16,
     128,        32768,
     4,          4,
     64,         512,
     2,          256,
     64,         128,
     128,        0,
     false,      "24 layers, d 2048, 16 heads of 128: GQA-4, GTA-4 (d_r 64), MLA 512, GLA-2 2x256"},
    // Llama-3.2-1B's shapes (its config.json); the other families at the same width.
    {"llama-3.2-1b",
     2048,
     8192,
     16,
     128256,
     32,
     64,
     131072,
     8,
     8,
     32,
     512,
     2,
     256,
     32,
     64,
     64,
     0,
     false,
     "Llama-3.2-1B: 16 layers, d 2048, 32 heads of 64, GQA-8, MLP 8192, vocab 128256, tied, "
     "llama3 RoPE scaling"},
};

const Preset* FindPreset(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

// Fills a tensor with deterministic values: each tensor has its own stream.
std::vector<float> Uniform(uint64_t seed, const std::string& name, int64_t count, float lo,
                           float hi) {
  Rng rng(seed, name);
  return rng.UniformVector(static_cast<size_t>(count), lo, hi);
}

}  // namespace

std::vector<std::string> PresetNames() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.push_back(absl::StrCat(p.name, " (", p.doc, ")"));
  return names;
}

absl::StatusOr<ModelConfig> PresetConfig(const std::string& preset, const std::string& attention) {
  const Preset* p = FindPreset(preset);
  if (p == nullptr) {
    std::vector<std::string> names;
    for (const Preset& q : kPresets) names.push_back(q.name);
    return absl::InvalidArgumentError(
        absl::StrCat("unknown preset \"", preset, "\"; presets: ", absl::StrJoin(names, ", ")));
  }
  ModelConfig c;
  c.set_hidden_size(p->hidden);
  c.set_intermediate_size(p->intermediate);
  c.set_num_hidden_layers(p->layers);
  c.set_num_attention_heads(p->heads);
  c.set_vocab_size(p->vocab);
  c.set_rms_norm_eps(1e-5);
  c.set_rope_theta(10000.0);
  c.set_max_position_embeddings(p->max_positions);
  c.set_tie_word_embeddings(false);
  // Byte tokenizer: ids 0..255 are bytes, then BOS and EOS.
  c.set_tokenizer("bytes");
  c.set_bos_token_id(256);
  c.add_eos_token_ids(257);
  c.set_attention_type(attention);
  if (attention == "mha" || attention == "mqa" || attention == "gqa" || attention == "gta") {
    c.set_head_dim(p->head_dim);
    const int64_t kv = attention == "mha"   ? p->heads
                       : attention == "mqa" ? 1
                       : attention == "gqa" ? p->gqa_kv
                                            : p->gta_kv;
    c.set_num_key_value_heads(kv);
    if (attention == "gta") c.set_qk_rope_head_dim(p->gta_rope);
  } else if (attention == "mla" || attention == "gla") {
    const bool mla = attention == "mla";
    c.set_num_latent_heads(mla ? 1 : p->gla_heads);
    c.set_kv_lora_rank(mla ? p->mla_dc : p->gla_dc);
    c.set_qk_rope_head_dim(p->latent_rope);
    c.set_qk_nope_head_dim(p->nope);
    c.set_v_head_dim(p->v_dim);
    // The tiny MLA exercises the q LoRA path; GLA the plain q_proj.
    if (mla && p->q_lora > 0) c.set_q_lora_rank(p->q_lora);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown attention \"", attention, "\"; expected one of mha, mqa, gqa, gta, mla, gla"));
  }
  if (preset == "llama-3.2-1b") {
    // The rest of Llama-3.2-1B's config: theta, llama3 RoPE scaling, tied embeddings, ids; its
    // vocabulary is Llama 3's, so the tokenizer is a tokenizer.json put beside the weights.
    c.clear_tokenizer();
    c.set_rope_theta(500000.0);
    c.set_tie_word_embeddings(true);
    c.set_bos_token_id(128000);
    c.clear_eos_token_ids();
    for (int32_t eos : {128001, 128008, 128009}) c.add_eos_token_ids(eos);
    RopeScalingConfig* scaling = c.mutable_rope_scaling();
    scaling->set_rope_type("llama3");
    scaling->set_factor(32.0);
    scaling->set_low_freq_factor(1.0);
    scaling->set_high_freq_factor(4.0);
    scaling->set_original_max_position_embeddings(8192);
  }
  return c;
}

absl::Status MakeModel(const MakeModelOptions& options, const std::string& out_dir) {
  if (options.dtype == DType::kI8 || options.dtype == DType::kU8) {
    return absl::InvalidArgumentError("make-model: --dtype I8/U8 are quantization parts; use Q8_0 or Q4_0");
  }
  if (IsBlockQuantized(options.dtype)) {
    // The F32 model, then `shardlm quantize` of it (the head and embedding in Q8_0).
    const std::string staging = out_dir + ".f32-staging";
    MakeModelOptions f32 = options;
    f32.dtype = DType::kF32;
    RETURN_IF_ERROR(MakeModel(f32, staging));
    QuantizeOptions q;
    q.model_dir = staging;
    q.out_dir = out_dir;
    q.dtype = options.dtype;
    const absl::Status status = QuantizeModel(q);
    std::error_code ec;
    std::filesystem::remove_all(staging, ec);
    return status;
  }
  ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(options.preset, options.attention));
  const Preset& preset = *FindPreset(options.preset);
  if (options.layers > 0) config.set_num_hidden_layers(options.layers);
  if (options.intermediate_size > 0) config.set_intermediate_size(options.intermediate_size);
  if (options.sliding_window > 0) config.set_sliding_window(options.sliding_window);
  if (options.rope_interleave) config.set_rope_interleave(true);
  if (options.tie_word_embeddings) config.set_tie_word_embeddings(true);
  ASSIGN_OR_RETURN(ModelDims dims, ResolveDims(config, "preset " + options.preset));
  const bool biases = preset.biases && !options.no_biases;

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec)
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));

  // Scales keep activations O(1): weights U(±sqrt(3/fan_in)) have unit gain;
  // the two residual branches are damped by 1/sqrt(2·layers); logits get std ~2.
  const float residual_gain = static_cast<float>(1.0 / std::sqrt(2.0 * dims.layers));
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
  values.reserve(4 * CheckpointTensors(dims).size());
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    values.push_back(Uniform(options.seed, name, count, lo, hi));
    tensors.push_back({name, options.dtype, std::move(shape), values.back()});
  };
  for (const TensorSpec& spec : CheckpointTensors(dims)) {
    const std::string& name = spec.name;
    if (!spec.is_linear) {
      if (name == "model.embed_tokens.weight") {
        add(name, spec.shape, -1.7f, 1.7f);
      } else {
        add(name, spec.shape, 0.9f, 1.1f);  // norm weights
      }
      continue;
    }
    const int64_t fan_in = spec.shape[1];
    float a = static_cast<float>(std::sqrt(3.0 / fan_in));
    const bool residual = name.ends_with("o_proj") || name.ends_with("down_proj");
    if (residual) a *= residual_gain;
    if (name == "lm_head") a *= 2.0f;
    add(name + ".weight", spec.shape, -a, a);
    const bool gta_rope_key = name.ends_with("k_rope_proj");  // GTA's RoPE key usually has a bias
    if ((biases && name != "lm_head") || gta_rope_key) {
      add(name + ".bias", {spec.shape[0]}, -0.1f, 0.1f);
    }
  }
  if (IsLatent(dims.type)) {
    // kv_a_layernorm is optional in the format; the presets carry it.
    for (int64_t i = 0; i < dims.layers; ++i) {
      add(LayerPrefix(i) + "self_attn.kv_a_layernorm.weight", {dims.num_kv_heads * dims.latent_dim},
          0.9f, 1.1f);
    }
  }
  RETURN_IF_ERROR(WriteSafetensors(out_dir + "/model.safetensors", tensors));

  const std::string path = out_dir + "/config.json";
  std::ofstream out(path, std::ios::trunc);
  out << ModelConfigToJson(config) << "\n";
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace shardlm
