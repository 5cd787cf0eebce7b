#include "engine/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

absl::StatusOr<ModelDims> Resolve(const std::string& json) {
  auto config = ParseModelConfig(json, "config.json");
  if (!config.ok()) return config.status();
  return ResolveDims(*config, "config.json");
}

constexpr char kBase[] =
    R"("hidden_size": 64, "intermediate_size": 100, "num_hidden_layers": 2,
       "num_attention_heads": 4, "vocab_size": 300)";

TEST(ConfigTest, DefaultsAndHfExtras) {
  auto d = Resolve(absl::StrCat("{", kBase, R"(, "architectures": ["LlamaForCausalLM"],
      "torch_dtype": "bfloat16", "eos_token_id": [1, 2], "sliding_window": null})"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->type, AttentionType::kMha);
  EXPECT_EQ(d->num_kv_heads, 4);
  EXPECT_EQ(d->head_dim, 16);
  EXPECT_EQ(d->rope_dim, 16);
  EXPECT_EQ(d->sliding_window, 0);
  EXPECT_DOUBLE_EQ(d->softmax_scale, 0.25);
  EXPECT_EQ(d->eos_token_ids, (std::vector<int64_t>{1, 2}));
  d = Resolve(absl::StrCat("{", kBase, R"(, "num_key_value_heads": 2, "eos_token_id": 7})"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->type, AttentionType::kGqa);
  EXPECT_EQ(d->eos_token_ids, (std::vector<int64_t>{7}));
}

// Configs as Hugging Face publishes them (the text of Llama-3.2-1B's and Qwen3-0.6B's
// config.json): the architecture decides the family and its extras.
TEST(ConfigTest, PublishedConfigsResolve) {
  auto llama = Resolve(R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false,
      "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64,
      "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
      "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
      "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
      "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->type, AttentionType::kGqa);
  EXPECT_EQ(llama->num_kv_heads, 8);
  EXPECT_TRUE(llama->tie_word_embeddings);
  EXPECT_EQ(llama->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(llama->rope_scaling.factor, 32.0);
  EXPECT_EQ(llama->rope_scaling.original_max_positions, 8192);
  EXPECT_FALSE(llama->qk_norm);

  auto qwen3 = Resolve(R"({"architectures": ["Qwen3ForCausalLM"], "attention_bias": false,
      "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128,
      "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
      "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
      "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
      "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": null,
      "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
      "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
      "vocab_size": 151936})");
  ASSERT_TRUE(qwen3.ok()) << qwen3.status();
  EXPECT_TRUE(qwen3->qk_norm);
  EXPECT_EQ(qwen3->head_dim, 128);
  EXPECT_EQ(qwen3->rope_scaling.type, RopeScaling::Type::kNone);

  // Qwen2 keeps sliding_window in its config with use_sliding_window false: no window.
  auto qwen2 = Resolve(absl::StrCat("{", kBase, R"(, "architectures": ["Qwen2ForCausalLM"],
      "num_key_value_heads": 2, "sliding_window": 4096, "use_sliding_window": false})"));
  ASSERT_TRUE(qwen2.ok()) << qwen2.status();
  EXPECT_EQ(qwen2->sliding_window, 0);

  // A dense DeepSeek V2: MLA, interleaved RoPE, yarn, softmax × mscale(factor, all_dim)².
  auto deepseek = Resolve(absl::StrCat("{", kBase, R"(, "architectures": ["DeepseekV2ForCausalLM"],
      "num_key_value_heads": 4, "kv_lora_rank": 32, "q_lora_rank": null, "qk_nope_head_dim": 16,
      "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": null,
      "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                       "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                       "mscale_all_dim": 0.707}})"));
  ASSERT_TRUE(deepseek.ok()) << deepseek.status();
  EXPECT_EQ(deepseek->type, AttentionType::kMla);
  EXPECT_EQ(deepseek->num_kv_heads, 1);
  EXPECT_TRUE(deepseek->rope_interleave);
  EXPECT_EQ(deepseek->rope_scaling.type, RopeScaling::Type::kYarn);
  EXPECT_DOUBLE_EQ(deepseek->rope_scaling.attention_factor, 1.0);  // equal mscales
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(deepseek->softmax_scale, m * m / std::sqrt(24.0), 1e-12);
}

// An instruct model's end-of-turn ids come from generation_config.json, joined to config.json's.
TEST(ConfigTest, GenerationConfigAddsEosIds) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/gen_config_test");
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
  };
  write("config.json", absl::StrCat("{", kBase, R"(, "eos_token_id": 7})"));
  write("generation_config.json", R"({"bos_token_id": 1, "eos_token_id": [7, 9, 12],
                                      "do_sample": true, "temperature": 0.6})");
  auto config = ReadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto d = ResolveDims(*config, "config.json");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->eos_token_ids, (std::vector<int64_t>{7, 9, 12}));
  write("generation_config.json", R"({"eos_token_id": "x"})");
  config = ReadModelConfig(dir);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("generation_config.json"), std::string::npos);
  std::filesystem::remove_all(dir);
}

// A key that changes the math and is not implemented is an error that names it.
TEST(ConfigTest, UnsupportedHfKeysAreNamed) {
  const std::string llama = absl::StrCat(kBase, R"(, "architectures": ["LlamaForCausalLM"])");
  const std::pair<std::string, std::string> cases[] = {
      {absl::StrCat("{", kBase, R"(, "architectures": ["GemmaForCausalLM"]})"),
       "architecture \"GemmaForCausalLM\" is not supported"},
      {absl::StrCat("{", llama, R"(, "rope_scaling": {"type": "dynamic", "factor": 2}})"),
       "\"rope_scaling\" of type \"dynamic\""},
      {absl::StrCat("{", llama, R"(, "rope_scaling": {"rope_type": "linear", "factor": 2,
           "finetuned": true}})"),
       "\"rope_scaling.finetuned\""},
      {absl::StrCat("{", llama, R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8}})"),
       "needs low_freq_factor"},
      {absl::StrCat("{", llama, R"(, "hidden_act": "gelu"})"), "\"hidden_act\""},
      {absl::StrCat("{", llama, R"(, "sliding_window": 512})"), "\"sliding_window\""},
      {absl::StrCat("{", llama, R"(, "partial_rotary_factor": 0.5})"), "partial_rotary_factor"},
      {absl::StrCat("{", llama, R"(, "attention_type": "gqa"})"), "\"attention_type\""},
      {absl::StrCat("{", llama, R"(, "layer_types": ["full_attention", "sliding_attention"]})"),
       "\"layer_types\""},
      {absl::StrCat("{", kBase, R"(, "architectures": ["Qwen2ForCausalLM"],
           "use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1})"),
       "\"max_window_layers\""},
      {absl::StrCat("{", kBase, R"(, "architectures": ["DeepseekV2ForCausalLM"],
           "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
           "n_routed_experts": 64, "first_k_dense_replace": 1})"),
       "mixture-of-experts layers are not supported"},
  };
  for (const auto& [json, needle] : cases) {
    auto d = Resolve(json);
    ASSERT_FALSE(d.ok()) << json;
    EXPECT_NE(d.status().message().find(needle), std::string::npos)
        << d.status().message() << "\n  wanted: " << needle;
  }
}

TEST(ConfigTest, FamiliesResolve) {
  auto gta =
      Resolve(absl::StrCat("{", kBase, R"(, "attention_type": "gta", "num_key_value_heads": 2})"));
  ASSERT_TRUE(gta.ok()) << gta.status();
  EXPECT_EQ(gta->rope_dim, 8);  // d_h / 2
  EXPECT_EQ(gta->CacheRowFloats(2), 2 * 16 + 8);
  EXPECT_EQ(gta->CacheRowSegments(2), (std::vector<int64_t>{16, 16, 8}));
  auto gla = Resolve(absl::StrCat("{", kBase, R"(, "attention_type": "gla", "num_latent_heads": 2,
      "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12})"));
  ASSERT_TRUE(gla.ok()) << gla.status();
  EXPECT_EQ(gla->QkHeadDim(), 24);
  EXPECT_EQ(gla->VHeadDim(), 12);
  EXPECT_NEAR(gla->softmax_scale, 1 / std::sqrt(24.0), 1e-15);
  EXPECT_EQ(gla->CacheRowFloats(1), 32 + 8);
  EXPECT_EQ(gla->CacheRowSegments(1), (std::vector<int64_t>{32, 8}));
}

TEST(ConfigTest, BadConfigsNameTheProblem) {
  const std::pair<std::string, std::string> cases[] = {
      {"not json", "not a valid JSON"},
      {"[1, 2]", "not a valid JSON"},
      {R"({"hidden_size": 64})", "missing \"intermediate_size\""},
      {absl::StrCat("{", kBase, R"(, "attention_type": "xqa"})"), "unknown attention_type \"xqa\""},
      {absl::StrCat("{", kBase, R"(, "num_key_value_heads": 3})"), "not a multiple"},
      {absl::StrCat("{", kBase, R"(, "attention_type": "mqa", "num_key_value_heads": 2})"),
       "mqa needs"},
      {absl::StrCat("{", kBase, R"(, "attention_type": "mha", "num_key_value_heads": 2})"),
       "mha needs"},
      {absl::StrCat("{", kBase, R"(, "hidden_size": 8})"), "Repeated map key"},
      {absl::StrCat("{", kBase, R"(, "head_dim": "big"})"), "bad value"},
      {absl::StrCat("{", kBase, R"(, "max_position_embeddings": -64})"), "must be positive"},
      {absl::StrCat("{", kBase, R"(, "attention_type": "mla", "kv_lora_rank": 8})"),
       "missing \"qk_nope_head_dim\""},
      {absl::StrCat("{", kBase, R"(, "attention_type": "gla", "kv_lora_rank": 8,
          "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8})"),
       "num_latent_heads"},
      {absl::StrCat("{", kBase, R"(, "attention_type": "gta", "qk_rope_head_dim": 7})"), "even"},
      {absl::StrCat("{", kBase, R"(, "eos_token_id": 300})"), "outside the vocabulary"},
      {absl::StrCat("{", kBase, R"(, "eos_token_id": 1.5})"), "must be an integer"},
      {absl::StrCat("{", kBase, R"(, "tokenizer": "bpe"})"), "unknown tokenizer"},
      {absl::StrCat("{", kBase, R"(, "rms_norm_eps": 0})"), "rms_norm_eps"},
      // Found in review beside the config fuzz target: 2^32 + 1 used to wrap to id 1.
      {absl::StrCat("{", kBase, R"(, "eos_token_id": [2, 4294967297]})"),
       "eos_token_id=4294967297 does not fit in 32 bits"},
      // protobuf's JSON parser is quadratic in nesting depth: rejected before it.
      {absl::StrCat("{", kBase, R"(, "rope_scaling": )", std::string(1 << 20, '['), "}"),
       "nests deeper than 32 levels"},
  };
  for (const auto& [json, expected] : cases) {
    auto d = Resolve(json);
    ASSERT_FALSE(d.ok()) << json;
    EXPECT_NE(d.status().message().find(expected), std::string::npos)
        << json << " -> " << d.status();
    EXPECT_NE(d.status().message().find("config.json"), std::string::npos) << d.status();
  }
}

TEST(ConfigTest, JsonRoundTripAndFingerprint) {
  auto config = ParseModelConfig(absl::StrCat("{", kBase, R"(, "eos_token_id": [5, 6]})"), "c");
  ASSERT_TRUE(config.ok());
  auto again = ParseModelConfig(ModelConfigToJson(*config), "c");
  ASSERT_TRUE(again.ok()) << again.status() << ModelConfigToJson(*config);
  EXPECT_EQ(again->SerializeAsString(), config->SerializeAsString());
  auto a = ResolveDims(*config, "c");
  ASSERT_TRUE(a.ok());
  ModelDims b = *a;
  EXPECT_EQ(DimsFingerprint(*a), DimsFingerprint(b));
  b.num_heads = 8;
  EXPECT_NE(DimsFingerprint(*a), DimsFingerprint(b));
}

}  // namespace
}  // namespace shardlm
