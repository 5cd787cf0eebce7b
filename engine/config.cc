#include "engine/config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_join.h"
#include "base/status.h"
#include "base/text.h"
#include "engine/jsonl.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace shardlm {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

absl::Status ConfigError(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

// An integral JSON number in int64 range.
absl::StatusOr<int64_t> AsInt(const Value& v, const std::string& source, const std::string& key) {
  if (v.kind_case() != Value::kNumberValue || v.number_value() != std::floor(v.number_value()) ||
      std::fabs(v.number_value()) > 9.007199254740992e15) {
    return ConfigError(source, absl::StrCat("\"", key, "\" must be an integer"));
  }
  return static_cast<int64_t>(v.number_value());
}

// yarn's magnitude correction: 0.1 · mscale · ln(factor) + 1 for factor > 1, else 1.
double YarnMscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

// A key of a Hugging Face config: absent and JSON null read the same.
const Value* Key(const Struct& root, const std::string& key) {
  const auto it = root.fields().find(key);
  if (it == root.fields().end() || it->second.kind_case() == Value::kNullValue) return nullptr;
  return &it->second;
}

absl::StatusOr<std::string> KeyString(const Struct& root, const std::string& key,
                                      const std::string& source) {
  const Value* v = Key(root, key);
  if (v == nullptr) return std::string();
  if (v->kind_case() != Value::kStringValue) {
    return ConfigError(source, absl::StrCat("\"", key, "\" must be a string"));
  }
  return v->string_value();
}

// The Hugging Face architectures ShardLM runs, by `architectures[0]` (or `model_type`).
enum class Arch { kOwn, kLlama, kMistral, kQwen2, kQwen3, kDeepseek };

constexpr const char* kSupportedArchitectures =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
    "DeepseekV2ForCausalLM, DeepseekV3ForCausalLM (dense layers)";

absl::StatusOr<Arch> RecognizeArch(const Struct& root, const std::string& source) {
  std::string name;
  if (const Value* list = Key(root, "architectures")) {
    if (list->kind_case() != Value::kListValue || list->list_value().values_size() != 1 ||
        list->list_value().values(0).kind_case() != Value::kStringValue) {
      return ConfigError(source, "\"architectures\" must be a list of one string");
    }
    name = list->list_value().values(0).string_value();
  }
  ASSIGN_OR_RETURN(const std::string model_type, KeyString(root, "model_type", source));
  if (name.empty() && model_type.empty()) return Arch::kOwn;  // ShardLM's own configs
  static const std::pair<const char*, Arch> kByName[] = {
      {"LlamaForCausalLM", Arch::kLlama},         {"MistralForCausalLM", Arch::kMistral},
      {"Qwen2ForCausalLM", Arch::kQwen2},         {"Qwen3ForCausalLM", Arch::kQwen3},
      {"DeepseekV2ForCausalLM", Arch::kDeepseek}, {"DeepseekV3ForCausalLM", Arch::kDeepseek}};
  static const std::pair<const char*, Arch> kByType[] = {
      {"llama", Arch::kLlama}, {"mistral", Arch::kMistral},      {"qwen2", Arch::kQwen2},
      {"qwen3", Arch::kQwen3}, {"deepseek_v2", Arch::kDeepseek}, {"deepseek_v3", Arch::kDeepseek}};
  for (const auto& [n, arch] : kByName) {
    if (name == n) return arch;
  }
  if (name.empty()) {
    for (const auto& [t, arch] : kByType) {
      if (model_type == t) return arch;
    }
  }
  return ConfigError(
      source, absl::StrCat("architecture \"", Printable(name.empty() ? model_type : name),
                           "\" is not supported (supported: ", kSupportedArchitectures, ")"));
}

// Rewrites a Hugging Face config of a recognised architecture into ShardLM's keys (the
// family, RoPE pairing, q/k norms, the window that applies), and rejects every key that
// changes the math in a way the engine does not implement, naming it.
absl::Status NormalizeHfConfig(Struct& root, const std::string& source) {
  ASSIGN_OR_RETURN(const Arch arch, RecognizeArch(root, source));
  auto& fields = *root.mutable_fields();
  auto set_bool = [&](const char* key, bool v) { fields[key].set_bool_value(v); };
  auto unsupported = [&](const std::string& key, const std::string& why) {
    return ConfigError(source, absl::StrCat("\"", key, "\" ", why, " is not supported"));
  };
  if (arch != Arch::kOwn) {
    if (fields.contains("attention_type")) {
      return ConfigError(source,
                         "\"attention_type\" is ShardLM's own key; a Hugging Face "
                         "config names its architecture instead");
    }
    ASSIGN_OR_RETURN(const std::string act, KeyString(root, "hidden_act", source));
    if (!act.empty() && act != "silu") {
      return unsupported("hidden_act", absl::StrCat("\"", Printable(act), "\" (only silu)"));
    }
    for (const char* key : {"attn_logit_softcapping", "final_logit_softcapping", "no_rope_layers",
                            "num_experts", "moe_intermediate_size"}) {
      if (Key(root, key) != nullptr) return unsupported(key, "(a feature this engine lacks)");
    }
    if (const Value* f = Key(root, "partial_rotary_factor");
        f != nullptr && !(f->kind_case() == Value::kNumberValue && f->number_value() == 1.0)) {
      return unsupported("partial_rotary_factor", "other than 1");
    }
    if (const Value* types = Key(root, "layer_types")) {
      if (types->kind_case() != Value::kListValue) {
        return ConfigError(source, "\"layer_types\" must be a list");
      }
      for (const Value& t : types->list_value().values()) {
        if (t.string_value() != "full_attention") {
          return unsupported("layer_types",
                             absl::StrCat("with \"", Printable(t.string_value()), "\" layers"));
        }
      }
    }
  }
  switch (arch) {
    case Arch::kOwn:
      break;
    case Arch::kLlama:
      if (Key(root, "sliding_window") != nullptr) {
        return unsupported("sliding_window", "on a Llama model (Hugging Face's Llama ignores it)");
      }
      break;
    case Arch::kMistral:
      break;  // a uniform sliding_window, when set
    case Arch::kQwen2:
    case Arch::kQwen3: {
      // Qwen's window applies only with use_sliding_window, to layers >= max_window_layers.
      const Value* use = Key(root, "use_sliding_window");
      const bool sliding = use != nullptr && use->bool_value();
      if (sliding) {
        const Value* mwl = Key(root, "max_window_layers");
        const double first = mwl == nullptr ? 0 : mwl->number_value();
        const Value* layers = Key(root, "num_hidden_layers");
        if (first > 0 && (layers == nullptr || first < layers->number_value())) {
          return unsupported("max_window_layers",
                             "with use_sliding_window (a window on some layers only)");
        }
        if (first > 0) fields.erase("sliding_window");  // no layer slides
      } else {
        fields.erase("sliding_window");
      }
      if (arch == Arch::kQwen3) set_bool("qk_norm", true);
      break;
    }
    case Arch::kDeepseek: {
      if (const Value* experts = Key(root, "n_routed_experts")) {
        const Value* dense = Key(root, "first_k_dense_replace");
        const Value* layers = Key(root, "num_hidden_layers");
        if (experts->number_value() > 0 && (dense == nullptr || layers == nullptr ||
                                            dense->number_value() < layers->number_value())) {
          return ConfigError(source,
                             "mixture-of-experts layers are not supported "
                             "(n_routed_experts is set and first_k_dense_replace < "
                             "num_hidden_layers)");
        }
      }
      fields["attention_type"].set_string_value("mla");
      fields["num_latent_heads"].set_number_value(1);
      // DeepSeek's MLA rotates interleaved pairs (V3 configs say so with rope_interleave).
      if (Key(root, "rope_interleave") == nullptr) set_bool("rope_interleave", true);
      fields.erase("head_dim");  // DeepSeek V3 writes qk_rope_head_dim there
      // DeepSeek scales the softmax by mscale(factor, mscale_all_dim)² under yarn.
      if (const Value* scaling = Key(root, "rope_scaling");
          scaling != nullptr && scaling->kind_case() == Value::kStructValue) {
        const auto& rs = scaling->struct_value().fields();
        const auto all_dim = rs.find("mscale_all_dim");
        const auto factor = rs.find("factor");
        const Value* nope = Key(root, "qk_nope_head_dim");
        const Value* rope = Key(root, "qk_rope_head_dim");
        if (all_dim != rs.end() && all_dim->second.number_value() != 0 && factor != rs.end() &&
            nope != nullptr && rope != nullptr) {
          const double m =
              YarnMscale(factor->second.number_value(), all_dim->second.number_value());
          fields["softmax_scale"].set_number_value(
              m * m / std::sqrt(nope->number_value() + rope->number_value()));
        }
      }
      break;
    }
  }
  // rope_scaling: {"type" | "rope_type": ..., per-type keys}; "default" means none.
  if (const Value* scaling = Key(root, "rope_scaling")) {
    if (scaling->kind_case() != Value::kStructValue) {
      return ConfigError(source, "\"rope_scaling\" must be an object");
    }
    Struct rs = scaling->struct_value();
    auto& rf = *rs.mutable_fields();
    if (auto t = rf.find("type"); t != rf.end()) {
      if (!rf.contains("rope_type")) rf["rope_type"] = t->second;
      rf.erase("type");
    }
    const std::string type = rf.contains("rope_type") ? rf["rope_type"].string_value() : "";
    static const std::map<std::string, std::set<std::string>> kKeys = {
        {"default", {"rope_type"}},
        {"linear", {"rope_type", "factor"}},
        {"llama3",
         {"rope_type", "factor", "low_freq_factor", "high_freq_factor",
          "original_max_position_embeddings"}},
        {"yarn",
         {"rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
          "mscale", "mscale_all_dim", "attention_factor", "truncate"}}};
    const auto allowed = kKeys.find(type);
    if (allowed == kKeys.end()) {
      return unsupported("rope_scaling", absl::StrCat("of type \"", Printable(type),
                                                      "\" (supported: linear, llama3, yarn)"));
    }
    for (const auto& [key, value] : rf) {
      if (!allowed->second.contains(key)) {
        return unsupported(absl::StrCat("rope_scaling.", key),
                           absl::StrCat("for rope type ", type));
      }
    }
    if (type == "default") {
      fields.erase("rope_scaling");
    } else {
      *fields["rope_scaling"].mutable_struct_value() = rs;
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// Removes "eos_token_id" (an int, a list of ints, or null) from `root` and returns its ids,
// each checked to fit in 32 bits like every other id.
absl::StatusOr<std::vector<int64_t>> TakeEosIds(Struct& root, const std::string& source) {
  std::vector<int64_t> eos;
  auto fields = root.mutable_fields();
  if (auto it = fields->find("eos_token_id"); it != fields->end()) {
    const Value& v = it->second;
    if (v.kind_case() == Value::kListValue) {
      for (const Value& e : v.list_value().values()) {
        ASSIGN_OR_RETURN(int64_t id, AsInt(e, source, "eos_token_id"));
        eos.push_back(id);
      }
    } else if (v.kind_case() != Value::kNullValue) {
      ASSIGN_OR_RETURN(int64_t id, AsInt(v, source, "eos_token_id"));
      eos.push_back(id);
    }
    fields->erase(it);
  }
  for (int64_t id : eos) {
    if (id < INT32_MIN || id > INT32_MAX) {
      return ConfigError(source, absl::StrCat("eos_token_id=", id, " does not fit in 32 bits"));
    }
  }
  return eos;
}

absl::StatusOr<Struct> ParseJsonRoot(const std::string& json, const std::string& source) {
  if (absl::Status depth = CheckJsonDepth(json); !depth.ok()) {
    return ConfigError(source, absl::StrCat("not a valid JSON object: ", depth.message()));
  }
  Struct root;
  auto parsed = google::protobuf::util::JsonStringToMessage(json, &root);
  if (!parsed.ok()) {
    return ConfigError(source,
                       absl::StrCat("not a valid JSON object: ", parsed.message().ToString()));
  }
  return root;
}

// The eos ids of generation_config.json.
absl::StatusOr<std::vector<int64_t>> ParseEosIds(const std::string& json,
                                                 const std::string& source) {
  ASSIGN_OR_RETURN(Struct root, ParseJsonRoot(json, source));
  return TakeEosIds(root, source);
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json, const std::string& source) {
  ASSIGN_OR_RETURN(Struct root, ParseJsonRoot(json, source));
  ASSIGN_OR_RETURN(const std::vector<int64_t> eos, TakeEosIds(root, source));
  RETURN_IF_ERROR(NormalizeHfConfig(root, source));
  std::string rest;
  if (!google::protobuf::util::MessageToJsonString(root, &rest).ok()) {
    return ConfigError(source, "cannot re-serialize JSON");
  }
  ModelConfig config;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // HF configs carry many keys we do not use
  auto status = google::protobuf::util::JsonStringToMessage(rest, &config, options);
  if (!status.ok()) {
    return ConfigError(source, absl::StrCat("bad value: ", status.message().ToString()));
  }
  for (int64_t id : eos) {
    config.add_eos_token_ids(static_cast<int32_t>(id));
  }
  return config;
}

absl::Status CopyTokenizerFiles(const std::string& model_dir, const std::string& out_dir) {
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    const std::filesystem::path src = std::filesystem::path(model_dir) / f;
    if (!std::filesystem::exists(src)) continue;
    std::error_code ec;
    std::filesystem::copy_file(src, std::filesystem::path(out_dir) / f,
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot copy ", src.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text.str(), path));
  // generation_config.json's eos_token_id (an instruct model's end-of-turn ids) ends
  // generation too, as in Hugging Face's generate() and vLLM.
  const std::string gen_path = model_dir + "/generation_config.json";
  std::ifstream gen(gen_path);
  if (gen) {
    std::stringstream gen_text;
    gen_text << gen.rdbuf();
    if (gen.bad()) return absl::DataLossError(absl::StrCat("cannot read ", gen_path));
    ASSIGN_OR_RETURN(const std::vector<int64_t> eos, ParseEosIds(gen_text.str(), gen_path));
    for (const int64_t id : eos) {
      if (std::find(config.eos_token_ids().begin(), config.eos_token_ids().end(), id) ==
          config.eos_token_ids().end()) {
        config.add_eos_token_ids(static_cast<int32_t>(id));
      }
    }
  }
  return config;
}

namespace {

absl::StatusOr<RopeScaling> ResolveRopeScaling(const ModelConfig& config, int64_t max_positions,
                                               const std::string& source) {
  const RopeScalingConfig& c = config.rope_scaling();
  RopeScaling r;
  const std::string& type = c.rope_type();
  auto bad = [&](const std::string& what) {
    return ConfigError(source, absl::StrCat("rope_scaling (", type, "): ", what));
  };
  if (type == "linear") {
    r.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    r.type = RopeScaling::Type::kLlama3;
  } else if (type == "yarn") {
    r.type = RopeScaling::Type::kYarn;
  } else {
    return bad("unknown type; supported: linear, llama3, yarn");
  }
  if (!c.has_factor() || !(c.factor() > 0) || !std::isfinite(c.factor())) {
    return bad("needs a positive \"factor\"");
  }
  r.factor = c.factor();
  r.original_max_positions = c.has_original_max_position_embeddings()
                                 ? c.original_max_position_embeddings()
                                 : max_positions;
  if (r.original_max_positions <= 0) {
    return bad("\"original_max_position_embeddings\" must be positive");
  }
  if (r.type == RopeScaling::Type::kLlama3) {
    if (!c.has_low_freq_factor() || !c.has_high_freq_factor() ||
        !c.has_original_max_position_embeddings()) {
      return bad("needs low_freq_factor, high_freq_factor and original_max_position_embeddings");
    }
    r.low_freq_factor = c.low_freq_factor();
    r.high_freq_factor = c.high_freq_factor();
    if (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor)) {
      return bad("needs 0 < low_freq_factor < high_freq_factor");
    }
  }
  if (r.type == RopeScaling::Type::kYarn) {
    if (c.has_beta_fast()) r.beta_fast = c.beta_fast();
    if (c.has_beta_slow()) r.beta_slow = c.beta_slow();
    if (c.has_truncate()) r.truncate = c.truncate();
    if (!(r.beta_fast > 0) || !(r.beta_slow > 0)) return bad("beta_fast and beta_slow must be > 0");
    // transformers' _compute_yarn_parameters: the given attention_factor, else the ratio of
    // the two mscales when both are set, else mscale(factor).
    if (c.has_attention_factor()) {
      r.attention_factor = c.attention_factor();
    } else if (c.mscale() != 0 && c.mscale_all_dim() != 0) {
      r.attention_factor =
          YarnMscale(r.factor, c.mscale()) / YarnMscale(r.factor, c.mscale_all_dim());
    } else {
      r.attention_factor = YarnMscale(r.factor, 1.0);
    }
    if (!(r.attention_factor > 0) || !std::isfinite(r.attention_factor)) {
      return bad("attention factor must be positive");
    }
  }
  return r;
}

}  // namespace

absl::StatusOr<ModelDims> ResolveDims(const ModelConfig& c, const std::string& source) {
  ModelDims d;
  auto require_positive = [&](bool has, int64_t value, const char* key) -> absl::Status {
    if (!has) return ConfigError(source, absl::StrCat("missing \"", key, "\""));
    if (value <= 0) {
      return ConfigError(source, absl::StrCat("\"", key, "\" must be positive, got ", value));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(require_positive(c.has_hidden_size(), c.hidden_size(), "hidden_size"));
  RETURN_IF_ERROR(
      require_positive(c.has_intermediate_size(), c.intermediate_size(), "intermediate_size"));
  RETURN_IF_ERROR(
      require_positive(c.has_num_hidden_layers(), c.num_hidden_layers(), "num_hidden_layers"));
  RETURN_IF_ERROR(require_positive(c.has_num_attention_heads(), c.num_attention_heads(),
                                   "num_attention_heads"));
  RETURN_IF_ERROR(require_positive(c.has_vocab_size(), c.vocab_size(), "vocab_size"));
  d.hidden = c.hidden_size();
  d.intermediate = c.intermediate_size();
  d.layers = c.num_hidden_layers();
  d.vocab = c.vocab_size();
  d.num_heads = c.num_attention_heads();
  const int64_t h_q = d.num_heads;

  // Attention family.
  const int64_t h_kv_given = c.has_num_key_value_heads() ? c.num_key_value_heads() : h_q;
  std::string type =
      c.has_attention_type() ? c.attention_type() : (h_kv_given == h_q ? "mha" : "gqa");
  if (type == "mha")
    d.type = AttentionType::kMha;
  else if (type == "mqa")
    d.type = AttentionType::kMqa;
  else if (type == "gqa")
    d.type = AttentionType::kGqa;
  else if (type == "gta")
    d.type = AttentionType::kGta;
  else if (type == "mla")
    d.type = AttentionType::kMla;
  else if (type == "gla")
    d.type = AttentionType::kGla;
  else {
    return ConfigError(source, absl::StrCat("unknown attention_type \"", type,
                                            "\"; expected one of mha, mqa, gqa, gta, mla, gla"));
  }

  if (!IsLatent(d.type)) {
    int64_t h_kv = c.has_num_key_value_heads() ? c.num_key_value_heads()
                                               : (d.type == AttentionType::kMqa ? 1 : h_q);
    if (h_kv <= 0) {
      return ConfigError(source,
                         absl::StrCat("\"num_key_value_heads\" must be positive, got ", h_kv));
    }
    if (d.type == AttentionType::kMha && h_kv != h_q) {
      return ConfigError(source,
                         absl::StrCat("mha needs num_key_value_heads == num_attention_heads (", h_q,
                                      "), got ", h_kv));
    }
    if (d.type == AttentionType::kMqa && h_kv != 1) {
      return ConfigError(source, absl::StrCat("mqa needs num_key_value_heads == 1, got ", h_kv));
    }
    if (h_q % h_kv != 0) {
      return ConfigError(source, absl::StrCat("num_attention_heads=", h_q,
                                              " is not a multiple of num_key_value_heads=", h_kv));
    }
    d.num_kv_heads = h_kv;
    if (c.has_head_dim()) {
      d.head_dim = c.head_dim();
    } else {
      if (d.hidden % h_q != 0) {
        return ConfigError(source, absl::StrCat("no \"head_dim\" and hidden_size=", d.hidden,
                                                " is not divisible by num_attention_heads=", h_q));
      }
      d.head_dim = d.hidden / h_q;
    }
    if (d.head_dim <= 0) {
      return ConfigError(source, absl::StrCat("\"head_dim\" must be positive, got ", d.head_dim));
    }
    if (d.type == AttentionType::kGta) {
      d.rope_dim = c.has_qk_rope_head_dim() ? c.qk_rope_head_dim() : d.head_dim / 2;
      if (d.rope_dim <= 0 || d.rope_dim > d.head_dim) {
        return ConfigError(source, absl::StrCat("gta needs 0 < qk_rope_head_dim <= head_dim (",
                                                d.head_dim, "), got ", d.rope_dim));
      }
    } else {
      d.rope_dim = d.head_dim;
    }
  } else {
    const int64_t h_c =
        c.has_num_latent_heads() ? c.num_latent_heads() : (d.type == AttentionType::kMla ? 1 : 0);
    if (d.type == AttentionType::kMla && h_c != 1) {
      return ConfigError(source, absl::StrCat("mla has one latent head; num_latent_heads=", h_c,
                                              " (use attention_type gla)"));
    }
    if (h_c <= 0) {
      return ConfigError(source, "gla needs \"num_latent_heads\" >= 1");
    }
    if (h_q % h_c != 0) {
      return ConfigError(source, absl::StrCat("num_attention_heads=", h_q,
                                              " is not a multiple of num_latent_heads=", h_c));
    }
    d.num_kv_heads = h_c;
    RETURN_IF_ERROR(require_positive(c.has_kv_lora_rank(), c.kv_lora_rank(), "kv_lora_rank"));
    RETURN_IF_ERROR(
        require_positive(c.has_qk_nope_head_dim(), c.qk_nope_head_dim(), "qk_nope_head_dim"));
    RETURN_IF_ERROR(
        require_positive(c.has_qk_rope_head_dim(), c.qk_rope_head_dim(), "qk_rope_head_dim"));
    RETURN_IF_ERROR(require_positive(c.has_v_head_dim(), c.v_head_dim(), "v_head_dim"));
    d.latent_dim = c.kv_lora_rank();
    d.nope_dim = c.qk_nope_head_dim();
    d.rope_dim = c.qk_rope_head_dim();
    d.v_head_dim = c.v_head_dim();
    d.head_dim = c.has_head_dim() ? c.head_dim() : 0;  // informational only
    d.q_lora_rank = c.has_q_lora_rank() ? c.q_lora_rank() : 0;
    if (d.q_lora_rank < 0) {
      return ConfigError(source, absl::StrCat("\"q_lora_rank\" must be >= 0, got ", d.q_lora_rank));
    }
  }
  if (d.rope_dim % 2 != 0) {
    return ConfigError(source, absl::StrCat("rotated channels must be even, got ", d.rope_dim));
  }

  d.rms_eps = c.has_rms_norm_eps() ? c.rms_norm_eps() : 1e-6;
  if (!(d.rms_eps > 0) || !std::isfinite(d.rms_eps)) {
    return ConfigError(source, absl::StrCat("\"rms_norm_eps\" must be positive, got ", d.rms_eps));
  }
  d.rope_theta = c.has_rope_theta() ? c.rope_theta() : 10000.0;
  if (!(d.rope_theta > 1) || !std::isfinite(d.rope_theta)) {
    return ConfigError(source, absl::StrCat("\"rope_theta\" must be > 1, got ", d.rope_theta));
  }
  d.rope_interleave = c.rope_interleave();
  d.sliding_window = c.has_sliding_window() ? c.sliding_window() : 0;
  if (d.sliding_window < 0) {
    return ConfigError(source,
                       absl::StrCat("\"sliding_window\" must be >= 0, got ", d.sliding_window));
  }
  d.max_positions = c.has_max_position_embeddings() ? c.max_position_embeddings() : 4096;
  if (d.max_positions <= 0) {
    return ConfigError(source, absl::StrCat("\"max_position_embeddings\" must be positive, got ",
                                            d.max_positions));
  }
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(d.QkHeadDim()));
  d.softmax_scale = c.has_softmax_scale() ? c.softmax_scale() : default_scale;
  if (!(d.softmax_scale > 0) || !std::isfinite(d.softmax_scale)) {
    return ConfigError(source,
                       absl::StrCat("\"softmax_scale\" must be positive, got ", d.softmax_scale));
  }
  if (c.has_rope_scaling()) {
    ASSIGN_OR_RETURN(d.rope_scaling, ResolveRopeScaling(c, d.max_positions, source));
  }
  d.qk_norm = c.qk_norm();
  if (d.qk_norm && !IsGqaLike(d.type)) {
    return ConfigError(source, absl::StrCat("q/k norms (qk_norm) are implemented for MHA, MQA "
                                            "and GQA only, not ",
                                            AttentionTypeName(d.type)));
  }
  d.tie_word_embeddings = c.tie_word_embeddings();
  d.bos_token_id = c.has_bos_token_id() ? c.bos_token_id() : -1;
  if (d.bos_token_id >= d.vocab) {
    return ConfigError(source, absl::StrCat("bos_token_id=", d.bos_token_id,
                                            " is outside the vocabulary of ", d.vocab));
  }
  for (int64_t id : c.eos_token_ids()) {
    if (id < 0 || id >= d.vocab) {
      return ConfigError(
          source, absl::StrCat("eos_token_id=", id, " is outside the vocabulary of ", d.vocab));
    }
    d.eos_token_ids.push_back(id);
  }
  if (c.has_tokenizer()) {
    if (c.tokenizer() != "bytes") {
      return ConfigError(source, absl::StrCat("unknown tokenizer \"", c.tokenizer(),
                                              "\"; only \"bytes\" is built in"));
    }
    if (d.vocab < 256) {
      return ConfigError(
          source, absl::StrCat("the bytes tokenizer needs vocab_size >= 256, got ", d.vocab));
    }
    d.byte_tokenizer = true;
  }
  return d;
}

std::string ModelConfigToJson(const ModelConfig& config) {
  ModelConfig copy = config;
  copy.clear_eos_token_ids();
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(copy, &json, options);
  if (config.eos_token_ids_size() > 0) {
    // Insert "eos_token_id" as the first key: HF style, an int when there is one.
    const std::string value =
        config.eos_token_ids_size() == 1
            ? absl::StrCat(config.eos_token_ids(0))
            : absl::StrCat("[", absl::StrJoin(config.eos_token_ids(), ", "), "]");
    const size_t brace = json.find('{');
    json.insert(brace + 1, absl::StrCat("\n \"eos_token_id\": ", value, ","));
  }
  return json;
}

uint64_t DimsFingerprint(const ModelDims& d) {
  // FNV-1a over the canonical text of every dimension that shapes the math.
  const std::string text = absl::StrCat(
      AttentionTypeName(d.type), "|", d.hidden, "|", d.intermediate, "|", d.layers, "|", d.vocab,
      "|", d.num_heads, "|", d.num_kv_heads, "|", d.head_dim, "|", d.rope_dim, "|", d.latent_dim,
      "|", d.nope_dim, "|", d.v_head_dim, "|", d.q_lora_rank, "|", d.sliding_window, "|",
      d.max_positions, "|", d.rms_eps, "|", d.rope_theta, "|", d.softmax_scale, "|",
      d.rope_interleave, "|", d.tie_word_embeddings, "|", d.bos_token_id, "|",
      RopeScalingName(d.rope_scaling.type), "|", d.rope_scaling.factor, "|",
      d.rope_scaling.low_freq_factor, "|", d.rope_scaling.high_freq_factor, "|",
      d.rope_scaling.original_max_positions, "|", d.rope_scaling.beta_fast, "|",
      d.rope_scaling.beta_slow, "|", d.rope_scaling.truncate, "|", d.rope_scaling.attention_factor,
      "|", d.qk_norm, "|", absl::StrJoin(d.eos_token_ids, ","), "|", d.byte_tokenizer);
  uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : text) {
    h ^= static_cast<unsigned char>(ch);
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace shardlm
