#include "engine/requests.h"

#include "gtest/gtest.h"

namespace shardlm {
namespace {

ModelDims SmallModel() {
  ModelDims d;
  d.vocab = 259;
  d.max_positions = 8;
  d.bos_token_id = 256;
  d.eos_token_ids = {257};
  d.byte_tokenizer = true;
  return d;
}

JsonObject Parse(const std::string& line) {
  absl::StatusOr<JsonObject> object = ParseJsonObject(line);
  EXPECT_TRUE(object.ok()) << object.status();
  return object.ok() ? *object : JsonObject();
}

TEST(RequestsTest, ScoreRequest) {
  auto r = ParseScoreRequest(Parse(R"({"id": 3, "text": "ab"})"), SmallModel());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, (std::vector<int32_t>{256, 'a', 'b'}));
  EXPECT_EQ(IdKey(r->id), "n:3");
  r = ParseScoreRequest(Parse(R"({"id": 3, "tokens": [1, 2, 3, 4, 5, 6, 7, 8, 9]})"), SmallModel());
  EXPECT_NE(r.status().message().find("exceed max_position_embeddings=8"), std::string::npos)
      << r.status();
}

TEST(RequestsTest, DecodeRequestDefaultsAndLimits) {
  SamplingParams defaults;
  defaults.temperature = 0.5;
  auto r = ParseDecodeRequest(Parse(R"({"id": "a", "tokens": [1], "stop_token_ids": [9]})"),
                              SmallModel(), 4, defaults);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->max_new_tokens, 4);
  EXPECT_EQ(r->sampling.temperature, 0.5);
  EXPECT_EQ(r->stop_ids, (std::set<int32_t>{9, 257}));
  const std::pair<std::string, std::string> bad[] = {
      {R"({"id": "a", "tokens": [1], "max_new_tokens": 9})",
       "\"max_new_tokens\" must be in [1, 8]"},
      {R"({"id": "a", "tokens": [1, 2, 3, 4, 5, 6, 7, 8]})", "leaves no room"},
      {R"({"id": "a", "tokens": [1], "top_p": 0})", "\"top_p\" must be in (0, 1]"},
      {R"({"id": "a", "tokens": [1], "stop_token_ids": [259]})", "outside the vocabulary"},
      {R"({"tokens": [1]})", "missing \"id\""},
  };
  for (const auto& [line, message] : bad) {
    r = ParseDecodeRequest(Parse(line), SmallModel(), 4, defaults);
    EXPECT_NE(r.status().message().find(message), std::string::npos) << line << " → " << r.status();
  }
}

}  // namespace
}  // namespace shardlm
