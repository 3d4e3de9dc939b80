// WebSocket framing (proto/websocket.hpp): the accept key, frames out, and
// the decoder's checks of what a client may send.
#include "proto/websocket.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace cskit::proto::ws;

namespace {

// A client frame: masked (unless told not to) with a fixed key.
std::string client_frame(std::uint8_t b0, std::string_view payload, bool mask = true) {
  std::string out(1, static_cast<char>(b0));
  const std::size_t n = payload.size();
  const char m = mask ? '\x80' : '\0';
  if (n < 126) {
    out += static_cast<char>(m | static_cast<char>(n));
  } else if (n < 65536) {
    out += static_cast<char>(m | 126);
    out += static_cast<char>(n >> 8);
    out += static_cast<char>(n & 0xff);
  } else {
    out += static_cast<char>(m | 127);
    for (int i = 7; i >= 0; --i) out += static_cast<char>((static_cast<std::uint64_t>(n) >> (8 * i)) & 0xff);
  }
  if (!mask) return out + std::string(payload);
  const char key[4] = {'\x12', '\x34', '\x56', '\x78'};
  out.append(key, 4);
  for (std::size_t i = 0; i < n; ++i) out += static_cast<char>(payload[i] ^ key[i % 4]);
  return out;
}

struct run {
  std::vector<message> got;
  std::optional<failure> fail;
};

run feed_all(decoder& d, std::string_view bytes, std::size_t step = 0) {
  run r;
  auto take = [&](message&& m) {
    r.got.push_back(std::move(m));
    return true;
  };
  if (step == 0) {
    r.fail = d.feed(bytes, take);
    return r;
  }
  for (std::size_t at = 0; at < bytes.size() && !r.fail; at += step) r.fail = d.feed(bytes.substr(at, step), take);
  return r;
}

}  // namespace

TEST(websocket, accept_key_of_rfc_6455) {
  EXPECT_EQ(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  EXPECT_TRUE(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
  EXPECT_FALSE(valid_key("dGhlIHNhbXBsZQ=="));  // 10 bytes
  EXPECT_FALSE(valid_key(""));
}

TEST(websocket, frames_out) {
  std::string out;
  encode(out, opcode::text, "hi");
  EXPECT_EQ(out, std::string("\x81\x02hi", 4));
  out.clear();
  encode(out, opcode::binary, std::string(300, 'x'));
  EXPECT_EQ(out.substr(0, 4), std::string("\x82\x7e\x01\x2c", 4));
  EXPECT_EQ(out.size(), 304u);
  out.clear();
  encode(out, opcode::text, std::string(70000, 'x'));
  EXPECT_EQ(out.substr(0, 10), std::string("\x81\x7f\0\0\0\0\0\x01\x11\x70", 10));
  out.clear();
  encode_close(out, 1000, std::string(200, 'r'));  // the reason is cut to fit 125 bytes
  EXPECT_EQ(out.size(), 2u + 125u);
  EXPECT_EQ(out.substr(0, 4), std::string("\x88\x7d\x03\xe8", 4));
  out.clear();
  encode_close(out, 1001, std::string(122, 'a') + "\xc3\xa9");  // not in the middle of a character
  EXPECT_EQ(out.size(), 2u + 2u + 122u);
}

TEST(websocket, decodes_messages_in_any_pieces) {
  const std::string bytes = client_frame(0x81, "hello") + client_frame(0x89, "p") +
                            client_frame(0x01, "frag") + client_frame(0x8a, "") + client_frame(0x80, "mented") +
                            client_frame(0x81, std::string(300, 'z'));
  for (std::size_t step : {0, 1, 3, 7}) {
    decoder d(1000);
    auto r = feed_all(d, bytes, step);
    ASSERT_FALSE(r.fail) << step << " " << r.fail->reason;
    ASSERT_EQ(r.got.size(), 5u) << step;
    EXPECT_EQ(r.got[0].payload, "hello");
    EXPECT_EQ(r.got[1].op, opcode::ping);
    EXPECT_EQ(r.got[2].op, opcode::pong);  // a control frame between fragments
    EXPECT_EQ(r.got[3].op, opcode::text);
    EXPECT_EQ(r.got[3].payload, "fragmented");
    EXPECT_EQ(r.got[4].payload, std::string(300, 'z'));
    EXPECT_FALSE(d.mid_frame());
  }
  decoder d(1000);
  feed_all(d, client_frame(0x81, "abc").substr(0, 4));
  EXPECT_TRUE(d.mid_frame());
}

TEST(websocket, refuses_what_a_client_may_not_send) {
  const std::pair<std::string, std::uint16_t> cases[] = {
      {client_frame(0x81, "x", false), protocol_error},            // unmasked
      {client_frame(0xc1, "x"), protocol_error},                   // RSV1
      {client_frame(0x83, "x"), protocol_error},                   // unknown opcode
      {client_frame(0x8b, "x"), protocol_error},                   // unknown control opcode
      {client_frame(0x89, std::string(126, 'p')), protocol_error}, // long control frame
      {client_frame(0x09, "p"), protocol_error},                   // fragmented control frame
      {client_frame(0x80, "x"), protocol_error},                   // continuation of nothing
      {client_frame(0x01, "a") + client_frame(0x81, "b"), protocol_error},  // new message inside one
      {client_frame(0x88, "x"), protocol_error},                   // close of one byte
      {client_frame(0x88, std::string("\x03\xe8\xff", 3)), invalid_payload},
      {client_frame(0x81, "\xff"), invalid_payload},
      {client_frame(0x01, "\xc3") + client_frame(0x80, "\xa9"), 0},  // split character: fine
      {client_frame(0x81, std::string(1001, 'x')), message_too_big},
      {client_frame(0x01, std::string(600, 'x')) + client_frame(0x80, std::string(600, 'x')), message_too_big},
      {std::string("\x81\xff\x80\0\0\0\0\0\0\0", 10), protocol_error},  // 64-bit length with its top bit
      {std::string("\x81\xfe\0\x05", 4), protocol_error},                  // 5 in 16 bits: not the shortest form
      {std::string("\x81\xff\0\0\0\0\0\0\x01\0", 10), protocol_error},  // 256 in 64 bits
      {std::string("\x81\xff\0\0\0\0\xff\0\0\0", 10), message_too_big},  // huge: refused before its bytes
  };
  for (const auto& [bytes, code] : cases) {
    decoder d(1000);
    auto r = feed_all(d, bytes);
    if (code == 0) {
      EXPECT_FALSE(r.fail);
      ASSERT_EQ(r.got.size(), 1u);
      EXPECT_EQ(r.got[0].payload, "\xc3\xa9");
      continue;
    }
    ASSERT_TRUE(r.fail) << testing::PrintToString(bytes);
    EXPECT_EQ(r.fail->code, code) << r.fail->reason;
  }
}

TEST(websocket, close_codes_a_peer_may_send) {
  for (std::uint16_t ok : {1000, 1001, 1002, 1003, 1007, 1008, 1011, 3000, 4999}) EXPECT_TRUE(valid_close_code(ok)) << ok;
  for (std::uint16_t bad : {0, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000}) EXPECT_FALSE(valid_close_code(bad)) << bad;
}

TEST(websocket, stops_where_the_handler_says) {
  decoder d(100);
  const std::string two = client_frame(0x81, "one") + client_frame(0x81, "two");
  std::vector<std::string> got;
  EXPECT_FALSE(d.feed(two, [&](message&& m) {
    got.push_back(m.payload);
    return false;
  }));
  EXPECT_EQ(got, std::vector<std::string>{"one"});
  EXPECT_TRUE(d.mid_frame());  // "two" waits
}
