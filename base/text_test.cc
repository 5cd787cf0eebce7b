#include "base/text.h"

#include <string>

#include "gtest/gtest.h"

namespace shardlm {
namespace {

TEST(Utf8, AcceptsWellFormedAndRejectsEachKindOfMalformedSequence) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));                         // U+10FFFF
  for (const char* bad : {"\x80", "\xc3", "\xe2\x82", "\xc0\xaf",  // stray, truncated, overlong
                          "\xe0\x80\xaf", "\xf0\x80\x80\xaf",      // overlong 3 and 4 bytes
                          "\xed\xa0\x80",                          // surrogate U+D800
                          "\xf4\x90\x80\x80",                      // past U+10FFFF
                          "\xf8\x88\x80\x80\x80", "\xff"}) {
    EXPECT_FALSE(IsValidUtf8(bad)) << bad;
    const std::string fixed = ReplaceInvalidUtf8(std::string("a") + bad + "b");
    EXPECT_TRUE(IsValidUtf8(fixed)) << bad;
    EXPECT_EQ(fixed.front(), 'a');
    EXPECT_EQ(fixed.back(), 'b');
    EXPECT_NE(fixed.find("\xef\xbf\xbd"), std::string::npos);
  }
  EXPECT_EQ(ReplaceInvalidUtf8("ok \xc3\xa9"), "ok \xc3\xa9");
  EXPECT_EQ(ReplaceInvalidUtf8("\xc3(").size(), 4u);  // U+FFFD then '('
}

TEST(JsonNesting, CountsOutsideStringsOnly) {
  EXPECT_TRUE(CheckJsonNesting(R"({"a": [[1]], "s": "[[[[", 't': '\'{{{'})", 3).ok());
  EXPECT_FALSE(CheckJsonNesting("[[[[]]]]", 3).ok());
  EXPECT_TRUE(CheckJsonNesting("[[[]]]", 3).ok());
  const absl::Status stray = CheckJsonNesting("{]]][[[[[[", 3);
  EXPECT_FALSE(stray.ok());
  EXPECT_NE(stray.message().find("unbalanced"), std::string::npos) << stray;
}

}  // namespace
}  // namespace shardlm
