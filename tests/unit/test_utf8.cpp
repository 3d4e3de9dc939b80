#include "proto/utf8.hpp"

#include <gtest/gtest.h>

using cskit::proto::is_valid_utf8;

TEST(utf8, accepts_well_formed) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain ascii text that is longer than eight bytes"));
  EXPECT_TRUE(is_valid_utf8("文件传输/报告.pdf"));
  EXPECT_TRUE(is_valid_utf8("emoji \xF0\x9F\x98\x80 ok"));
  EXPECT_TRUE(is_valid_utf8(std::string_view("a\0b", 3)));
  EXPECT_TRUE(is_valid_utf8("\xF4\x8F\xBF\xBF"));  // U+10FFFF
  EXPECT_TRUE(is_valid_utf8("\xEE\x80\x80"));      // U+E000
}

TEST(utf8, rejects_malformed) {
  EXPECT_FALSE(is_valid_utf8("\x80"));                  // lone continuation
  EXPECT_FALSE(is_valid_utf8("\xC0\x80"));              // overlong NUL
  EXPECT_FALSE(is_valid_utf8("\xC1\xBF"));              // overlong
  EXPECT_FALSE(is_valid_utf8("\xE0\x80\xAF"));          // overlong 3-byte
  EXPECT_FALSE(is_valid_utf8("\xF0\x80\x80\xAF"));      // overlong 4-byte
  EXPECT_FALSE(is_valid_utf8("\xED\xBF\xBF"));          // surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));      // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xF5\x80\x80\x80"));
  EXPECT_FALSE(is_valid_utf8("abc\xE6\x96"));           // truncated at end
  EXPECT_FALSE(is_valid_utf8("\xE6\x96z"));             // bad continuation
  EXPECT_FALSE(is_valid_utf8("12345678\xFF"));          // after the ASCII fast path
}
