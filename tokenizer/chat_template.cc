#include "tokenizer/chat_template.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace shardlm {
namespace {

using Json = ChatTemplate::Json;

// ---------------------------------------------------------------------------
// Values: JSON data, or Jinja's Undefined (a missing variable, key or attribute).

struct Value {
  bool undefined = false;
  Json j;
  static Value Undef() {
    Value v;
    v.undefined = true;
    return v;
  }
  Value() = default;
  Value(Json x) : j(std::move(x)) {}  // NOLINT: implicit on purpose
};

absl::Status RenderError(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("chat template: ", message));
}

bool Truthy(const Value& v) {
  if (v.undefined) return false;
  const Json& j = v.j;
  switch (j.type()) {
    case Json::value_t::null: return false;
    case Json::value_t::boolean: return j.get<bool>();
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return j.get<int64_t>() != 0;
    case Json::value_t::number_float: return j.get<double>() != 0.0;
    case Json::value_t::string: return !j.get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object: return !j.empty();
    default: return false;
  }
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), d);
  std::string s(buf, end);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

// json.dumps(x, ensure_ascii=False) (transformers' tojson filter): ", " and ": " separators,
// or with `indent`, newlines and "," / ": ". False, with the text cut short, where it would pass
// `limit` bytes: an indent of 10**9 is 1 GB per line.
bool PyJson(const Json& j, int indent, int depth, size_t limit, std::string* out) {
  auto newline = [&](int d) {
    if (indent < 0) return true;
    const size_t pad = static_cast<size_t>(indent) * static_cast<size_t>(d);
    if (out->size() + 1 + pad > limit) return false;
    out->push_back('\n');
    out->append(pad, ' ');
    return true;
  };
  switch (j.type()) {
    case Json::value_t::null: *out += "null"; break;
    case Json::value_t::boolean: *out += j.get<bool>() ? "true" : "false"; break;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: *out += std::to_string(j.get<int64_t>()); break;
    case Json::value_t::number_float: {
      const double d = j.get<double>();
      *out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : FloatRepr(d);
      break;
    }
    case Json::value_t::string: {
      out->push_back('"');
      for (unsigned char c : j.get_ref<const std::string&>()) {
        switch (c) {
          case '"': *out += "\\\""; break;
          case '\\': *out += "\\\\"; break;
          case '\n': *out += "\\n"; break;
          case '\r': *out += "\\r"; break;
          case '\t': *out += "\\t"; break;
          case '\b': *out += "\\b"; break;
          case '\f': *out += "\\f"; break;
          default:
            if (c < 0x20) {
              char buf[8];
              std::snprintf(buf, sizeof(buf), "\\u%04x", c);
              *out += buf;
            } else {
              out->push_back(static_cast<char>(c));
            }
        }
      }
      out->push_back('"');
      break;
    }
    case Json::value_t::array: {
      if (j.empty()) {
        *out += "[]";
        break;
      }
      out->push_back('[');
      bool first = true;
      for (const Json& e : j) {
        if (!first) *out += indent < 0 ? ", " : ",";
        first = false;
        if (!newline(depth + 1) || !PyJson(e, indent, depth + 1, limit, out)) return false;
      }
      if (!newline(depth)) return false;
      out->push_back(']');
      break;
    }
    case Json::value_t::object: {
      if (j.empty()) {
        *out += "{}";
        break;
      }
      out->push_back('{');
      bool first = true;
      for (const auto& [k, v] : j.items()) {
        if (!first) *out += indent < 0 ? ", " : ",";
        first = false;
        if (!newline(depth + 1) || !PyJson(Json(k), indent, depth + 1, limit, out)) return false;
        *out += ": ";
        if (!PyJson(v, indent, depth + 1, limit, out)) return false;
      }
      if (!newline(depth)) return false;
      out->push_back('}');
      break;
    }
    default: *out += "null"; break;
  }
  return out->size() <= limit;
}

// Python's repr of data inside a container ({{ [1, 'a'] }} prints "[1, 'a']").
void PyRepr(const Json& j, std::string* out, bool top);

std::string ToStr(const Value& v) {
  if (v.undefined) return "";
  const Json& j = v.j;
  switch (j.type()) {
    case Json::value_t::null: return "None";
    case Json::value_t::boolean: return j.get<bool>() ? "True" : "False";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return std::to_string(j.get<int64_t>());
    case Json::value_t::number_float: return FloatRepr(j.get<double>());
    case Json::value_t::string: return j.get<std::string>();
    default: {
      std::string out;
      PyRepr(j, &out, true);
      return out;
    }
  }
}

void PyRepr(const Json& j, std::string* out, bool top) {
  if (j.is_string() && !top) {
    const std::string& s = j.get_ref<const std::string&>();
    const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
    out->push_back(quote);
    for (char c : s) {
      if (c == quote || c == '\\') out->push_back('\\');
      if (c == '\n') {
        *out += "\\n";
        continue;
      }
      out->push_back(c);
    }
    out->push_back(quote);
  } else if (j.is_array()) {
    out->push_back('[');
    bool first = true;
    for (const Json& e : j) {
      if (!first) *out += ", ";
      first = false;
      PyRepr(e, out, false);
    }
    out->push_back(']');
  } else if (j.is_object()) {
    out->push_back('{');
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      if (!first) *out += ", ";
      first = false;
      PyRepr(Json(k), out, false);
      *out += ": ";
      PyRepr(v, out, false);
    }
    out->push_back('}');
  } else {
    *out += ToStr(Value(j));
  }
}

// UTF-8 characters of a string (Python indexes and slices code points): the bytes of the one
// at byte `i`, by its lead byte (a stray continuation byte is a character of its own).
size_t CharBytes(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  const size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  return std::min(n, s.size() - i);
}

std::vector<std::string> Chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size(); i += CharBytes(s, i)) {
    out.push_back(s.substr(i, CharBytes(s, i)));
  }
  return out;
}

// Eight bytes at `i` are all ASCII (each its own character): long strings are mostly ASCII, and
// byte-by-byte these scans were most of a render's time on a 32 MB string.
bool AsciiWord(const std::string& s, size_t i) {
  uint64_t w;
  std::memcpy(&w, s.data() + i, sizeof(w));
  return (w & 0x8080808080808080ull) == 0;
}

int64_t CountChars(const std::string& s) {
  int64_t n = 0;
  size_t i = 0;
  while (i < s.size()) {
    if (i + 8 <= s.size() && AsciiWord(s, i)) {
      i += 8;
      n += 8;
    } else {
      i += CharBytes(s, i);
      ++n;
    }
  }
  return n;
}

// Character `k` (0-based, 0 <= k < CountChars(s)), without splitting the whole string.
std::string CharAt(const std::string& s, int64_t k) {
  size_t i = 0;
  while (k > 0) {
    if (k >= 8 && i + 8 <= s.size() && AsciiWord(s, i)) {
      i += 8;
      k -= 8;
    } else {
      i += CharBytes(s, i);
      --k;
    }
  }
  return s.substr(i, CharBytes(s, i));
}

// Bytes a value takes in memory, near enough for the render's budget (below): the nodes, the
// strings' characters and the keys.
size_t ByteSize(const Json& j) {
  switch (j.type()) {
    case Json::value_t::string:
      return sizeof(Json) + sizeof(std::string) + j.get_ref<const std::string&>().size();
    case Json::value_t::array: {
      size_t n = sizeof(Json) + sizeof(Json::array_t);
      for (const Json& e : j) n += ByteSize(e);
      return n;
    }
    case Json::value_t::object: {
      size_t n = sizeof(Json) + sizeof(Json::object_t);
      for (const auto& [k, v] : j.items()) n += sizeof(std::string) + k.size() + ByteSize(v);
      return n;
    }
    default: return sizeof(Json);
  }
}

// What splitting a string into characters (a loop over it, a slice, |list) takes.
constexpr size_t kCharValueBytes = sizeof(Json) + sizeof(std::string);

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string Strip(const std::string& s, const Value* chars, bool left, bool right) {
  auto drop = [&](char c) {
    if (chars == nullptr || chars->undefined || chars->j.is_null()) return IsSpace(c);
    return chars->j.get_ref<const std::string&>().find(c) != std::string::npos;
  };
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e && drop(s[b])) ++b;
  }
  if (right) {
    while (e > b && drop(s[e - 1])) --e;
  }
  return s.substr(b, e - b);
}

// One level of a recursion whose depth is bounded (parsing and evaluating nested input).
class DepthGuard {
 public:
  explicit DepthGuard(int& depth) : depth_(++depth) {}
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;
  bool Exceeds(int max) const { return depth_ > max; }

 private:
  int& depth_;
};

// ---------------------------------------------------------------------------
// Expressions.

struct Expr {
  enum class Kind {
    kLiteral, kName, kAttr, kIndex, kSlice, kCall, kFilter, kTest, kNot, kNeg,
    kBinary, kAnd, kOr, kCond, kList, kDict
  };
  Kind kind;
  Json literal;
  std::string name;  // variable, attribute, filter, test, function or method; binary operator
  std::vector<std::unique_ptr<Expr>> args;  // operands / positional arguments
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  bool negate = false;  // `is not`, `not in`
  explicit Expr(Kind k) : kind(k) {}
};
using ExprPtr = std::unique_ptr<Expr>;

// ---------------------------------------------------------------------------
// Statements.

}  // namespace

struct ChatTemplate::Node {
  enum class Kind { kBody, kText, kOutput, kIf, kFor, kSet };
  Kind kind = Kind::kBody;
  std::string text;                                     // kText
  ExprPtr expr;                                         // kOutput; kSet value; kFor iterable
  std::vector<std::unique_ptr<Node>> body;              // kBody, kFor body
  std::vector<std::pair<ExprPtr, std::unique_ptr<Node>>> branches;  // kIf (null cond: else)
  std::vector<std::string> targets;                     // kFor (1 or 2 names); kSet name
  std::string attr;                                     // kSet: `set ns.attr`
  ExprPtr filter;                                       // kFor `if` clause
  std::unique_ptr<Node> else_body;                      // kFor `else`
};

namespace {

using Node = ChatTemplate::Node;

// ---------------------------------------------------------------------------
// Tag lexing.

struct Token {
  enum class Kind { kName, kInt, kFloat, kString, kOp, kEnd };
  Kind kind = Kind::kEnd;
  std::string text;
  Json value;
};

absl::StatusOr<std::vector<Token>> LexTag(std::string_view s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  auto error = [&](const std::string& what) {
    return RenderError(absl::StrCat("line ", line, ": ", what));
  };
  while (i < s.size()) {
    const char c = s[i];
    if (IsSpace(c)) {
      ++i;
      continue;
    }
    Token t;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      t.kind = Token::Kind::kName;
      t.text = std::string(s.substr(i, j - i));
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.' || s[j] == '_')) {
        if (s[j] == '.') {
          if (j + 1 >= s.size() || !std::isdigit(static_cast<unsigned char>(s[j + 1]))) break;
          is_float = true;
        }
        ++j;
      }
      std::string digits;
      for (char d : s.substr(i, j - i)) {
        if (d != '_') digits.push_back(d);
      }
      t.kind = is_float ? Token::Kind::kFloat : Token::Kind::kInt;
      t.text = digits;
      if (is_float) {
        double v = 0.0;
        const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), v);
        if (r.ec != std::errc()) return error(absl::StrCat("the number ", digits, " is out of range"));
        t.value = v;
      } else {
        int64_t v = 0;
        const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), v);
        if (r.ec != std::errc()) {
          return error(absl::StrCat("the integer ", digits, " is beyond 64 bits"));
        }
        t.value = v;
      }
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      while (j < s.size() && s[j] != c) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          switch (e) {
            case 'n': v.push_back('\n'); break;
            case 't': v.push_back('\t'); break;
            case 'r': v.push_back('\r'); break;
            case '\\': v.push_back('\\'); break;
            case '\'': v.push_back('\''); break;
            case '"': v.push_back('"'); break;
            case '0': v.push_back('\0'); break;
            default:
              v.push_back('\\');
              v.push_back(e);
          }
          ++j;
          continue;
        }
        v.push_back(s[j++]);
      }
      if (j >= s.size()) return error("unterminated string");
      t.kind = Token::Kind::kString;
      t.value = v;
      i = j + 1;
    } else {
      static constexpr std::string_view kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
      t.kind = Token::Kind::kOp;
      for (std::string_view op : kTwo) {
        if (s.substr(i, 2) == op) t.text = std::string(op);
      }
      if (t.text.empty()) {
        if (std::string_view("()[]{}.,:|+-*/%~<>=").find(c) == std::string_view::npos) {
          return error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
        }
        t.text = std::string(1, c);
      }
      i += t.text.size();
    }
    out.push_back(std::move(t));
  }
  out.push_back(Token{});
  return out;
}

// ---------------------------------------------------------------------------
// Expression parsing (Jinja's precedence: condexpr < or < and < not < compare < + - < ~ <
// * / // % < ** < unary < postfix, filters and tests).

constexpr std::string_view kFilters[] = {"trim", "tojson", "length", "count", "upper", "lower",
                                         "first", "last", "join", "default", "d", "string",
                                         "int", "float", "list", "reverse", "capitalize",
                                         "title", "replace", "items", "safe", "abs"};
constexpr std::string_view kTests[] = {"defined", "undefined", "none", "string", "number",
                                       "integer", "float", "boolean", "mapping", "sequence",
                                       "iterable", "true", "false", "odd", "even", "equalto",
                                       "eq", "in"};
constexpr std::string_view kFunctions[] = {"namespace", "raise_exception", "range",
                                           "strftime_now", "dict"};
constexpr std::string_view kMethods[] = {"strip", "lstrip", "rstrip", "startswith", "endswith",
                                         "split", "upper", "lower", "title", "capitalize",
                                         "replace", "items", "keys", "values", "get"};

bool OneOf(std::string_view x, std::span<const std::string_view> set) {
  return std::find(set.begin(), set.end(), x) != set.end();
}

class ExprParser {
 public:
  ExprParser(std::vector<Token> tokens, int line) : t_(std::move(tokens)), line_(line) {}

  const Token& Peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  bool AtEnd() const { return Peek().kind == Token::Kind::kEnd; }
  bool IsOp(std::string_view op, size_t k = 0) const {
    return Peek(k).kind == Token::Kind::kOp && Peek(k).text == op;
  }
  bool IsName(std::string_view name, size_t k = 0) const {
    return Peek(k).kind == Token::Kind::kName && Peek(k).text == name;
  }
  Token Next() { return t_[std::min(p_++, t_.size() - 1)]; }
  absl::Status Error(const std::string& what) const {
    return RenderError(absl::StrCat("line ", line_, ": ", what));
  }
  absl::Status Expect(std::string_view op) {
    if (!IsOp(op)) {
      return Error(absl::StrCat("expected '", std::string(op), "'",
                                AtEnd() ? " at the end" : absl::StrCat(" before '", Peek().text, "'")));
    }
    ++p_;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().kind != Token::Kind::kName) return Error("expected a name");
    return Next().text;
  }

  absl::StatusOr<ExprPtr> Parse() { return CondExpr(); }

 private:
  static ExprPtr Make(Expr::Kind k) { return std::make_unique<Expr>(k); }
  static ExprPtr Binary(std::string op, ExprPtr a, ExprPtr b) {
    auto e = Make(Expr::Kind::kBinary);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  absl::StatusOr<ExprPtr> CondExpr() {
    // Nesting bound (parentheses, lists, unary operators): no input can exhaust the stack.
    const DepthGuard guard(depth_);
    if (guard.Exceeds(kMaxDepth)) return Error("the expression nests too deeply");
    ASSIGN_OR_RETURN(ExprPtr left, Or());
    while (IsName("if")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr cond, Or());
      ExprPtr other;
      if (IsName("else")) {
        ++p_;
        ASSIGN_OR_RETURN(other, CondExpr());
      } else {
        other = Make(Expr::Kind::kLiteral);
        other->name = "undefined";
      }
      auto e = Make(Expr::Kind::kCond);
      e->args.push_back(std::move(cond));
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(other));
      left = std::move(e);
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Or() {
    ASSIGN_OR_RETURN(ExprPtr left, And());
    while (IsName("or")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, And());
      auto e = Make(Expr::Kind::kOr);
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(right));
      left = std::move(e);
    }
    return left;
  }
  absl::StatusOr<ExprPtr> And() {
    ASSIGN_OR_RETURN(ExprPtr left, Not());
    while (IsName("and")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, Not());
      auto e = Make(Expr::Kind::kAnd);
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(right));
      left = std::move(e);
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Not() {
    if (IsName("not")) {
      ++p_;
      const DepthGuard guard(depth_);
      if (guard.Exceeds(kMaxDepth)) return Error("the expression nests too deeply");
      ASSIGN_OR_RETURN(ExprPtr inner, Not());
      auto e = Make(Expr::Kind::kNot);
      e->args.push_back(std::move(inner));
      return e;
    }
    return Compare();
  }
  absl::StatusOr<ExprPtr> Compare() {
    ASSIGN_OR_RETURN(ExprPtr left, Math1());
    while (true) {
      std::string op;
      if (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp(">") || IsOp("<=") || IsOp(">=")) {
        op = Next().text;
      } else if (IsName("in")) {
        ++p_;
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        p_ += 2;
        op = "not in";
      } else {
        return left;
      }
      ASSIGN_OR_RETURN(ExprPtr right, Math1());
      left = Binary(op, std::move(left), std::move(right));
    }
  }
  absl::StatusOr<ExprPtr> Math1() {
    ASSIGN_OR_RETURN(ExprPtr left, Concat());
    while (IsOp("+") || IsOp("-")) {
      const std::string op = Next().text;
      ASSIGN_OR_RETURN(ExprPtr right, Concat());
      left = Binary(op, std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Concat() {
    ASSIGN_OR_RETURN(ExprPtr left, Math2());
    while (IsOp("~")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, Math2());
      left = Binary("~", std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Math2() {
    ASSIGN_OR_RETURN(ExprPtr left, Pow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string op = Next().text;
      ASSIGN_OR_RETURN(ExprPtr right, Pow());
      left = Binary(op, std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Pow() {
    ASSIGN_OR_RETURN(ExprPtr left, Unary(true));
    while (IsOp("**")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, Unary(true));
      left = Binary("**", std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Unary(bool with_filter) {
    const DepthGuard guard(depth_);
    if (guard.Exceeds(kMaxDepth)) return Error("the expression nests too deeply");
    ExprPtr node;
    if (IsOp("-")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr inner, Unary(false));
      node = Make(Expr::Kind::kNeg);
      node->args.push_back(std::move(inner));
    } else if (IsOp("+")) {
      ++p_;
      ASSIGN_OR_RETURN(node, Unary(false));
    } else {
      ASSIGN_OR_RETURN(node, Primary());
    }
    ASSIGN_OR_RETURN(node, Postfix(std::move(node)));
    if (with_filter) {
      ASSIGN_OR_RETURN(node, FilterExpr(std::move(node)));
    }
    return node;
  }
  absl::StatusOr<ExprPtr> Primary() {
    const Token t = Next();
    switch (t.kind) {
      case Token::Kind::kName: {
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto e = Make(Expr::Kind::kLiteral);
          e->literal = t.text[0] == 't' || t.text[0] == 'T';
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          auto e = Make(Expr::Kind::kLiteral);
          e->literal = nullptr;
          return e;
        }
        auto e = Make(Expr::Kind::kName);
        e->name = t.text;
        return e;
      }
      case Token::Kind::kInt:
      case Token::Kind::kFloat: {
        auto e = Make(Expr::Kind::kLiteral);
        e->literal = t.value;
        return e;
      }
      case Token::Kind::kString: {
        std::string s = t.value.get<std::string>();
        while (Peek().kind == Token::Kind::kString) s += Next().value.get<std::string>();
        auto e = Make(Expr::Kind::kLiteral);
        e->literal = s;
        return e;
      }
      case Token::Kind::kOp:
        if (t.text == "(") {
          ASSIGN_OR_RETURN(ExprPtr inner, CondExpr());
          if (IsOp(",")) return Error("tuples are not supported");
          RETURN_IF_ERROR(Expect(")"));
          return inner;
        }
        if (t.text == "[") {
          auto e = Make(Expr::Kind::kList);
          while (!IsOp("]")) {
            ASSIGN_OR_RETURN(ExprPtr item, CondExpr());
            e->args.push_back(std::move(item));
            if (!IsOp(",")) break;
            ++p_;
          }
          RETURN_IF_ERROR(Expect("]"));
          return e;
        }
        if (t.text == "{") {
          auto e = Make(Expr::Kind::kDict);
          while (!IsOp("}")) {
            ASSIGN_OR_RETURN(ExprPtr key, CondExpr());
            RETURN_IF_ERROR(Expect(":"));
            ASSIGN_OR_RETURN(ExprPtr value, CondExpr());
            e->args.push_back(std::move(key));
            e->args.push_back(std::move(value));
            if (!IsOp(",")) break;
            ++p_;
          }
          RETURN_IF_ERROR(Expect("}"));
          return e;
        }
        return Error(absl::StrCat("unexpected '", t.text, "'"));
      case Token::Kind::kEnd: return Error("an expression is missing");
    }
    return Error("unexpected token");
  }
  absl::Status Args(Expr* call) {
    RETURN_IF_ERROR(Expect("("));
    while (!IsOp(")")) {
      if (Peek().kind == Token::Kind::kName && IsOp("=", 1)) {
        const std::string key = Next().text;
        ++p_;
        ASSIGN_OR_RETURN(ExprPtr value, CondExpr());
        call->kwargs.emplace_back(key, std::move(value));
      } else {
        ASSIGN_OR_RETURN(ExprPtr value, CondExpr());
        call->args.push_back(std::move(value));
      }
      if (!IsOp(",")) break;
      ++p_;
    }
    return Expect(")");
  }
  absl::StatusOr<ExprPtr> Postfix(ExprPtr node) {
    while (true) {
      if (IsOp(".")) {
        ++p_;
        ASSIGN_OR_RETURN(std::string name, ExpectName());
        auto e = Make(Expr::Kind::kAttr);
        e->name = name;
        e->args.push_back(std::move(node));
        node = std::move(e);
      } else if (IsOp("[")) {
        ++p_;
        ExprPtr parts[3];
        int colons = 0;
        while (!IsOp("]")) {
          if (IsOp(":")) {
            if (++colons > 2) return Error("a slice has at most two ':'");
            ++p_;
            continue;
          }
          ASSIGN_OR_RETURN(parts[colons], CondExpr());
        }
        RETURN_IF_ERROR(Expect("]"));
        auto e = Make(colons == 0 ? Expr::Kind::kIndex : Expr::Kind::kSlice);
        if (colons == 0 && parts[0] == nullptr) return Error("an empty subscript");
        e->args.push_back(std::move(node));
        for (int k = 0; k < (colons == 0 ? 1 : 3); ++k) e->args.push_back(std::move(parts[k]));
        node = std::move(e);
      } else if (IsOp("(")) {
        auto e = Make(Expr::Kind::kCall);
        if (node->kind == Expr::Kind::kName) {
          if (!OneOf(node->name, kFunctions)) {
            return Error(absl::StrCat("the function ", node->name, "() is not supported"));
          }
          e->name = node->name;
        } else if (node->kind == Expr::Kind::kAttr) {
          if (!OneOf(node->name, kMethods)) {
            return Error(absl::StrCat("the method .", node->name, "() is not supported"));
          }
          e->name = "." + node->name;
          e->args.push_back(std::move(node->args[0]));
        } else {
          return Error("only functions and methods can be called");
        }
        RETURN_IF_ERROR(Args(e.get()));
        node = std::move(e);
      } else {
        return node;
      }
    }
  }
  absl::StatusOr<ExprPtr> FilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        ++p_;
        ASSIGN_OR_RETURN(std::string name, ExpectName());
        if (!OneOf(name, kFilters)) {
          return Error(absl::StrCat("the filter '", name, "' is not supported"));
        }
        auto e = Make(Expr::Kind::kFilter);
        e->name = name;
        e->args.push_back(std::move(node));
        if (IsOp("(")) RETURN_IF_ERROR(Args(e.get()));
        node = std::move(e);
      } else if (IsName("is")) {
        ++p_;
        auto e = Make(Expr::Kind::kTest);
        if (IsName("not")) {
          ++p_;
          e->negate = true;
        }
        ASSIGN_OR_RETURN(std::string name, ExpectName());
        if (!OneOf(name, kTests)) return Error(absl::StrCat("the test '", name, "' is not supported"));
        e->name = name;
        e->args.push_back(std::move(node));
        if (IsOp("(")) {
          RETURN_IF_ERROR(Args(e.get()));
        } else if (!AtEnd() && Peek().kind != Token::Kind::kOp && !IsName("and") && !IsName("or") &&
                   !IsName("else") && !IsName("if") && !IsName("is")) {
          ASSIGN_OR_RETURN(ExprPtr arg, Primary());
          e->args.push_back(std::move(arg));
        }
        node = std::move(e);
      } else {
        return node;
      }
    }
  }

  static constexpr int kMaxDepth = 100;
  std::vector<Token> t_;
  size_t p_ = 0;
  int line_;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------
// Template structure: text and tags, with whitespace control, trim_blocks and lstrip_blocks
// as transformers configures jinja2.

struct Segment {
  enum class Kind { kText, kOutput, kBlock };
  Kind kind;
  std::string text;  // text, or the tag's content
  int line;
};

absl::StatusOr<std::vector<Segment>> Segments(std::string_view src) {
  std::vector<Segment> out;
  size_t pos = 0;
  int line = 1;
  auto count_lines = [&](size_t from, size_t to) {
    line += static_cast<int>(std::count(src.begin() + from, src.begin() + to, '\n'));
  };
  while (pos <= src.size()) {
    size_t start = pos;
    while (true) {
      start = src.find('{', start);
      if (start == std::string_view::npos || start + 1 >= src.size()) {
        start = std::string_view::npos;
        break;
      }
      const char k = src[start + 1];
      if (k == '{' || k == '%' || k == '#') break;
      ++start;
    }
    std::string text(src.substr(pos, start == std::string_view::npos ? std::string_view::npos : start - pos));
    if (start == std::string_view::npos) {
      if (!text.empty()) out.push_back({Segment::Kind::kText, text, line});
      break;
    }
    const char kind = src[start + 1];
    const char mod = start + 2 < src.size() ? src[start + 2] : '\0';
    if (mod == '-') {
      while (!text.empty() && IsSpace(text.back())) text.pop_back();
    } else if (kind != '{' && mod != '+') {
      // lstrip_blocks: spaces and tabs from the start of the line up to a block or comment.
      size_t k = text.size();
      while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
      if (k == 0 ? (pos == 0 || src[pos - 1] == '\n') : text[k - 1] == '\n') {
        text.resize(k);
      }
    }
    if (!text.empty()) out.push_back({Segment::Kind::kText, text, line});
    count_lines(pos, start);
    const int tag_line = line;
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t body = start + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
    size_t end = std::string_view::npos;
    if (kind == '#') {
      end = src.find(close, body);
    } else {
      // Skip string literals: a "}}" inside quotes does not close the tag.
      char quote = 0;
      for (size_t i = body; i + 1 < src.size(); ++i) {
        if (quote != 0) {
          if (src[i] == '\\') {
            ++i;
          } else if (src[i] == quote) {
            quote = 0;
          }
        } else if (src[i] == '\'' || src[i] == '"') {
          quote = src[i];
        } else if (src.substr(i, 2) == close) {
          end = i;
          break;
        }
      }
    }
    if (end == std::string_view::npos) {
      return RenderError(absl::StrCat("line ", tag_line, ": the tag is not closed with '", std::string(close), "'"));
    }
    bool strip_after = false;
    size_t content_end = end;
    if (end > body && src[end - 1] == '-') {
      strip_after = true;
      --content_end;
    }
    const std::string content(src.substr(body, content_end > body ? content_end - body : 0));
    if (kind != '#') {
      out.push_back({kind == '{' ? Segment::Kind::kOutput : Segment::Kind::kBlock, content, tag_line});
    }
    count_lines(start, end + 2);
    pos = end + 2;
    if (strip_after) {
      const size_t from = pos;
      while (pos < src.size() && IsSpace(src[pos])) ++pos;
      count_lines(from, pos);
    } else if (kind != '{') {
      // trim_blocks: the first newline after a block or comment.
      if (pos < src.size() && src[pos] == '\n') {
        ++pos;
        ++line;
      } else if (src.substr(pos, 2) == "\r\n") {
        pos += 2;
        ++line;
      }
    }
    if (pos == src.size()) break;
  }
  return out;
}

// Builds the statement tree from segments.
class TreeBuilder {
 public:
  explicit TreeBuilder(std::vector<Segment> segments) : s_(std::move(segments)) {}

  absl::StatusOr<std::unique_ptr<Node>> Build() {
    auto root = std::make_unique<Node>();
    std::string end;
    RETURN_IF_ERROR(Body(root.get(), {}, &end));
    if (!end.empty()) return RenderError(absl::StrCat("unexpected {% ", end, " %}"));
    return root;
  }

 private:
  // Parses statements into `body` until one of `stops` (a block keyword), returned in `stop`.
  absl::Status Body(Node* body, std::vector<std::string_view> stops, std::string* stop) {
    const DepthGuard guard(depth_);
    if (guard.Exceeds(100)) return RenderError("blocks nest more than 100 deep");
    while (i_ < s_.size()) {
      const Segment& seg = s_[i_];
      if (seg.kind == Segment::Kind::kText) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::kText;
        n->text = seg.text;
        body->body.push_back(std::move(n));
        ++i_;
        continue;
      }
      ASSIGN_OR_RETURN(std::vector<Token> tokens, LexTag(seg.text, seg.line));
      ExprParser p(std::move(tokens), seg.line);
      if (seg.kind == Segment::Kind::kOutput) {
        ASSIGN_OR_RETURN(ExprPtr e, p.Parse());
        if (!p.AtEnd()) return p.Error(absl::StrCat("unexpected '", p.Peek().text, "'"));
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::kOutput;
        n->expr = std::move(e);
        body->body.push_back(std::move(n));
        ++i_;
        continue;
      }
      if (p.Peek().kind != Token::Kind::kName) return p.Error("a block tag must start with a keyword");
      const std::string keyword = p.Next().text;
      if (std::find(stops.begin(), stops.end(), keyword) != stops.end()) {
        *stop = keyword;
        parser_ = std::make_unique<ExprParser>(std::move(p));
        ++i_;
        return absl::OkStatus();
      }
      ++i_;
      if (keyword == "if") {
        RETURN_IF_ERROR(If(std::move(p), body));
      } else if (keyword == "for") {
        RETURN_IF_ERROR(For(std::move(p), body));
      } else if (keyword == "set") {
        RETURN_IF_ERROR(Set(std::move(p), body));
      } else if (keyword == "generation" || keyword == "endgeneration") {
        // transformers' assistant-mask markers: no output of their own.
      } else if (keyword == "elif" || keyword == "else" || keyword == "endif" || keyword == "endfor") {
        return p.Error(absl::StrCat("{% ", keyword, " %} without its opening tag"));
      } else {
        return p.Error(absl::StrCat("the '", keyword, "' tag is not supported"));
      }
    }
    if (!stops.empty()) {
      return RenderError(absl::StrCat("the template ends before {% ", std::string(stops.back()), " %}"));
    }
    return absl::OkStatus();
  }

  absl::Status If(ExprParser p, Node* parent) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::kIf;
    ASSIGN_OR_RETURN(ExprPtr cond, p.Parse());
    if (!p.AtEnd()) return p.Error(absl::StrCat("unexpected '", p.Peek().text, "'"));
    while (true) {
      auto branch = std::make_unique<Node>();
      std::string stop;
      RETURN_IF_ERROR(Body(branch.get(), {"elif", "else", "endif"}, &stop));
      n->branches.emplace_back(std::move(cond), std::move(branch));
      if (stop == "endif") break;
      if (stop == "elif") {
        ASSIGN_OR_RETURN(cond, parser_->Parse());
      } else {
        auto other = std::make_unique<Node>();
        RETURN_IF_ERROR(Body(other.get(), {"endif"}, &stop));
        n->branches.emplace_back(nullptr, std::move(other));
        break;
      }
    }
    parent->body.push_back(std::move(n));
    return absl::OkStatus();
  }

  absl::Status For(ExprParser p, Node* parent) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::kFor;
    ASSIGN_OR_RETURN(std::string target, p.ExpectName());
    n->targets.push_back(target);
    if (p.IsOp(",")) {
      p.Next();
      ASSIGN_OR_RETURN(target, p.ExpectName());
      n->targets.push_back(target);
    }
    if (!p.IsName("in")) return p.Error("expected 'in' in the for tag");
    p.Next();
    // The iterable stops before an `if` filter clause (no conditional expression there).
    ASSIGN_OR_RETURN(n->expr, ParseIterable(p));
    if (p.IsName("if")) {
      p.Next();
      ASSIGN_OR_RETURN(n->filter, p.Parse());
    }
    if (p.IsName("recursive")) return p.Error("recursive loops are not supported");
    if (!p.AtEnd()) return p.Error(absl::StrCat("unexpected '", p.Peek().text, "'"));
    auto body = std::make_unique<Node>();
    std::string stop;
    RETURN_IF_ERROR(Body(body.get(), {"else", "endfor"}, &stop));
    n->body.push_back(std::move(body));
    if (stop == "else") {
      n->else_body = std::make_unique<Node>();
      RETURN_IF_ERROR(Body(n->else_body.get(), {"endfor"}, &stop));
    }
    parent->body.push_back(std::move(n));
    return absl::OkStatus();
  }

  static absl::StatusOr<ExprPtr> ParseIterable(ExprParser& p) {
    // Everything up to a top-level `if` keyword: cut the tokens there.
    std::vector<Token> head;
    int depth = 0;
    size_t k = 0;
    for (;; ++k) {
      const Token& t = p.Peek(k);
      if (t.kind == Token::Kind::kEnd) break;
      if (t.kind == Token::Kind::kOp && (t.text == "(" || t.text == "[" || t.text == "{")) ++depth;
      if (t.kind == Token::Kind::kOp && (t.text == ")" || t.text == "]" || t.text == "}")) --depth;
      if (depth == 0 && t.kind == Token::Kind::kName && (t.text == "if" || t.text == "recursive")) break;
      head.push_back(t);
    }
    head.push_back(Token{});
    ExprParser sub(std::move(head), 0);
    ASSIGN_OR_RETURN(ExprPtr e, sub.Parse());
    if (!sub.AtEnd()) return sub.Error(absl::StrCat("unexpected '", sub.Peek().text, "'"));
    for (size_t j = 0; j < k; ++j) p.Next();
    return e;
  }

  absl::Status Set(ExprParser p, Node* parent) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::kSet;
    ASSIGN_OR_RETURN(std::string name, p.ExpectName());
    n->targets.push_back(name);
    if (p.IsOp(".")) {
      p.Next();
      ASSIGN_OR_RETURN(n->attr, p.ExpectName());
    }
    if (p.IsOp(",")) return p.Error("tuple assignment is not supported");
    if (!p.IsOp("=")) return p.Error("block assignments ({% set x %}…{% endset %}) are not supported");
    p.Next();
    ASSIGN_OR_RETURN(n->expr, p.Parse());
    if (!p.AtEnd()) return p.Error(absl::StrCat("unexpected '", p.Peek().text, "'"));
    parent->body.push_back(std::move(n));
    return absl::OkStatus();
  }

  std::vector<Segment> s_;
  size_t i_ = 0;
  int depth_ = 0;
  std::unique_ptr<ExprParser> parser_;  // the stop tag's, for `elif` conditions
};

// ---------------------------------------------------------------------------
// Evaluation.

class Renderer {
 public:
  explicit Renderer(const Json& context) { scopes_.emplace_back(); for (const auto& [k, v] : context.items()) scopes_[0][k] = Value(v); }

  absl::Status Exec(const Node& n, std::string* out) {
    RETURN_IF_ERROR(Step());
    if (out->size() > kMaxOutput) return RenderError("the template's output grows beyond 64 MB");
    switch (n.kind) {
      case Node::Kind::kBody:
        for (const auto& child : n.body) RETURN_IF_ERROR(Exec(*child, out));
        return absl::OkStatus();
      case Node::Kind::kText:
        *out += n.text;
        return absl::OkStatus();
      case Node::Kind::kOutput: {
        Value tmp;
        ASSIGN_OR_RETURN(const Value* v, EvalRef(*n.expr, &tmp));
        *out += ToStr(*v);
        return absl::OkStatus();
      }
      case Node::Kind::kIf:
        for (const auto& [cond, body] : n.branches) {
          bool take = cond == nullptr;
          if (!take) {
            Value tmp;
            ASSIGN_OR_RETURN(const Value* c, EvalRef(*cond, &tmp));
            take = Truthy(*c);
          }
          if (take) return Exec(*body, out);
        }
        return absl::OkStatus();
      case Node::Kind::kSet: {
        ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        if (n.attr.empty()) {
          scopes_.back()[n.targets[0]] = std::move(v);
          return absl::OkStatus();
        }
        Value* ns = Lookup(n.targets[0]);
        if (ns == nullptr || ns->undefined || !ns->j.is_object()) {
          return RenderError(absl::StrCat("cannot set ", n.targets[0], ".", n.attr, ": ", n.targets[0],
                                          " is not a namespace"));
        }
        ns->j[n.attr] = v.undefined ? Json() : std::move(v.j);
        return absl::OkStatus();
      }
      case Node::Kind::kFor: return For(n, out);
    }
    return absl::OkStatus();
  }

 private:
  Value* Lookup(const std::string& name) {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return &f->second;
    }
    return nullptr;
  }

  absl::Status For(const Node& n, std::string* out) {
    Value tmp;
    ASSIGN_OR_RETURN(const Value* seq, EvalRef(*n.expr, &tmp));
    std::vector<Json> items;
    if (seq->undefined || seq->j.is_null()) {
      // Iterating an undefined value yields nothing (jinja2's default Undefined).
    } else if (seq->j.is_array() || seq->j.is_string()) {
      ASSIGN_OR_RETURN(items, SequenceItems(seq->j));
    } else if (seq->j.is_object()) {
      RETURN_IF_ERROR(Charge(ByteSize(seq->j)));
      for (const auto& [k, v] : seq->j.items()) items.emplace_back(k);
    } else {
      return RenderError("a for loop over a value that is not iterable");
    }
    scopes_.emplace_back();
    auto bind = [&](const Json& item) -> absl::Status {
      if (n.targets.size() == 1) {
        scopes_.back()[n.targets[0]] = Value(item);
      } else {
        if (!item.is_array() || item.size() != n.targets.size()) {
          return RenderError("cannot unpack a loop item into two names");
        }
        for (size_t k = 0; k < n.targets.size(); ++k) scopes_.back()[n.targets[k]] = Value(item[k]);
      }
      return absl::OkStatus();
    };
    if (n.filter != nullptr) {
      std::vector<Json> kept;
      for (const Json& item : items) {
        RETURN_IF_ERROR(bind(item));
        ASSIGN_OR_RETURN(Value keep, Eval(*n.filter));
        if (Truthy(keep)) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      RETURN_IF_ERROR(bind(items[i]));
      // `loop` is updated in place (the body may have set it to something else).
      Value& loop = scopes_.back()["loop"];
      if (loop.undefined || !loop.j.is_object()) loop = Value(Json::object());
      loop.j["index"] = i + 1;
      loop.j["index0"] = i;
      loop.j["first"] = i == 0;
      loop.j["last"] = i == length - 1;
      loop.j["length"] = length;
      loop.j["revindex"] = length - i;
      loop.j["revindex0"] = length - i - 1;
      RETURN_IF_ERROR(Exec(*n.body[0], out));
    }
    scopes_.pop_back();
    if (length == 0 && n.else_body != nullptr) return Exec(*n.else_body, out);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<Value>> EvalArgs(const Expr& e, size_t from) {
    std::vector<Value> out;
    for (size_t k = from; k < e.args.size(); ++k) {
      ASSIGN_OR_RETURN(Value v, Eval(*e.args[k]));
      out.push_back(std::move(v));
    }
    return out;
  }

  static absl::StatusOr<std::string> Str(const Value& v, const char* what) {
    if (v.undefined || !v.j.is_string()) return RenderError(absl::StrCat(what, " needs a string"));
    return v.j.get<std::string>();
  }

  static absl::StatusOr<Value> Index(const Value& base, const Value& key) {
    if (base.undefined) return RenderError("indexing an undefined value");
    const Json& b = base.j;
    if (b.is_object()) {
      if (key.undefined || !key.j.is_string()) return Value::Undef();
      auto it = b.find(key.j.get<std::string>());
      return it == b.end() ? Value::Undef() : Value(*it);
    }
    if (b.is_array() || b.is_string()) {
      if (key.undefined || !key.j.is_number_integer()) return RenderError("a list index must be an integer");
      const int64_t size = b.is_array() ? static_cast<int64_t>(b.size())
                                        : CountChars(b.get_ref<const std::string&>());
      int64_t i = key.j.get<int64_t>();
      if (i < 0) i += size;
      if (i < 0 || i >= size) return Value::Undef();
      return b.is_array() ? Value(b[static_cast<size_t>(i)])
                          : Value(Json(CharAt(b.get_ref<const std::string&>(), i)));
    }
    if (b.is_null()) return RenderError("indexing None");
    return Value::Undef();
  }

  absl::StatusOr<Value> Slice(const Value& base, const Value* parts[3]) {
    if (base.undefined || !(base.j.is_array() || base.j.is_string())) {
      return RenderError("slicing a value that is not a list or a string");
    }
    ASSIGN_OR_RETURN(std::vector<Json> items, SequenceItems(base.j));
    const int64_t n = static_cast<int64_t>(items.size());
    auto get = [&](int k, int64_t fallback) -> absl::StatusOr<int64_t> {
      if (parts[k] == nullptr || parts[k]->undefined || parts[k]->j.is_null()) return fallback;
      if (!parts[k]->j.is_number_integer()) return RenderError("slice bounds must be integers");
      return parts[k]->j.get<int64_t>();
    };
    ASSIGN_OR_RETURN(int64_t step, get(2, 1));
    if (step == 0) return RenderError("slice step cannot be zero");
    // Python's slice.indices(n).
    const int64_t lower = step > 0 ? 0 : -1, upper = step > 0 ? n : n - 1;
    auto adjust = [&](int k, int64_t fallback) -> absl::StatusOr<int64_t> {
      if (parts[k] == nullptr || parts[k]->undefined || parts[k]->j.is_null()) return fallback;
      ASSIGN_OR_RETURN(int64_t x, get(k, 0));
      if (x < 0) {
        x += n;
        if (x < lower) x = lower;
      } else if (x > upper) {
        x = upper;
      }
      return x;
    };
    ASSIGN_OR_RETURN(int64_t start, adjust(0, step > 0 ? lower : upper));
    ASSIGN_OR_RETURN(int64_t stop, adjust(1, step > 0 ? upper : lower));
    Json out = Json::array();
    std::string s;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (base.j.is_array()) {
        out.push_back(items[static_cast<size_t>(i)]);
      } else {
        s += items[static_cast<size_t>(i)].get<std::string>();
      }
    }
    return base.j.is_array() ? Value(std::move(out)) : Value(Json(std::move(s)));
  }

  absl::StatusOr<Value> Call(const Expr& e) {
    if (e.name[0] == '.') return Method(e);
    if (e.name == "namespace" || e.name == "dict") {
      Json obj = Json::object();
      for (const auto& [k, v] : e.kwargs) {
        ASSIGN_OR_RETURN(Value x, Eval(*v));
        obj[k] = x.undefined ? Json() : std::move(x.j);
      }
      return Value(std::move(obj));
    }
    ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(e, 0));
    if (e.name == "raise_exception") {
      return RenderError(args.empty() ? "raise_exception()" : ToStr(args[0]));
    }
    if (e.name == "range") {
      int64_t a = 0, b = 0, step = 1;
      std::vector<int64_t> xs;
      for (const Value& v : args) {
        if (v.undefined || !v.j.is_number_integer()) return RenderError("range() takes integers");
        xs.push_back(v.j.get<int64_t>());
      }
      if (xs.size() == 1) b = xs[0];
      if (xs.size() >= 2) a = xs[0], b = xs[1];
      if (xs.size() == 3) step = xs[2];
      if (xs.empty() || xs.size() > 3 || step == 0) return RenderError("range() takes 1 to 3 arguments");
      Json out = Json::array();
      for (int64_t i = a; step > 0 ? i < b : i > b; i += step) {
        out.push_back(i);
        if (out.size() > 1000000) return RenderError("range() too large");
      }
      return Value(std::move(out));
    }
    if (e.name == "strftime_now") {
      ASSIGN_OR_RETURN(std::string fmt, Str(args.empty() ? Value::Undef() : args[0], "strftime_now()"));
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
      return Value(Json(std::string(buf, n)));
    }
    return RenderError(absl::StrCat("the function ", e.name, "()"));
  }

  absl::StatusOr<Value> Method(const Expr& e) {
    const std::string m = e.name.substr(1);
    Value tmp;
    ASSIGN_OR_RETURN(const Value* self_p, EvalRef(*e.args[0], &tmp));
    const Value& self = *self_p;
    ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(e, 1));
    const Value* a0 = args.size() > 0 ? &args[0] : nullptr;
    const Value* a1 = args.size() > 1 ? &args[1] : nullptr;
    if (self.undefined) return RenderError(absl::StrCat(".", m, "() on an undefined value"));
    if (self.j.is_object()) {
      if (m == "items") {
        Json out = Json::array();
        for (const auto& [k, v] : self.j.items()) out.push_back(Json::array({k, v}));
        return Value(std::move(out));
      }
      if (m == "keys" || m == "values") {
        Json out = Json::array();
        for (const auto& [k, v] : self.j.items()) out.push_back(m == "keys" ? Json(k) : v);
        return Value(std::move(out));
      }
      if (m == "get") {
        if (a0 == nullptr) return RenderError(".get() needs a key");
        ASSIGN_OR_RETURN(Value v, Index(self, *a0));
        if (v.undefined) return a1 != nullptr ? *a1 : Value(Json());
        return v;
      }
      return RenderError(absl::StrCat(".", m, "() on a mapping"));
    }
    if (!self.j.is_string()) return RenderError(absl::StrCat(".", m, "() on a value that is not a string"));
    const std::string& s = self.j.get_ref<const std::string&>();
    if (m == "strip") return Value(Json(Strip(s, a0, true, true)));
    if (m == "lstrip") return Value(Json(Strip(s, a0, true, false)));
    if (m == "rstrip") return Value(Json(Strip(s, a0, false, true)));
    if (m == "upper" || m == "lower") {
      std::string r = s;
      for (char& c : r) c = static_cast<char>(m == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return Value(Json(r));
    }
    if (m == "title" || m == "capitalize") return Value(Json(Capitalize(s, m == "title")));
    if (m == "startswith" || m == "endswith") {
      if (a0 == nullptr) return RenderError(absl::StrCat(".", m, "() needs an argument"));
      std::vector<std::string> options;
      if (!a0->undefined && a0->j.is_array()) {
        for (const Json& x : a0->j) {
          if (x.is_string()) options.push_back(x.get<std::string>());
        }
      } else {
        ASSIGN_OR_RETURN(std::string x, Str(*a0, m.c_str()));
        options.push_back(x);
      }
      for (const std::string& x : options) {
        if (m == "startswith" ? s.rfind(x, 0) == 0
                              : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0) {
          return Value(Json(true));
        }
      }
      return Value(Json(false));
    }
    if (m == "split") {
      Json out = Json::array();
      // A piece per separator: a long string of separators is many values.
      auto push = [&](std::string piece) -> absl::Status {
        RETURN_IF_ERROR(CheckItems(out.size() + 1));
        RETURN_IF_ERROR(Charge(kCharValueBytes + piece.size()));
        out.push_back(std::move(piece));
        return absl::OkStatus();
      };
      int64_t maxsplit = -1;
      if (a1 != nullptr && !a1->undefined && a1->j.is_number_integer()) maxsplit = a1->j.get<int64_t>();
      if (a0 == nullptr || a0->undefined || a0->j.is_null()) {
        size_t i = 0;
        while (i < s.size()) {
          while (i < s.size() && IsSpace(s[i])) ++i;
          if (i >= s.size()) break;
          if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
            RETURN_IF_ERROR(push(Strip(s.substr(i), nullptr, false, true)));
            break;
          }
          size_t j = i;
          while (j < s.size() && !IsSpace(s[j])) ++j;
          RETURN_IF_ERROR(push(s.substr(i, j - i)));
          i = j;
        }
        return Value(std::move(out));
      }
      ASSIGN_OR_RETURN(std::string sep, Str(*a0, "split()"));
      if (sep.empty()) return RenderError("split() with an empty separator");
      size_t i = 0;
      while (true) {
        const size_t j = s.find(sep, i);
        if (j == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
          RETURN_IF_ERROR(push(s.substr(i)));
          break;
        }
        RETURN_IF_ERROR(push(s.substr(i, j - i)));
        i = j + sep.size();
      }
      return Value(std::move(out));
    }
    if (m == "replace") {
      if (a0 == nullptr || a1 == nullptr) return RenderError(".replace() needs two arguments");
      ASSIGN_OR_RETURN(std::string from, Str(*a0, "replace()"));
      ASSIGN_OR_RETURN(std::string to, Str(*a1, "replace()"));
      ASSIGN_OR_RETURN(std::string r, Replace(s, from, to));
      return Value(Json(std::move(r)));
    }
    return RenderError(absl::StrCat(".", m, "() on a string"));
  }

  // Replacing each 'a' of a long string with a long string is the square of its length.
  absl::StatusOr<std::string> Replace(const std::string& s, const std::string& from,
                                      const std::string& to) {
    if (from.empty()) return s;
    std::string r;
    size_t i = 0;
    while (true) {
      const size_t j = s.find(from, i);
      if (j == std::string::npos) break;
      RETURN_IF_ERROR(Append(std::string_view(s).substr(i, j - i), &r));
      RETURN_IF_ERROR(Append(to, &r));
      i = j + from.size();
    }
    RETURN_IF_ERROR(Append(std::string_view(s).substr(i), &r));  // the tail, bounded the same
    return r;
  }

  static std::string Capitalize(const std::string& s, bool every_word) {
    std::string r = s;
    bool start = true;
    for (char& c : r) {
      const unsigned char u = static_cast<unsigned char>(c);
      if (std::isalpha(u)) {
        c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
        start = false;
      } else if (every_word) {
        start = true;
      }
    }
    return r;
  }

  absl::StatusOr<Value> Filter(const Expr& e) {
    Value tmp;
    ASSIGN_OR_RETURN(const Value* xp, EvalRef(*e.args[0], &tmp));
    const Value& x = *xp;
    ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(e, 1));
    const std::string& f = e.name;
    if (f == "default" || f == "d") {
      const bool boolean = args.size() > 1 && Truthy(args[1]);
      if (x.undefined || (boolean && !Truthy(x))) return args.empty() ? Value(Json("")) : args[0];
      return x;
    }
    if (f == "safe") return x;
    if (f == "string") return Value(Json(ToStr(x)));
    if (f == "tojson") {
      int indent = -1;
      for (const auto& [k, v] : e.kwargs) {
        if (k != "indent") return RenderError(absl::StrCat("tojson(", k, "=) is not supported"));
        ASSIGN_OR_RETURN(Value iv, Eval(*v));
        if (!iv.undefined && iv.j.is_number_integer()) indent = static_cast<int>(iv.j.get<int64_t>());
      }
      if (!args.empty() && !args[0].undefined && args[0].j.is_number_integer()) {
        indent = static_cast<int>(args[0].j.get<int64_t>());
      }
      std::string out;
      if (!PyJson(x.undefined ? Json() : x.j, indent, 0, kMaxOutput, &out)) {
        return RenderError("tojson's text grows beyond 64 MB");
      }
      return Value(Json(std::move(out)));
    }
    if (x.undefined) return RenderError(absl::StrCat("the filter '", f, "' on an undefined value"));
    const Json& j = x.j;
    // String filters take any value as its string (jinja2's soft_str: None is "None").
    if (f == "trim") return Value(Json(Strip(ToStr(x), args.empty() ? nullptr : &args[0], true, true)));
    if (f == "length" || f == "count") {
      if (j.is_string()) return Value(Json(CountChars(j.get_ref<const std::string&>())));
      if (j.is_array() || j.is_object()) return Value(Json(static_cast<int64_t>(j.size())));
      return RenderError("length of a value that has none");
    }
    if (f == "upper" || f == "lower" || f == "capitalize" || f == "title") {
      std::string s = ToStr(x);
      if (f == "capitalize" || f == "title") return Value(Json(Capitalize(s, f == "title")));
      for (char& c : s) c = static_cast<char>(f == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return Value(Json(s));
    }
    if (f == "first" || f == "last") {
      if (j.is_array()) return j.empty() ? Value::Undef() : Value(f == "first" ? j.front() : j.back());
      if (j.is_string()) {
        const std::string& s = j.get_ref<const std::string&>();
        const int64_t n = CountChars(s);
        return n == 0 ? Value::Undef() : Value(Json(CharAt(s, f == "first" ? 0 : n - 1)));
      }
      return RenderError(absl::StrCat(f, " of a value that is not a sequence"));
    }
    if (f == "join") {
      if (!j.is_array()) return RenderError("join needs a list");
      const std::string sep = args.empty() ? "" : ToStr(args[0]);
      std::string out;
      for (size_t k = 0; k < j.size(); ++k) {
        if (k > 0) RETURN_IF_ERROR(Append(sep, &out));
        RETURN_IF_ERROR(Append(ToStr(Value(j[k])), &out));
      }
      return Value(Json(std::move(out)));
    }
    if (f == "int") {
      if (j.is_number()) return Value(Json(static_cast<int64_t>(j.get<double>())));
      if (j.is_string()) {
        try {
          return Value(Json(std::stoll(j.get<std::string>())));
        } catch (...) {
          return Value(Json(int64_t{0}));
        }
      }
      return Value(Json(int64_t{0}));
    }
    if (f == "float") return Value(Json(j.is_number() ? j.get<double>() : 0.0));
    if (f == "abs") {
      if (j.is_number_integer()) return Value(Json(std::llabs(j.get<int64_t>())));
      if (j.is_number()) return Value(Json(std::fabs(j.get<double>())));
      return RenderError("abs of a value that is not a number");
    }
    if (f == "list") {
      if (j.is_array()) return x;
      Json out = Json::array();
      if (j.is_string()) {
        const std::string& s = j.get_ref<const std::string&>();
        ASSIGN_OR_RETURN(std::vector<std::string> chars, SplitChars(s));
        for (std::string& c : chars) out.push_back(std::move(c));
      } else if (j.is_object()) {
        for (const auto& [k, v] : j.items()) out.push_back(k);
      } else {
        return RenderError("list of a value that is not iterable");
      }
      return Value(std::move(out));
    }
    if (f == "reverse") {
      if (j.is_string()) {
        const std::string& s = j.get_ref<const std::string&>();
        ASSIGN_OR_RETURN(std::vector<std::string> chars, SplitChars(s));
        std::string r;
        for (auto it = chars.rbegin(); it != chars.rend(); ++it) r += *it;
        return Value(Json(r));
      }
      if (!j.is_array()) return RenderError("reverse needs a sequence");
      Json out = Json::array();
      for (auto it = j.rbegin(); it != j.rend(); ++it) out.push_back(*it);
      return Value(std::move(out));
    }
    if (f == "replace") {
      if (args.size() < 2) return RenderError("replace needs two arguments");
      ASSIGN_OR_RETURN(std::string r, Replace(ToStr(x), ToStr(args[0]), ToStr(args[1])));
      return Value(Json(std::move(r)));
    }
    if (f == "items") {
      if (!j.is_object()) return RenderError("items needs a mapping");
      Json out = Json::array();
      for (const auto& [k, v] : j.items()) out.push_back(Json::array({k, v}));
      return Value(std::move(out));
    }
    return RenderError(absl::StrCat("the filter '", f, "'"));
  }

  absl::StatusOr<Value> Test(const Expr& e) {
    Value tmp;
    ASSIGN_OR_RETURN(const Value* xp, EvalRef(*e.args[0], &tmp));
    const Value& x = *xp;
    ASSIGN_OR_RETURN(std::vector<Value> args, EvalArgs(e, 1));
    const std::string& t = e.name;
    const Json& j = x.j;
    bool r = false;
    if (t == "defined") {
      r = !x.undefined;
    } else if (t == "undefined") {
      r = x.undefined;
    } else if (x.undefined) {
      r = false;
    } else if (t == "none") {
      r = j.is_null();
    } else if (t == "string") {
      r = j.is_string();
    } else if (t == "number") {
      r = j.is_number();
    } else if (t == "integer") {
      r = j.is_number_integer();
    } else if (t == "float") {
      r = j.is_number_float();
    } else if (t == "boolean") {
      r = j.is_boolean();
    } else if (t == "mapping") {
      r = j.is_object();
    } else if (t == "sequence" || t == "iterable") {
      r = j.is_array() || j.is_string() || j.is_object();
    } else if (t == "true" || t == "false") {
      r = j.is_boolean() && j.get<bool>() == (t == "true");
    } else if (t == "odd" || t == "even") {
      if (!j.is_number_integer()) return RenderError(absl::StrCat("'", t, "' needs an integer"));
      r = (j.get<int64_t>() % 2 != 0) == (t == "odd");
    } else if (t == "equalto" || t == "eq") {
      r = !args.empty() && !args[0].undefined && j == args[0].j;
    } else if (t == "in") {
      if (args.empty()) return RenderError("'in' test needs an argument");
      ASSIGN_OR_RETURN(r, Contains(args[0], x));
    }
    return Value(Json(e.negate ? !r : r));
  }

  static absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
    if (container.undefined) return RenderError("'in' an undefined value");
    const Json& c = container.j;
    if (c.is_string()) {
      if (item.undefined || !item.j.is_string()) return RenderError("'in <string>' needs a string on the left");
      return c.get_ref<const std::string&>().find(item.j.get_ref<const std::string&>()) != std::string::npos;
    }
    if (c.is_array()) {
      for (const Json& e : c) {
        if (!item.undefined && e == item.j) return true;
      }
      return false;
    }
    if (c.is_object()) return !item.undefined && item.j.is_string() && c.contains(item.j.get<std::string>());
    return RenderError("'in' a value that is not a container");
  }

  absl::StatusOr<Value> BinaryOp(const std::string& op, const Value& a, const Value& b) {
    if (op == "~" || op == "+") {
      const auto size = [](const Value& v) {
        return v.undefined ? 0 : v.j.is_string() ? v.j.get_ref<const std::string&>().size() : v.j.size();
      };
      if (size(a) + size(b) > kMaxOutput) return RenderError("a value grows beyond 64 MB");
      if (!a.undefined && !b.undefined && a.j.is_array() && b.j.is_array()) {
        RETURN_IF_ERROR(CheckItems(a.j.size() + b.j.size()));
      }
    }
    if (op == "~") return Value(Json(ToStr(a) + ToStr(b)));
    if (op == "in" || op == "not in") {
      ASSIGN_OR_RETURN(bool r, Contains(b, a));
      return Value(Json(op == "in" ? r : !r));
    }
    if (op == "==" || op == "!=") {
      const bool eq = a.undefined || b.undefined ? a.undefined == b.undefined : a.j == b.j;
      return Value(Json(op == "==" ? eq : !eq));
    }
    if (a.undefined || b.undefined) {
      return RenderError(absl::StrCat("'", op, "' with an undefined value"));
    }
    const Json& x = a.j;
    const Json& y = b.j;
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      if (!((x.is_number() && y.is_number()) || (x.is_string() && y.is_string()))) {
        return RenderError(absl::StrCat("'", op, "' between values that do not compare"));
      }
      bool r = op == "<" ? x < y : op == ">" ? x > y : op == "<=" ? x <= y : x >= y;
      return Value(Json(r));
    }
    if (op == "+") {
      if (x.is_string() && y.is_string()) return Value(Json(x.get<std::string>() + y.get<std::string>()));
      if (x.is_array() && y.is_array()) {
        Json out = x;
        for (const Json& e : y) out.push_back(e);
        return Value(std::move(out));
      }
    }
    if (!(x.is_number() || x.is_boolean()) || !(y.is_number() || y.is_boolean())) {
      return RenderError(absl::StrCat("'", op, "' between ", x.type_name(), " and ", y.type_name()));
    }
    const bool ints = (x.is_number_integer() || x.is_boolean()) && (y.is_number_integer() || y.is_boolean());
    auto as_int = [](const Json& v) { return v.is_boolean() ? int64_t{v.get<bool>()} : v.get<int64_t>(); };
    auto as_double = [](const Json& v) { return v.is_boolean() ? double{v.get<bool>() ? 1.0 : 0.0} : v.get<double>(); };
    if (ints && op == "**" && as_int(y) >= 0 && as_int(y) < 64) {
      int64_t r = 1;
      for (int64_t k = 0; k < as_int(y); ++k) r *= as_int(x);
      return Value(Json(r));
    }
    if (ints && op != "/" && op != "**") {
      const int64_t p = as_int(x), q = as_int(y);
      if ((op == "//" || op == "%") && q == 0) return RenderError("division by zero");
      if (op == "+") return Value(Json(p + q));
      if (op == "-") return Value(Json(p - q));
      if (op == "*") return Value(Json(p * q));
      int64_t d = p / q, m = p % q;  // Python floors
      if (m != 0 && ((m < 0) != (q < 0))) {
        --d;
        m += q;
      }
      return Value(Json(op == "//" ? d : m));
    }
    const double p = as_double(x), q = as_double(y);
    if (op == "+") return Value(Json(p + q));
    if (op == "-") return Value(Json(p - q));
    if (op == "*") return Value(Json(p * q));
    if (op == "**") return Value(Json(std::pow(p, q)));
    if (q == 0) return RenderError("division by zero");
    if (op == "/") return Value(Json(p / q));
    if (op == "//") return Value(Json(std::floor(p / q)));
    return Value(Json(p - q * std::floor(p / q)));
  }

  // A value the render holds: every value an expression makes (a copy of a variable included)
  // is charged to the budget.
  absl::StatusOr<Value> Eval(const Expr& e) {
    const DepthGuard guard(depth_);
    if (guard.Exceeds(200)) return RenderError("expressions nest too deeply");
    RETURN_IF_ERROR(Step());
    ASSIGN_OR_RETURN(Value v, Compute(e));
    if (!v.undefined) RETURN_IF_ERROR(Charge(ByteSize(v.j)));
    return v;
  }

  // The value of `e` to read, without copying it where it is a variable: `messages|length` or
  // `message['content']` inside a loop over a long conversation copies nothing. Any other
  // expression is evaluated into `tmp`. Evaluating expressions changes no variable, so the
  // pointer stays valid while the caller evaluates its other operands.
  absl::StatusOr<const Value*> EvalRef(const Expr& e, Value* tmp) {
    if (e.kind == Expr::Kind::kName) {
      RETURN_IF_ERROR(Step());
      const Value* v = Lookup(e.name);
      if (v != nullptr) return v;
      *tmp = Value::Undef();
      return tmp;
    }
    ASSIGN_OR_RETURN(*tmp, Eval(e));
    return tmp;
  }

  absl::StatusOr<Value> Compute(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        if (e.name == "undefined") return Value::Undef();
        return Value(e.literal);
      case Expr::Kind::kName: {
        Value* v = Lookup(e.name);
        return v == nullptr ? Value::Undef() : *v;
      }
      case Expr::Kind::kAttr: {
        Value tmp;
        ASSIGN_OR_RETURN(const Value* base, EvalRef(*e.args[0], &tmp));
        if (base->undefined) {
          return RenderError(absl::StrCat("'.", e.name, "' of an undefined value"));
        }
        if (base->j.is_object()) {
          auto it = base->j.find(e.name);
          return it == base->j.end() ? Value::Undef() : Value(*it);
        }
        if (base->j.is_null()) return RenderError(absl::StrCat("'.", e.name, "' of None"));
        return Value::Undef();
      }
      case Expr::Kind::kIndex: {
        Value tmp;
        ASSIGN_OR_RETURN(const Value* base, EvalRef(*e.args[0], &tmp));
        ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
        return Index(*base, key);
      }
      case Expr::Kind::kSlice: {
        Value tmp;
        ASSIGN_OR_RETURN(const Value* base, EvalRef(*e.args[0], &tmp));
        Value parts[3];
        const Value* ptrs[3] = {nullptr, nullptr, nullptr};
        for (int k = 0; k < 3; ++k) {
          if (e.args[k + 1] == nullptr) continue;
          ASSIGN_OR_RETURN(parts[k], Eval(*e.args[k + 1]));
          ptrs[k] = &parts[k];
        }
        return Slice(*base, ptrs);
      }
      case Expr::Kind::kCall: return Call(e);
      case Expr::Kind::kFilter: return Filter(e);
      case Expr::Kind::kTest: return Test(e);
      case Expr::Kind::kNot: {
        Value tmp;
        ASSIGN_OR_RETURN(const Value* v, EvalRef(*e.args[0], &tmp));
        return Value(Json(!Truthy(*v)));
      }
      case Expr::Kind::kNeg: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
        if (v.undefined || !v.j.is_number()) return RenderError("'-' on a value that is not a number");
        return v.j.is_number_integer() ? Value(Json(-v.j.get<int64_t>())) : Value(Json(-v.j.get<double>()));
      }
      case Expr::Kind::kAnd: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (!Truthy(a)) return a;
        return Eval(*e.args[1]);
      }
      case Expr::Kind::kOr: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (Truthy(a)) return a;
        return Eval(*e.args[1]);
      }
      case Expr::Kind::kCond: {
        Value tmp;
        ASSIGN_OR_RETURN(const Value* c, EvalRef(*e.args[0], &tmp));
        return Eval(*e.args[Truthy(*c) ? 1 : 2]);
      }
      case Expr::Kind::kBinary: {
        Value tmp_a, tmp_b;
        ASSIGN_OR_RETURN(const Value* a, EvalRef(*e.args[0], &tmp_a));
        ASSIGN_OR_RETURN(const Value* b, EvalRef(*e.args[1], &tmp_b));
        return BinaryOp(e.name, *a, *b);
      }
      case Expr::Kind::kList: {
        Json out = Json::array();
        for (const auto& x : e.args) {
          ASSIGN_OR_RETURN(Value v, Eval(*x));
          out.push_back(v.undefined ? Json() : std::move(v.j));
        }
        return Value(std::move(out));
      }
      case Expr::Kind::kDict: {
        Json out = Json::object();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          ASSIGN_OR_RETURN(Value key, Eval(*e.args[k]));
          ASSIGN_OR_RETURN(Value v, Eval(*e.args[k + 1]));
          if (key.undefined || !key.j.is_string()) return RenderError("dict keys must be strings");
          out[key.j.get<std::string>()] = v.undefined ? Json() : std::move(v.j);
        }
        return Value(std::move(out));
      }
    }
    return RenderError("unknown expression");
  }

  // Budgets of steps and of time, so that no template (loops over range(10**6) inside each
  // other, or a scan of a long string in each) runs for ever. A chat template renders in
  // microseconds to milliseconds; the clock is read every step (a step may scan a 64 MB string).
  absl::Status Step() {
    if (++steps_ > kMaxSteps) {
      return RenderError("the template runs too long (over 10 million steps)");
    }
    if (std::chrono::steady_clock::now() > deadline_) {
      return RenderError("the template runs too long (over 2 seconds)");
    }
    return absl::OkStatus();
  }

  // Every byte the render builds (values, copies of variables, split characters, joined and
  // replaced text) counts against one budget, freed or not: no template can take the memory (a
  // 64 MB string split into characters would be 3 GB of values) or copy for ever.
  absl::Status Charge(size_t bytes) {
    built_ += bytes;
    if (built_ > kMaxBuilt) return RenderError("the template builds more than 512 MB of values");
    return absl::OkStatus();
  }

  // A list made in one piece (split, a string's characters, list + list) is at most a million
  // items: one copy or free of it stays well within the time budget even under a sanitizer,
  // where a list of 10 million short strings takes seconds to build.
  static absl::Status CheckItems(size_t n) {
    if (n > kMaxItems) return RenderError("a list grows beyond 1 million items");
    return absl::OkStatus();
  }

  // A string's characters as values (a loop over it, a slice, |list, |reverse).
  absl::StatusOr<std::vector<std::string>> SplitChars(const std::string& s) {
    const int64_t n = CountChars(s);
    RETURN_IF_ERROR(CheckItems(static_cast<size_t>(n)));
    RETURN_IF_ERROR(Charge(static_cast<size_t>(n) * kCharValueBytes));
    return Chars(s);
  }

  // The items a loop or a slice goes over: a list's, or a string's characters.
  absl::StatusOr<std::vector<Json>> SequenceItems(const Json& j) {
    std::vector<Json> items;
    if (j.is_array()) {
      RETURN_IF_ERROR(Charge(ByteSize(j)));
      items.assign(j.begin(), j.end());
    } else {
      ASSIGN_OR_RETURN(std::vector<std::string> chars, SplitChars(j.get_ref<const std::string&>()));
      for (std::string& c : chars) items.emplace_back(std::move(c));
    }
    return items;
  }

  // Appends `piece` to a string value being built (|join, replace): charged to the budget, and
  // no value passes 64 MB.
  absl::Status Append(std::string_view piece, std::string* out) {
    RETURN_IF_ERROR(Charge(piece.size()));
    if (out->size() + piece.size() > kMaxOutput) return RenderError("a value grows beyond 64 MB");
    out->append(piece);
    return absl::OkStatus();
  }

  static constexpr int64_t kMaxSteps = 10'000'000;
  static constexpr size_t kMaxItems = 1'000'000;
  static constexpr size_t kMaxOutput = 64u << 20;
  static constexpr size_t kMaxBuilt = size_t{512} << 20;
  const std::chrono::steady_clock::time_point deadline_ =
      std::chrono::steady_clock::now() + std::chrono::seconds(2);
  std::vector<std::map<std::string, Value>> scopes_;
  int depth_ = 0;
  int64_t steps_ = 0;
  size_t built_ = 0;
};

}  // namespace

ChatTemplate::~ChatTemplate() = default;

// nlohmann-json throws on a type mismatch the checks above missed; the project does not use
// exceptions elsewhere, so parsing and rendering are the boundary that turns them into a status.
absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Parse(std::string_view source) {
  try {
    ASSIGN_OR_RETURN(std::vector<Segment> segments, Segments(source));
    TreeBuilder builder(std::move(segments));
    ASSIGN_OR_RETURN(std::unique_ptr<Node> root, builder.Build());
    auto t = std::unique_ptr<ChatTemplate>(new ChatTemplate());
    t->root_ = std::move(root);
    return t;
  } catch (const std::exception& e) {
    return RenderError(absl::StrCat("cannot parse: ", e.what()));
  }
}

absl::StatusOr<std::string> ChatTemplate::Render(const Json& context) const {
  try {
    Renderer r(context);
    std::string out;
    RETURN_IF_ERROR(r.Exec(*root_, &out));
    return out;
  } catch (const std::exception& e) {
    return RenderError(absl::StrCat("cannot render: ", e.what()));
  }
}

absl::StatusOr<ModelChatTemplate> LoadChatTemplate(const std::string& model_dir) {
  ModelChatTemplate out;
  std::string source;
  const std::string config_path = model_dir + "/tokenizer_config.json";
  if (std::ifstream in(config_path); in) {
    std::stringstream text;
    text << in.rdbuf();
    const Json config = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, " is not valid JSON"));
    }
    if (config.is_object()) {
      // "bos_token": "<s>" or {"content": "<s>", …} (AddedToken's form).
      for (auto [key, dst] : {std::pair{"bos_token", &out.bos_token}, std::pair{"eos_token", &out.eos_token}}) {
        if (!config.contains(key)) continue;
        const Json& v = config[key];
        if (v.is_string()) *dst = v.get<std::string>();
        if (v.is_object() && v.contains("content") && v["content"].is_string()) {
          *dst = v["content"].get<std::string>();
        }
      }
      if (config.contains("chat_template")) {
        const Json& t = config["chat_template"];
        if (t.is_string()) {
          source = t.get<std::string>();
        } else if (t.is_array()) {
          for (const Json& entry : t) {
            if (entry.is_object() && entry.value("name", "") == "default" &&
                entry.contains("template") && entry["template"].is_string()) {
              source = entry["template"].get<std::string>();
            }
          }
          if (source.empty()) {
            return absl::InvalidArgumentError(
                absl::StrCat(config_path, ": chat_template has no \"default\" entry"));
          }
        }
      }
    }
  }
  if (source.empty()) {
    std::ifstream in(model_dir + "/chat_template.jinja");
    if (!in) return out;
    std::stringstream text;
    text << in.rdbuf();
    source = text.str();
  }
  absl::StatusOr<std::unique_ptr<ChatTemplate>> t = ChatTemplate::Parse(source);
  if (!t.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(model_dir, ": ", t.status().message()));
  }
  out.chat_template = std::move(*t);
  return out;
}

}  // namespace shardlm
