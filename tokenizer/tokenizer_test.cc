#include "tokenizer/tokenizer.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/text.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

// A hand-made byte-level BPE: merges by rank, a template that adds <s>, added tokens with
// lstrip/rstrip, NFC and Replace normalizers.
TEST(TokenizerTest, TinyBpeEncodesAndDecodes) {
  auto tok = Tokenizer::Load(SHARDLM_TOKENIZER_TESTDATA "/tiny");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "ab ab": "ab" merges to 3; " ab" is Ġ a b → Ġ ab → Ġab (4).
  EXPECT_EQ((*tok)->Encode("ab ab", false), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ((*tok)->Encode("ab ab", true), (std::vector<int32_t>{9, 3, 4}));
  // The tab becomes a space (Replace) before splitting.
  EXPECT_EQ((*tok)->Encode("ab\tab", false), (std::vector<int32_t>{3, 4}));
  // e + combining acute composes (NFC) to é, whose bytes C3 A9 are Ã © in byte-level form,
  // merged to id 12.
  EXPECT_EQ((*tok)->Encode("e\xCC\x81", false), (std::vector<int32_t>{12}));
  // An added token with lstrip/rstrip takes the spaces beside it.
  EXPECT_EQ((*tok)->Encode("ab <eot> ab", false), (std::vector<int32_t>{3, 10, 3}));
  EXPECT_EQ((*tok)->Decode({{3, 4, 6}}, false), "ab ab!");
  EXPECT_EQ((*tok)->Decode({{9, 3, 10}}, true), "ab");
  EXPECT_EQ((*tok)->Decode({{9, 3, 10}}, false), "<s>ab<eot>");
  EXPECT_EQ((*tok)->TokenId("Ġab"), 4);
  EXPECT_EQ((*tok)->TokenId("zz"), -1);
  EXPECT_EQ((*tok)->vocab_size(), 13);
}

// Streaming never cuts a character: é is two byte-level tokens (Ã, ©); the first waits.
TEST(TokenizerTest, StreamHoldsBackHalfCharacters) {
  auto tok = Tokenizer::Load(SHARDLM_TOKENIZER_TESTDATA "/tiny");
  ASSERT_TRUE(tok.ok()) << tok.status();
  StreamDecoder stream(**tok, true);
  EXPECT_EQ(stream.Next(3), "ab");
  EXPECT_EQ(stream.Next(8), "");  // the first byte of é
  EXPECT_EQ(stream.Next(11), "\xC3\xA9");
  EXPECT_EQ(stream.Next(9), "");  // special, skipped
  EXPECT_EQ(stream.Next(6), "!");
  EXPECT_EQ(stream.Next(8), "");
  EXPECT_EQ(stream.Finish(), "\xEF\xBF\xBD");  // a cut character at the end becomes U+FFFD

  auto bytes = Tokenizer::Bytes(256);
  StreamDecoder byte_stream(*bytes, false);
  const std::string euro = "\xE2\x82\xAC";
  std::string out;
  for (unsigned char c : euro) {
    const std::string piece = byte_stream.Next(c);
    EXPECT_TRUE(IsValidUtf8(piece));
    out += piece;
  }
  out += byte_stream.Finish();
  EXPECT_EQ(out, euro);
}

TEST(TokenizerTest, BytesTokenizer) {
  auto bytes = Tokenizer::Bytes(256);
  EXPECT_EQ(bytes->Encode("hi", true), (std::vector<int32_t>{256, 'h', 'i'}));
  EXPECT_EQ(bytes->Encode("hi", false), (std::vector<int32_t>{'h', 'i'}));
  EXPECT_EQ(bytes->Decode({{256, 'h', 'i', 257}}, false), "hi");
}

// Split behaviours, on the example of the tokenizers library's documentation
// ("the-final--countdown", delimiter "-"): each piece is a whole vocabulary entry.
TEST(TokenizerTest, SplitBehaviours) {
  const std::vector<std::string> vocab = {"the",    "-",      "final",      "countdown", "the-",
                                          "final-", "-final", "-countdown", "--"};
  std::string vocab_json;
  for (size_t i = 0; i < vocab.size(); ++i) {
    absl::StrAppend(&vocab_json, i ? ", " : "", "\"", vocab[i], "\": ", i);
  }
  auto ids = [&](const std::string& behavior) {
    const std::string json = absl::StrCat(
        R"({"model": {"type": "BPE", "ignore_merges": true, "merges": [], "vocab": {)", vocab_json,
        R"(}}, "pre_tokenizer": {"type": "Split", "pattern": {"String": "-"}, "behavior": ")",
        behavior, R"("}})");
    auto tok = Tokenizer::FromJson(json, "", "split");
    EXPECT_TRUE(tok.ok()) << tok.status();
    std::vector<std::string> pieces;
    if (!tok.ok()) return pieces;
    for (const int32_t id : (*tok)->Encode("the-final--countdown", false)) {
      pieces.push_back(vocab[id]);
    }
    return pieces;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(ids("Removed"), (V{"the", "final", "countdown"}));
  EXPECT_EQ(ids("Isolated"), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(ids("MergedWithPrevious"), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(ids("MergedWithNext"), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(ids("Contiguous"), (V{"the", "-", "final", "--", "countdown"}));
}

// As the tokenizers library: an added token with `normalized: false` is found in the raw text;
// one with `normalized: true` is found in the normalized text, as its content normalized.
TEST(TokenizerTest, NormalizedAddedTokensMatchTheNormalizedText) {
  const std::string e_acute = "\xC3\xA9", e_combining = "e\xCC\x81";  // é: NFC and NFD
  auto encode = [&](bool normalized, std::string_view text) {
    const std::string json = absl::StrCat(
        R"({"normalizer": {"type": "NFC"}, "added_tokens": [{"id": 3, "content": ")", e_combining,
        R"(", "special": false, "normalized": )", normalized ? "true" : "false",
        R"(}], "model": {"type": "BPE", "merges": [], "vocab": {"e": 0, ")", e_acute,
        R"(": 1, ")", "\xCC\x81", R"(": 2}}})");
    auto tok = Tokenizer::FromJson(json, "", "normalized");
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? (*tok)->Encode(text, false) : std::vector<int32_t>{};
  };
  using V = std::vector<int32_t>;
  // normalized: the token's content becomes "é" (NFC), which both spellings normalize to.
  EXPECT_EQ(encode(true, e_combining), (V{3}));
  EXPECT_EQ(encode(true, e_acute), (V{3}));
  // not normalized: only the raw decomposed spelling is the token; "é" goes to the model.
  EXPECT_EQ(encode(false, e_combining), (V{3}));
  EXPECT_EQ(encode(false, e_acute), (V{1}));
}

// The vocabulary and merges are streamed past the document tree (a SAX reader): the same
// tokenizer whichever way the merges are written, and whatever else surrounds them.
TEST(TokenizerTest, StreamedTablesReadAsWritten) {
  const std::string rest = R"("type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "x": 9, "x": 3})";
  for (const std::string merges : {R"(["a b"])", R"([["a", "b"]])"}) {
    const std::string json =
        absl::StrCat(R"({"version": "1.0", "added_tokens": [], "vocab": {"zz": 7}, "model": {)",
                     rest, R"(, "merges": )", merges, R"(, "dropout": null}, "merges": [1]})");
    auto tok = Tokenizer::FromJson(json, "", "tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->Encode("abxab", false), (std::vector<int32_t>{2, 3, 2})) << merges;
    EXPECT_EQ((*tok)->TokenId("x"), 3);  // a repeated key: the last one counts
    EXPECT_EQ((*tok)->TokenId("zz"), -1);  // "vocab" outside "model" is not the vocabulary
  }
}

// Every component the loader does not implement is an error that names it.
TEST(TokenizerTest, UnsupportedPiecesAreNamed) {
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0}, "merges": []})";
  const std::pair<std::string, std::string> cases[] = {
      {R"({"model": {"type": "WordPiece", "vocab": {}}})", "model type \"WordPiece\""},
      {absl::StrCat("{", model, R"(, "normalizer": {"type": "Lowercase"}})"),
       "normalizer type \"Lowercase\""},
      {absl::StrCat("{", model, R"(, "pre_tokenizer": {"type": "BertPreTokenizer"}})"),
       "pre_tokenizer type \"BertPreTokenizer\""},
      {absl::StrCat("{", model, R"(, "post_processor": {"type": "RobertaProcessing"}})"),
       "post_processor type \"RobertaProcessing\""},
      {absl::StrCat("{", model, R"(, "decoder": {"type": "WordPiece"}})"),
       "decoder type \"WordPiece\""},
      {absl::StrCat("{", model, R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "("},
           "behavior": "Isolated"}})"),
       "does not compile"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})",
       "not in the vocabulary"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": 0.1}})",
       "BPE dropout"},
      {"not json", "not a valid JSON object"},
      {R"({"model": {"type": "BPE", "vocab": {"a": "zero"}}})", "the id of \"a\" must be an integer"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 1.5}}})", "the id of \"a\" must be an integer"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 4294967296}}})", "beyond 32 bits"},
      {R"({"model": {"type": "BPE", "vocab": ["a"]}})", "model.vocab must be an object"},
      {R"({"model": {"type": "BPE", "merges": []}})", "model.vocab is missing"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": "a a"}})",
       "model.merges must be an array"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [1]}})", "a pair of strings"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]}})", "a pair of strings"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "a", "a"]]}})",
       "a pair of strings"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [[["a"]]]}})",
       "a pair of strings"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [{"a": 0}]}})",
       "a pair of strings"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}})", "bad merge \"ab\""},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}} trailing)", "not a valid JSON object"},
  };
  for (const auto& [json, needle] : cases) {
    auto tok = Tokenizer::FromJson(json, "", "tokenizer.json");
    ASSERT_FALSE(tok.ok()) << json;
    EXPECT_NE(tok.status().message().find(needle), std::string::npos)
        << tok.status().message() << "\n  wanted: " << needle;
  }
  auto missing = Tokenizer::Load("/nonexistent");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/tokenizer.json"), std::string::npos);
}

}  // namespace
}  // namespace shardlm
