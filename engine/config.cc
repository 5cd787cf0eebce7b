#include "engine/config.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "absl/strings/str_join.h"
#include "base/status.h"
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

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json, const std::string& source) {
  if (absl::Status depth = CheckJsonDepth(json); !depth.ok()) {
    return ConfigError(source, absl::StrCat("not a valid JSON object: ", depth.message()));
  }
  Struct root;
  auto parsed = google::protobuf::util::JsonStringToMessage(json, &root);
  if (!parsed.ok()) {
    return ConfigError(source, absl::StrCat("not a valid JSON object: ", parsed.message().ToString()));
  }
  // eos_token_id: int, list of ints, or null.
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
    // The proto field is int32 like every other id; a wider value must not wrap
    // around into the vocabulary.
    if (id < INT32_MIN || id > INT32_MAX) {
      return ConfigError(source, absl::StrCat("eos_token_id=", id, " does not fit in 32 bits"));
    }
    config.add_eos_token_ids(static_cast<int32_t>(id));
  }
  return config;
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return ParseModelConfig(text.str(), path);
}

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
  std::string type = c.has_attention_type() ? c.attention_type() : (h_kv_given == h_q ? "mha" : "gqa");
  if (type == "mha") d.type = AttentionType::kMha;
  else if (type == "mqa") d.type = AttentionType::kMqa;
  else if (type == "gqa") d.type = AttentionType::kGqa;
  else if (type == "gta") d.type = AttentionType::kGta;
  else if (type == "mla") d.type = AttentionType::kMla;
  else if (type == "gla") d.type = AttentionType::kGla;
  else {
    return ConfigError(source, absl::StrCat("unknown attention_type \"", type,
                                            "\"; expected one of mha, mqa, gqa, gta, mla, gla"));
  }

  if (!IsLatent(d.type)) {
    int64_t h_kv = c.has_num_key_value_heads() ? c.num_key_value_heads()
                                               : (d.type == AttentionType::kMqa ? 1 : h_q);
    if (h_kv <= 0) {
      return ConfigError(source, absl::StrCat("\"num_key_value_heads\" must be positive, got ", h_kv));
    }
    if (d.type == AttentionType::kMha && h_kv != h_q) {
      return ConfigError(source, absl::StrCat("mha needs num_key_value_heads == num_attention_heads (",
                                              h_q, "), got ", h_kv));
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
    const int64_t h_c = c.has_num_latent_heads() ? c.num_latent_heads()
                                                 : (d.type == AttentionType::kMla ? 1 : 0);
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
    return ConfigError(source, absl::StrCat("\"sliding_window\" must be >= 0, got ", d.sliding_window));
  }
  d.max_positions = c.has_max_position_embeddings() ? c.max_position_embeddings() : 4096;
  if (d.max_positions <= 0) {
    return ConfigError(source, absl::StrCat("\"max_position_embeddings\" must be positive, got ",
                                            d.max_positions));
  }
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(d.QkHeadDim()));
  d.softmax_scale = c.has_softmax_scale() ? c.softmax_scale() : default_scale;
  if (!(d.softmax_scale > 0) || !std::isfinite(d.softmax_scale)) {
    return ConfigError(source, absl::StrCat("\"softmax_scale\" must be positive, got ",
                                            d.softmax_scale));
  }
  d.tie_word_embeddings = c.tie_word_embeddings();
  d.bos_token_id = c.has_bos_token_id() ? c.bos_token_id() : -1;
  if (d.bos_token_id >= d.vocab) {
    return ConfigError(source, absl::StrCat("bos_token_id=", d.bos_token_id,
                                            " is outside the vocabulary of ", d.vocab));
  }
  for (int64_t id : c.eos_token_ids()) {
    if (id < 0 || id >= d.vocab) {
      return ConfigError(source, absl::StrCat("eos_token_id=", id, " is outside the vocabulary of ",
                                              d.vocab));
    }
    d.eos_token_ids.push_back(id);
  }
  if (c.has_tokenizer()) {
    if (c.tokenizer() != "bytes") {
      return ConfigError(source, absl::StrCat("unknown tokenizer \"", c.tokenizer(),
                                              "\"; only \"bytes\" is built in"));
    }
    if (d.vocab < 256) {
      return ConfigError(source, absl::StrCat("the bytes tokenizer needs vocab_size >= 256, got ",
                                              d.vocab));
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
      absl::StrJoin(d.eos_token_ids, ","), "|", d.byte_tokenizer);
  uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : text) {
    h ^= static_cast<unsigned char>(ch);
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace shardlm
