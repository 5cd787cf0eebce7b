#include "engine/config.h"

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

TEST(ConfigTest, FamiliesResolve) {
  auto gta = Resolve(absl::StrCat("{", kBase, R"(, "attention_type": "gta", "num_key_value_heads": 2})"));
  ASSERT_TRUE(gta.ok()) << gta.status();
  EXPECT_EQ(gta->rope_dim, 8);  // d_h / 2
  EXPECT_EQ(gta->CacheRowFloats(2), 2 * 16 + 8);
  auto gla = Resolve(absl::StrCat("{", kBase, R"(, "attention_type": "gla", "num_latent_heads": 2,
      "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12})"));
  ASSERT_TRUE(gla.ok()) << gla.status();
  EXPECT_EQ(gla->QkHeadDim(), 24);
  EXPECT_EQ(gla->VHeadDim(), 12);
  EXPECT_NEAR(gla->softmax_scale, 1 / std::sqrt(24.0), 1e-15);
  EXPECT_EQ(gla->CacheRowFloats(1), 32 + 8);
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
