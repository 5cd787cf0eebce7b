#include "tokenizer/chat_template.h"

#include "gtest/gtest.h"

namespace shardlm {
namespace {

using Json = ChatTemplate::Json;

std::string Render(const std::string& source, const Json& context = Json::object()) {
  auto t = ChatTemplate::Parse(source);
  if (!t.ok()) return "PARSE ERROR: " + std::string(t.status().message());
  auto out = (*t)->Render(context);
  if (!out.ok()) return "RENDER ERROR: " + std::string(out.status().message());
  return *out;
}

TEST(ChatTemplateTest, ExpressionsAndStatements) {
  EXPECT_EQ(Render("a{{ 1 + 2 * 3 }}b"), "a7b");
  EXPECT_EQ(Render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 7 / 2 }} {{ 2 ** 3 }}"), "3 -4 1 3.5 8");
  EXPECT_EQ(Render("{{ 'a' ~ 1 ~ none }}"), "a1None");
  EXPECT_EQ(Render("{{ 'x' if flag else 'y' }}", {{"flag", true}}), "x");
  EXPECT_EQ(Render("{{ 'x' if flag }}|", Json::object()), "|");
  EXPECT_EQ(Render("{{ [1, 'a', none, true] }} {{ {'k': 1} }}"), "[1, 'a', None, True] {'k': 1}");
  EXPECT_EQ(Render("{{ 1.0 }} {{ 0.5 }} {{ true }}"), "1.0 0.5 True");
  EXPECT_EQ(Render("{% if a %}A{% elif b %}B{% else %}C{% endif %}", {{"b", 1}}), "B");
  EXPECT_EQ(Render("{% for x in xs %}{{ loop.index0 }}{{ x }}{% if not loop.last %},{% endif %}"
                   "{% endfor %}",
                   {{"xs", {"a", "b", "c"}}}),
            "0a,1b,2c");
  EXPECT_EQ(Render("{% for x in xs if x > 1 %}{{ x }}/{{ loop.length }} {% else %}none{% endfor %}",
                   {{"xs", {1, 2, 3}}}),
            "2/2 3/2 ");
  EXPECT_EQ(Render("{% for x in xs %}{% else %}empty{% endfor %}", {{"xs", Json::array()}}), "empty");
  EXPECT_EQ(Render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {{"d", {{"a", 1}, {"b", 2}}}}),
            "a=1;b=2;");
  // Scoping: a set inside a loop stays there; a namespace carries values out.
  EXPECT_EQ(Render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = 5 %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(Render("{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}"
                   "{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(Render("{{ xs[::-1] }} {{ xs[1:] }} {{ xs[-1] }} {{ 'abc'[1] }} {{ 'héllo'[1:3] }}",
                   {{"xs", {1, 2, 3}}}),
            "[3, 2, 1] [2, 3] 3 b él");
  EXPECT_EQ(Render("{{ m.role }}{{ m['role'] }}{{ m.missing is defined }}{{ m.content is none }}",
                   {{"m", {{"role", "user"}, {"content", nullptr}}}}),
            "useruserFalseTrue");
  EXPECT_EQ(Render("{{ 'b' in 'abc' }}{{ 2 not in [1, 2] }}{{ 'k' in {'k': 1} }}"), "TrueFalseTrue");
}

TEST(ChatTemplateTest, FiltersTestsAndMethods) {
  EXPECT_EQ(Render("{{ '  x \n' | trim }}|{{ xs | length }}|{{ 'ab' | upper }}|{{ xs | join('-') }}",
                   {{"xs", {1, 2}}}),
            "x|2|AB|1-2");
  EXPECT_EQ(Render("{{ v | tojson }}", {{"v", {{"a", {1, "é\n"}}, {"b", nullptr}}}}),
            R"({"a": [1, "é\n"], "b": null})");
  EXPECT_EQ(Render("{{ v | tojson(indent=2) }}", {{"v", {{"a", 1}}}}), "{\n  \"a\": 1\n}");
  EXPECT_EQ(Render("{{ missing | default('d') }}{{ xs | first }}{{ xs | last }}", {{"xs", {1, 2}}}),
            "d12");
  EXPECT_EQ(Render("{{ 3 is odd }}{{ 'a' is string }}{{ x is mapping }}{{ 1 is not number }}",
                   {{"x", Json::object()}}),
            "TrueTrueTrueFalse");
  EXPECT_EQ(Render("{{ ' a b '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'a,b,,c'.split(',') }}|"
                   "{{ ' a  b '.split() }}|{{ 'ab'.startswith('a') }}{{ 'ab'.endswith('a') }}|"
                   "{{ 'a<think>b</think>c'.split('</think>')[-1] }}|{{ '\\n\\nx'.lstrip('\\n') }}"),
            "a b|hi|['a', 'b', '', 'c']|['a', 'b']|TrueFalse|c|x");
  EXPECT_EQ(Render("{{ d.get('a') }}{{ d.get('z', 'no') }}{{ d.keys() | list }}", {{"d", {{"a", 1}}}}),
            "1no['a']");
}

TEST(ChatTemplateTest, WhitespaceControlTrimAndLstripBlocks) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it.
  EXPECT_EQ(Render("{% if true %}\n  yes\n{% endif %}\nend"), "  yes\nend");
  EXPECT_EQ(Render("a\n    {% if true %}b{% endif %}"), "a\nb");
  EXPECT_EQ(Render("a  {% if true %}b{% endif %}"), "a  b");  // not at a line start
  EXPECT_EQ(Render("a {{- ' b ' -}} c"), "a b c");
  EXPECT_EQ(Render("x\n{%- if true -%}\n  y  \n{%- endif %}"), "xy");
  EXPECT_EQ(Render("{# comment #}\nz"), "z");
  EXPECT_EQ(Render("{{ 'a' }}\n{{ 'b' }}"), "a\nb");  // expressions keep their newline
}

TEST(ChatTemplateTest, ErrorsNameTheConstruct) {
  EXPECT_NE(Render("{% macro m() %}{% endmacro %}").find("'macro' tag is not supported"), std::string::npos);
  EXPECT_NE(Render("{{ x | wordcount }}").find("filter 'wordcount'"), std::string::npos);
  EXPECT_NE(Render("{{ x is divisibleby(3) }}").find("test 'divisibleby'"), std::string::npos);
  EXPECT_NE(Render("{{ x.format(1) }}").find("method .format()"), std::string::npos);
  EXPECT_NE(Render("{{ cycler() }}").find("function cycler()"), std::string::npos);
  EXPECT_NE(Render("{% if x %}").find("ends before {% endif %}"), std::string::npos);
  EXPECT_NE(Render("{% endfor %}").find("without its opening tag"), std::string::npos);
  EXPECT_NE(Render("{{ 'a' ").find("not closed"), std::string::npos);
  EXPECT_NE(Render("{{ raise_exception('Roles must alternate') }}").find("Roles must alternate"),
            std::string::npos);
  EXPECT_NE(Render("{{ 'a' + 1 }}").find("RENDER ERROR"), std::string::npos);
  EXPECT_NE(Render("{{ x.y }}").find("undefined"), std::string::npos);
}

// Templates come with model files: none may exhaust the stack, the time or the memory.
TEST(ChatTemplateTest, BoundsOnNestingStepsAndSize) {
  std::string deep_expr = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_NE(Render(deep_expr).find("nests too deeply"), std::string::npos);
  std::string deep_not = "{{ " ;
  for (int i = 0; i < 5000; ++i) deep_not += "not ";
  EXPECT_NE(Render(deep_not + "1 }}").find("nests too deeply"), std::string::npos);
  std::string deep_blocks;
  for (int i = 0; i < 5000; ++i) deep_blocks += "{% if 1 %}";
  EXPECT_NE(Render(deep_blocks).find("nest more than 100 deep"), std::string::npos);
  EXPECT_NE(Render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
                .find("runs too long"),
            std::string::npos);
  EXPECT_NE(Render("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                   "{% endfor %}")
                .find("beyond 64 MB"),
            std::string::npos);
  EXPECT_EQ(Render("{% for i in range(3) %}{{ i }}{% endfor %}"), "012");
}

// A 32 MB string is a legal value; what a template makes of it is bounded, and reading it is
// cheap (its length and characters are found without splitting it).
TEST(ChatTemplateTest, BoundsOnWhatARenderBuilds) {
  const std::string big =
      "{% set ns = namespace(s='a') %}{% for i in range(25) %}{% set ns.s = ns.s + ns.s %}"
      "{% endfor %}";
  EXPECT_EQ(Render(big + "{{ ns.s|length }} {{ ns.s[-1] }} {{ ns.s|last }} {{ ns.s[7] }}"),
            "33554432 a a a");
  for (const char* expand : {
           "{{ ns.s|list|length }}",           // 32 M values of one character
           "{{ ns.s.split('a')|length }}",     // 32 M empty strings
           "{% for c in ns.s %}{% endfor %}",  // 32 M loop items
           "{{ ns.s[::2]|length }}",           // a slice by characters
           "{{ ns.s|reverse|length }}",
       }) {
    EXPECT_NE(Render(big + expand).find("beyond 1 million items"), std::string::npos) << expand;
  }
  // A list of a million items is fine; one more is not.
  EXPECT_EQ(Render("{{ (range(999999) + [1])|length }}"), "1000000");
  EXPECT_NE(Render("{{ (range(1000000) + [1])|length }}").find("beyond 1 million items"),
            std::string::npos);
  for (const char* expand : {
           "{% for i in range(100) %}{% set t = ns.s %}{% endfor %}",  // copies, 3.2 GB in all
           "{{ [ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, ns.s, "
           "ns.s, ns.s, ns.s]|length }}",
       }) {
    EXPECT_NE(Render(big + expand).find("builds more than 512 MB"), std::string::npos) << expand;
  }
  for (const char* expand : {
           "{{ ns.s|replace('a', 'bbb')|length }}",  // 96 MB
           "{{ ns.s.replace('a', 'bbb')|length }}",
           "{{ range(100000)|join(ns.s)|length }}",  // 3 TB
           // 32 MB + 1 for the 'b', then the 32 MB after it: the tail counts as well.
           "{{ ('b' + ns.s).replace('b', ns.s + 'c')|length }}",
       }) {
    EXPECT_NE(Render(big + expand).find("a value grows beyond 64 MB"), std::string::npos) << expand;
  }
  EXPECT_NE(Render("{{ [[[1]]]|tojson(indent=1000000000) }}").find("beyond 64 MB"),
            std::string::npos);
  EXPECT_EQ(Render("{{ [[1]]|tojson(indent=2) }}"), "[\n  [\n    1\n  ]\n]");
  // A scan of a long string in every step of a long loop is stopped by the clock.
  EXPECT_NE(Render(big + "{% set s = ns.s %}{% for i in range(1000000) %}{% if 'b' in s %}"
                         "{% endif %}{% endfor %}")
                .find("runs too long (over 2 seconds)"),
            std::string::npos);

  // A long conversation: the usual idioms (`messages|length` inside the loop over messages)
  // read the messages without copying them, so 2000 messages of 2 KB fit in the budget.
  Json messages = Json::array();
  for (int i = 0; i < 2000; ++i) {
    messages.push_back({{"role", i % 2 == 0 ? "user" : "assistant"},
                        {"content", std::string(2048, static_cast<char>('a' + i % 26))}});
  }
  const std::string text = Render(
      "{% for m in messages %}{% if loop.index0 < messages|length and messages[0].role == 'user' %}"
      "{{ m.role }}: {{ m['content'] }}\n{% endif %}{% endfor %}",
      {{"messages", messages}});
  ASSERT_EQ(text.find("ERROR"), std::string::npos) << text.substr(0, 200);
  EXPECT_EQ(text.size(), 1000 * (6 + 2048 + 1) + 1000 * (11 + 2048 + 1));
}

}  // namespace
}  // namespace shardlm
