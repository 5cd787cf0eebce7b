// Renders chat templates for the reference check against jinja2 (tests/tokenizer/
// chat_templates.py). usage: chat_template_render < CASES.jsonl
// Each input line {"template", "context"} gives one output line {"text"} or {"error"}.
#include <iostream>
#include <string>

#include "nlohmann/json.hpp"
#include "tokenizer/chat_template.h"

int main() {
  using Json = nlohmann::ordered_json;
  std::string line;
  while (std::getline(std::cin, line)) {
    const Json c = Json::parse(line);
    Json out = Json::object();
    auto t = shardlm::ChatTemplate::Parse(c["template"].get<std::string>());
    if (!t.ok()) {
      out["error"] = std::string(t.status().message());
    } else {
      auto text = (*t)->Render(c["context"]);
      if (text.ok()) {
        out["text"] = *text;
      } else {
        out["error"] = std::string(text.status().message());
      }
    }
    std::cout << out.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
  }
  return 0;
}
