// The chat client's text handling: what reaches the terminal, and the line editor.
#include <gtest/gtest.h>

#include "app/line_editor.hpp"
#include "service/chat.hpp"

using cskit::app::line_editor;
using cskit::app::neutralize;

TEST(neutralize, control_characters_are_shown_not_obeyed) {
  EXPECT_EQ(neutralize("plain 文件 🎉"), "plain 文件 🎉");
  EXPECT_EQ(neutralize("\x1b[31mred"), "^[[31mred");
  EXPECT_EQ(neutralize("bell\x07 nul") + neutralize(std::string_view("\0", 1)), "bell^G nul^@");
  EXPECT_EQ(neutralize("del\x7f"), "del^?");
  EXPECT_EQ(neutralize("c1 \xc2\x9b" "31m"), "c1 <U+009B>31m");           // 8-bit CSI
  EXPECT_EQ(neutralize("bidi \xe2\x80\xae" "txt"), "bidi <U+202E>txt");    // right-to-left override
  EXPECT_EQ(neutralize("iso \xe2\x81\xa6" "x"), "iso <U+2066>x");          // left-to-right isolate
  EXPECT_EQ(neutralize("\r\nline"), "^M^Jline");
}

TEST(neutralize, invisible_and_direction_changing_characters_are_shown) {
  EXPECT_EQ(neutralize("a\u200Eb\u200Fc\u061Cd"), "a<U+200E>b<U+200F>c<U+061C>d");  // LRM, RLM, ALM
  EXPECT_EQ(neutralize("zw\u200Bj\u200Cn\u200Dx"), "zw<U+200B>j<U+200C>n<U+200D>x");  // ZWSP, ZWNJ, ZWJ
  EXPECT_EQ(neutralize("l\u2028p\u2029e"), "l<U+2028>p<U+2029>e");                // line, paragraph separators
  EXPECT_EQ(neutralize("\uFEFFbom"), "<U+FEFF>bom");
  EXPECT_EQ(neutralize("tag\U000E0041\U000E007F"), "tag<U+E0041><U+E007F>");      // tag characters
  EXPECT_EQ(neutralize("pdi\u2069 wj\u2060"), "pdi<U+2069> wj<U+2060>");
  EXPECT_EQ(neutralize("soft\u00ADhyphen \u3164."), "soft<U+00AD>hyphen <U+3164>.");
  // A joiner between two emoji makes one picture and stays; elsewhere it is shown.
  EXPECT_EQ(neutralize("\U0001F469\u200D\U0001F469\u200D\U0001F467"), "\U0001F469\u200D\U0001F469\u200D\U0001F467");
  EXPECT_EQ(neutralize("\u2764\uFE0F\u200D\U0001F525"), "\u2764\uFE0F\u200D\U0001F525");  // heart on fire
  EXPECT_EQ(neutralize("a\u200D\U0001F469"), "a<U+200D>\U0001F469");
  EXPECT_EQ(neutralize("\U0001F469\u200D"), "\U0001F469<U+200D>");
  // Not UTF-8: each byte shown, nothing passed through raw.
  EXPECT_EQ(neutralize("bad \xff\xfe end"), "bad \\xFF\\xFE end");
  EXPECT_EQ(neutralize("cut \xe2\x80"), "cut \\xE2\\x80");
  EXPECT_EQ(neutralize("overlong \xc0\xaf"), "overlong \\xC0\\xAF");
  EXPECT_EQ(neutralize("surrogate \xed\xa0\x80"), "surrogate \\xED\\xA0\\x80");
}

TEST(chat_names, confusable_nicknames_share_a_skeleton) {
  using cskit::service::nick_skeleton;
  EXPECT_EQ(nick_skeleton("aIice"), nick_skeleton("alice"));
  EXPECT_EQ(nick_skeleton("a1ice"), nick_skeleton("alice"));
  EXPECT_EQ(nick_skeleton("ALICE"), nick_skeleton("alice"));
  EXPECT_EQ(nick_skeleton("ALlCE"), nick_skeleton("alice"));
  EXPECT_EQ(nick_skeleton("rnallory"), nick_skeleton("mallory"));
  EXPECT_EQ(nick_skeleton("b0b"), nick_skeleton("bob"));
  EXPECT_EQ(nick_skeleton("vvendy"), nick_skeleton("wendy"));
  EXPECT_EQ(nick_skeleton("clave"), nick_skeleton("dave"));
  EXPECT_NE(nick_skeleton("alice"), nick_skeleton("alicia"));
  EXPECT_NE(nick_skeleton("alice"), nick_skeleton("alice_"));
  EXPECT_NE(nick_skeleton("bob"), nick_skeleton("rob"));
}

TEST(chat_names, nicknames_and_rooms) {
  EXPECT_TRUE(cskit::service::valid_nick("alice_2.x-y"));
  EXPECT_FALSE(cskit::service::valid_nick(""));
  EXPECT_FALSE(cskit::service::valid_nick("has space"));
  EXPECT_FALSE(cskit::service::valid_nick("\x1b[31m"));
  EXPECT_FALSE(cskit::service::valid_nick(std::string(33, 'a')));
  EXPECT_TRUE(cskit::service::valid_room("#lobby"));
  EXPECT_TRUE(cskit::service::valid_room("dev-ops"));
  EXPECT_FALSE(cskit::service::valid_room("#"));
  EXPECT_FALSE(cskit::service::valid_room("a/b"));
}

TEST(line_editor, editing_keys) {
  line_editor e("> ", false);
  EXPECT_EQ(e.key_bytes("hello wrld").kind, line_editor::result::none);
  e.key_bytes("\x1b[D\x1b[D\x1b[D");  // left x3: before "rld"
  e.key_bytes("o");
  EXPECT_EQ(e.buffer(), "hello world");
  e.key_bytes("\x01X");  // Ctrl-A, insert at start
  EXPECT_EQ(e.buffer(), "Xhello world");
  e.key_bytes("\x05\x17");  // Ctrl-E, Ctrl-W deletes the last word
  EXPECT_EQ(e.buffer(), "Xhello ");
  auto r = e.key_bytes("\r");
  EXPECT_EQ(r.kind, line_editor::result::line);
  EXPECT_EQ(r.text, "Xhello ");
  EXPECT_EQ(e.buffer(), "");
}

TEST(line_editor, utf8_backspace_and_history) {
  line_editor e("> ", false);
  e.key_bytes("文件传输");
  e.key_bytes("\x7f");  // one character, three bytes
  EXPECT_EQ(e.buffer(), "文件传");
  e.key_bytes("\x1b[D\x1b[D");
  e.key_bytes("X");
  EXPECT_EQ(e.buffer(), "文X件传");
  EXPECT_EQ(e.key_bytes("\n").text, "文X件传");
  e.key_bytes("second\r");
  e.key_bytes("draft");
  e.key_bytes("\x1b[A");  // up: the newest line
  EXPECT_EQ(e.buffer(), "second");
  e.key_bytes("\x1b[A");
  EXPECT_EQ(e.buffer(), "文X件传");
  e.key_bytes("\x1b[B\x1b[B");  // down, down: back to the draft
  EXPECT_EQ(e.buffer(), "draft");
  EXPECT_EQ(cskit::app::display_width("文件ab"), 6u);
}

TEST(line_editor, escape_sequence_split_across_reads_and_control_keys) {
  line_editor e("> ", false);
  e.key_bytes("ab");
  e.key_bytes("\x1b");
  e.key_bytes("[");
  e.key_bytes("D");  // left arrow in three reads
  e.key_bytes("X");
  EXPECT_EQ(e.buffer(), "aXb");
  EXPECT_EQ(e.key_bytes("\x03").kind, line_editor::result::interrupt);
  line_editor empty("> ", false);
  EXPECT_EQ(empty.key_bytes("\x04").kind, line_editor::result::eof);
  EXPECT_EQ(e.key_bytes("\x15").kind, line_editor::result::none);  // Ctrl-U
  EXPECT_EQ(e.buffer(), "b");
}
