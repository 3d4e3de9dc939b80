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
