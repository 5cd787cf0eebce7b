#include "serve/openai_api.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using Json = nlohmann::json;

struct Fixture {
  ModelDims dims;
  ApiLimits limits;
  Encoder encode = [](const std::string& s) {
    std::vector<int32_t> ids;
    for (unsigned char c : s) ids.push_back(c);
    return ids;
  };
  Decoder decode = [](const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t id : ids) s += static_cast<char>(id);
    return s;
  };
  Fixture() {
    dims.vocab = 300;
    dims.max_positions = 64;
    dims.eos_token_ids = {299};
    limits.dims = &dims;
    limits.served_model = "tiny";
  }
  absl::StatusOr<CompletionRequest> Parse(const std::string& body, ApiError* e) {
    return ParseCompletionRequest(body, limits, encode, decode, e);
  }
};

TEST(OpenAiApiTest, ParsesTheCommonFields) {
  Fixture f;
  ApiError e;
  auto r = f.Parse(R"({"model": "tiny", "prompt": "hi", "max_tokens": 5, "temperature": 0,
                       "top_p": 0.5, "top_k": -1, "seed": 7, "stop": ["\n"], "stream": true,
                       "stream_options": {"include_usage": true}, "logprobs": 0, "echo": true,
                       "user": "u", "n": 1})",
                   &e);
  ASSERT_TRUE(r.ok()) << e.message;
  EXPECT_EQ(r->sequence.prompt, (std::vector<int32_t>{'h', 'i'}));
  EXPECT_EQ(r->prompt_text, "hi");
  EXPECT_EQ(r->sequence.max_new_tokens, 5);
  EXPECT_EQ(r->sequence.sampling.temperature, 0.0);
  EXPECT_EQ(r->sequence.sampling.top_p, 0.5);
  EXPECT_EQ(r->sequence.sampling.top_k, 0);
  EXPECT_EQ(r->sequence.sampling.seed, 7u);
  EXPECT_EQ(r->sequence.stop, (std::vector<std::string>{"\n"}));
  EXPECT_TRUE(r->sequence.stop_ids.count(299));
  EXPECT_TRUE(r->stream && r->echo && r->logprobs);
  // Token ids, the one-prompt list forms, OpenAI's defaults.
  r = f.Parse(R"({"prompt": [[5, 6]]})", &e);
  ASSERT_TRUE(r.ok()) << e.message;
  EXPECT_EQ(r->sequence.prompt, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(r->sequence.max_new_tokens, 16);
  EXPECT_EQ(r->sequence.sampling.temperature, 1.0);
  r = f.Parse(R"({"prompt": ["ab"]})", &e);
  ASSERT_TRUE(r.ok()) << e.message;
  EXPECT_EQ(r->sequence.prompt.size(), 2u);
}

TEST(OpenAiApiTest, BadRequestsNameTheField) {
  Fixture f;
  const std::tuple<std::string, int, std::string> cases[] = {
      {"{", 400, ""},
      {"[1]", 400, ""},
      {R"({"prompt": "x", "max_token": 3})", 400, "max_token"},
      {R"({"model": "other", "prompt": "x"})", 404, "model"},
      {R"({"max_tokens": 3})", 400, "prompt"},
      {R"({"prompt": 3})", 400, "prompt"},
      {R"({"prompt": ""})", 400, "prompt"},
      {R"({"prompt": ["a", "b"]})", 400, "prompt"},
      {R"({"prompt": [1, 300]})", 400, "prompt"},
      {R"({"prompt": "x", "max_tokens": "3"})", 400, "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 64})", 400, "max_tokens"},
      {R"({"prompt": ")" + std::string(64, 'a') + R"("})", 400, "prompt"},
      {R"({"prompt": "x", "temperature": -1})", 400, "temperature"},
      {R"({"prompt": "x", "top_p": 0})", 400, "top_p"},
      {R"({"prompt": "x", "seed": -2})", 400, "seed"},
      {R"({"prompt": "x", "stop": [""]})", 400, "stop"},
      {R"({"prompt": "x", "stop": 5})", 400, "stop"},
      {R"({"prompt": "x", "n": 2})", 400, "n"},
      {R"({"prompt": "x", "logprobs": 3})", 400, "logprobs"},
      {R"({"prompt": "x", "stream": "yes"})", 400, "stream"},
      {R"({"prompt": "x", "presence_penalty": 0.5})", 400, "presence_penalty"},
      {R"({"prompt": "x", "stop_token_ids": [400]})", 400, "stop_token_ids"},
  };
  for (const auto& [body, http, param] : cases) {
    ApiError e;
    auto r = f.Parse(body, &e);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(e.http_status, http) << body;
    EXPECT_EQ(e.param, param) << body << ": " << e.message;
    EXPECT_FALSE(e.message.empty());
    const Json j = Json::parse(e.Body());
    EXPECT_EQ(j["error"]["message"], e.message);
  }
}

TEST(OpenAiApiTest, ResponsesHaveTheApiShape) {
  Fixture f;
  ApiError e;
  auto r = f.Parse(R"({"prompt": "ab", "logprobs": 0, "echo": true})", &e);
  ASSERT_TRUE(r.ok());
  SequenceResult result;
  result.prompt_len = 2;
  result.generated = {'c', 'd'};
  result.logprobs = {-0.5, -1.5};
  result.text = "cd";
  result.finish_reason = "length";
  const ResponseHeader h{"cmpl-1", 1700000000, "tiny"};
  const Json body = Json::parse(CompletionBody(h, *r, result, f.decode));
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], "abcd");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][0]["logprobs"]["tokens"], Json::array({"c", "d"}));
  EXPECT_EQ(body["choices"][0]["logprobs"]["text_offset"], Json::array({2, 3}));
  EXPECT_EQ(body["usage"]["total_tokens"], 4);
  const std::string chunk =
      CompletionChunk(h, *r, "c", {{'c', -0.5, "c"}}, nullptr, f.decode);
  ASSERT_EQ(chunk.rfind("data: ", 0), 0u);
  ASSERT_EQ(chunk.substr(chunk.size() - 2), "\n\n");
  const Json c = Json::parse(chunk.substr(6));
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(c.contains("usage"));
  const Json last = Json::parse(CompletionChunk(h, *r, "d", {}, &result, f.decode).substr(6));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["usage"]["completion_tokens"], 2);
}

TEST(OpenAiApiTest, ChatRendersTheTemplate) {
  Fixture f;
  auto t = ChatTemplate::Parse(
      "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}");
  ASSERT_TRUE(t.ok());
  f.limits.chat_template = t->get();
  f.limits.bos_token = "^";
  f.limits.encode_raw = f.encode;
  ApiError e;
  auto r = ParseChatRequest(
      R"({"messages": [{"role": "system", "content": "s"},
                       {"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": "b"}]}],
          "max_completion_tokens": 4, "logprobs": true, "stream": true})",
      f.limits, f.decode, &e);
  ASSERT_TRUE(r.ok()) << e.message;
  EXPECT_TRUE(r->chat);
  EXPECT_EQ(r->prompt_text, "^<system>s<user>ab<assistant>");
  EXPECT_EQ(r->sequence.prompt.size(), r->prompt_text.size());
  EXPECT_EQ(r->sequence.max_new_tokens, 4);
  EXPECT_TRUE(r->logprobs && r->stream);
  // Without max_tokens a chat runs to the end of the context.
  r = ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}]})", f.limits, f.decode, &e);
  ASSERT_TRUE(r.ok()) << e.message;
  EXPECT_EQ(r->sequence.max_new_tokens, 64 - static_cast<int64_t>(r->sequence.prompt.size()));
  const std::pair<std::string, std::string> bad[] = {
      {R"({"messages": []})", "messages"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "prompt": "x"})", "prompt"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})",
       "tool_choice"},
  };
  for (const auto& [body, param] : bad) {
    ApiError err;
    EXPECT_FALSE(ParseChatRequest(body, f.limits, f.decode, &err).ok()) << body;
    EXPECT_EQ(err.param, param) << body << ": " << err.message;
  }
  // A model without a template.
  f.limits.chat_template = nullptr;
  ApiError err;
  EXPECT_FALSE(ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}]})", f.limits,
                                f.decode, &err)
                   .ok());
  EXPECT_NE(err.message.find("no chat template"), std::string::npos);

  SequenceResult result;
  result.prompt_len = 3;
  result.generated = {'o', 'k'};
  result.logprobs = {-1, -2};
  result.text = "ok";
  result.finish_reason = "stop";
  const ResponseHeader h{"chatcmpl-1", 1, "tiny"};
  CompletionRequest chat;
  chat.chat = true;
  chat.logprobs = true;
  const Json body = Json::parse(CompletionBody(h, chat, result, f.decode));
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "ok");
  EXPECT_EQ(body["choices"][0]["logprobs"]["content"][1]["token"], "k");
  const Json role = Json::parse(ChatRoleChunk(h).substr(6));
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  const Json last = Json::parse(CompletionChunk(h, chat, "", {}, &result, f.decode).substr(6));
  EXPECT_EQ(last["object"], "chat.completion.chunk");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
}

}  // namespace
}  // namespace shardlm
