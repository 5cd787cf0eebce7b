// Chat templates: the Jinja subset that Hugging Face models' `chat_template`s use (Llama 3,
// Qwen3, DeepSeek V3, Mistral), rendered as transformers' apply_chat_template renders them
// (jinja2 with trim_blocks and lstrip_blocks).
//
// Supported: text, {{ expr }}, {% if/elif/else %}, {% for x in e [if c] %} (and `for a, b in`,
// `loop.index/index0/first/last/length/revindex`, {% else %}), {% set x = e %},
// {% set ns.attr = e %}, {# comments #}, whitespace control (-) ; expressions with literals
// (strings, numbers, lists, dicts, true/false/none), names, `.attr`, `[key]`, slices, `+ - * / //
// % ~`, comparisons, `in`/`not in`, `and/or/not`, `x if c else y`, filters (trim, tojson, length,
// upper, lower, first, last, join, default, string, int, list, reverse, capitalize, title,
// replace, items), tests (defined, undefined, none, string, number, integer, float, boolean,
// mapping, sequence, iterable, true, false, odd, even, equalto), string methods (strip, lstrip,
// rstrip, startswith, endswith, split, upper, lower, title, capitalize, replace), dict methods
// (items, keys, values, get), and namespace(), raise_exception(), range(), strftime_now().
// Anything else is an error at Parse time naming the construct.
#ifndef SHARDLM_TOKENIZER_CHAT_TEMPLATE_H_
#define SHARDLM_TOKENIZER_CHAT_TEMPLATE_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace shardlm {

class ChatTemplate {
 public:
  using Json = nlohmann::ordered_json;

  // Parses a template; an unsupported construct is an error naming it (and its line).
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> Parse(std::string_view source);
  ~ChatTemplate();

  // Renders with `context`'s keys as variables (messages, add_generation_prompt, bos_token,
  // eos_token, tools, …). A template's raise_exception() or an operation on the wrong types is
  // an error carrying its message. Templates come with model files, so a render is bounded:
  // nesting 200 deep, 10 million steps, 2 seconds, 64 MB per value and of output, a million
  // items per list made in one piece, and 512 MB built in all (every value made or copied,
  // characters split, text joined or replaced), each an error when passed.
  absl::StatusOr<std::string> Render(const Json& context) const;

  struct Node;  // the parsed template (chat_template.cc)

 private:
  ChatTemplate() = default;
  std::unique_ptr<Node> root_;
};

// The template of a model directory: tokenizer_config.json's "chat_template" (a string, or the
// list form [{"name", "template"}] whose "default" entry is taken), else chat_template.jinja
// (null when there is none); and the bos_token / eos_token strings templates print.
struct ModelChatTemplate {
  std::unique_ptr<ChatTemplate> chat_template;
  std::string bos_token, eos_token;
};
absl::StatusOr<ModelChatTemplate> LoadChatTemplate(const std::string& model_dir);

}  // namespace shardlm

#endif  // SHARDLM_TOKENIZER_CHAT_TEMPLATE_H_
