#include "coordinator/requests.h"

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
  EXPECT_NE(r.status().message().find("exceed the context length 8"), std::string::npos)
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

// Found by fuzz/request_fuzz.cc (corpus/request/regression-invalid-utf8-in-error):
// protobuf's parse error quotes the input, so a bad line with a byte like \xC0
// gave an error line that was not valid JSON (not UTF-8).
TEST(RequestsTest, ErrorLineOfABinaryLineIsValidJson) {
  const std::string line = "{\"id\xc0\xb8\": \"bb, \"text\": [2]$";
  absl::StatusOr<JsonObject> object = ParseJsonObject(line);
  ASSERT_FALSE(object.ok());
  const std::string out = ErrorLine(nullptr, std::string(object.status().message())).ToString();
  absl::StatusOr<JsonObject> reread = ParseJsonObject(out);
  ASSERT_TRUE(reread.ok()) << reread.status() << "\n" << out;
  EXPECT_NE(out.find("\xef\xbf\xbd"), std::string::npos) << out;  // U+FFFD for the bad bytes
}

// protobuf's JSON parser is quadratic in nesting depth: a 40 KB line of '['
// took minutes (found probing the request fuzz target with deep inputs).
TEST(RequestsTest, DeepNestingIsRejectedBeforeParsing) {
  const std::string deep = R"({"id": 1, "tokens": )" + std::string(1 << 20, '[');
  absl::StatusOr<JsonObject> object = ParseJsonObject(deep);
  EXPECT_NE(object.status().message().find("nests deeper than 32 levels"), std::string::npos)
      << object.status();
  object = ParseJsonObject(R"({"id": 1, "tokens": [1]]]]][[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[)");
  EXPECT_NE(object.status().message().find("unbalanced"), std::string::npos) << object.status();
  // Brackets inside strings (either quote, escaped quotes) are text.
  const std::string brackets(100, '[');
  EXPECT_TRUE(CheckJsonDepth(R"({"text": ")" + brackets + R"(\"[", 'x': '\'[[['})").ok());
  EXPECT_TRUE(CheckJsonDepth(std::string(32, '[') + std::string(32, ']')).ok());
  EXPECT_FALSE(CheckJsonDepth(std::string(33, '[') + std::string(33, ']')).ok());
}

// Integer ids past 10^6 that shared their first 6 digits got the same IdKey, so
// `score` and `decode` rejected the second request as a "duplicate id".
TEST(RequestsTest, IdKeysOfLargeIntegerIdsDiffer) {
  EXPECT_NE(IdKey(NumberValue(1000001)), IdKey(NumberValue(1000002)));
  EXPECT_NE(IdKey(NumberValue(2147483647)), IdKey(NumberValue(2147483648)));
  EXPECT_EQ(IdKey(NumberValue(9007199254740991)), "n:9007199254740991");
  EXPECT_NE(IdKey(NumberValue(7)), IdKey(StringValue("7")));
}

}  // namespace
}  // namespace shardlm
