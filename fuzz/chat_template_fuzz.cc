// Fuzz target: chat templates (tokenizer/chat_template.h), which come with model files.
// Contract: any text either fails to parse with a message, or parses and then renders a fixed
// conversation to a string or fails with a message, within bounded time and memory (nesting,
// steps and output are bounded); no crash, hang or undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using shardlm::ChatTemplate;
  const std::string_view source(reinterpret_cast<const char*>(data), size);
  auto t = ChatTemplate::Parse(source);
  if (!t.ok()) {
    FUZZ_CHECK(!t.status().message().empty(), "a parse error without a message");
    return 0;
  }
  static const ChatTemplate::Json context = ChatTemplate::Json::parse(R"({
      "messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Hi 👋"},
                   {"role": "assistant", "content": null, "tool_calls": [
                       {"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
                   {"role": "tool", "content": "42"}],
      "tools": [{"type": "function", "function": {"name": "f"}}],
      "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})");
  auto out = (*t)->Render(context);
  if (!out.ok()) FUZZ_CHECK(!out.status().message().empty(), "a render error without a message");
  return 0;
}
