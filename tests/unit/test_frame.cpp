#include "proto/frame.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace cskit::proto;
using status = frame_decoder::status;

namespace {

std::string prefix(std::uint32_t n) {
  std::string s(4, '\0');
  s[0] = static_cast<char>(n >> 24);
  s[1] = static_cast<char>(n >> 16);
  s[2] = static_cast<char>(n >> 8);
  s[3] = static_cast<char>(n);
  return s;
}

std::string raw_frame(const std::string& header, const std::string& body = {}) {
  return prefix(static_cast<std::uint32_t>(header.size())) + header + body;
}

// Feeds `bytes` in pieces of `step` and collects frames; stops at an error.
std::vector<frame> decode_all(frame_decoder& d, const std::string& bytes, std::size_t step, status* last = nullptr) {
  std::vector<frame> out;
  status st = status::need_more;
  for (std::size_t off = 0; off < bytes.size() && st != status::error; off += step) {
    std::string_view in(bytes.data() + off, std::min(step, bytes.size() - off));
    while (!in.empty()) {
      frame f;
      st = d.decode(in, f);
      if (st == status::frame) out.push_back(std::move(f));
      if (st == status::error) break;
    }
  }
  if (last) *last = st;
  return out;
}

errc decode_error(const std::string& bytes) {
  frame_decoder d;
  status st;
  auto frames = decode_all(d, bytes, bytes.size(), &st);
  EXPECT_TRUE(frames.empty());
  EXPECT_EQ(st, status::error);
  return d.error();
}

}  // namespace

TEST(frame_codec, encodes_exact_bytes) {
  std::string b = encode_frame({{"type", "ping"}, {"id", 7}}, "abc");
  std::string header = R"({"id":7,"type":"ping","body":3})";
  EXPECT_EQ(b, raw_frame(header, "abc"));
}

TEST(frame_codec, empty_body_has_no_body_key) {
  std::string b = encode_frame({{"type", "ping"}});
  EXPECT_EQ(b, raw_frame(R"({"type":"ping"})"));
  frame_decoder d;
  auto frames = decode_all(d, b, b.size());
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].type(), "ping");
  EXPECT_TRUE(frames[0].body.empty());
  EXPECT_FALSE(frames[0].id().has_value());
}

TEST(frame_codec, round_trip_one_byte_at_a_time) {
  std::string body;
  for (int i = 0; i < 1000; ++i) body += static_cast<char>(i * 7);
  std::string b = encode_frame({{"type", "data"}, {"id", 42}, {"name", "文件传输/报告.pdf"}}, body);
  frame_decoder d;
  status last;
  auto frames = decode_all(d, b, 1, &last);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(last, status::frame);
  EXPECT_EQ(frames[0].type(), "data");
  EXPECT_EQ(frames[0].id(), 42u);
  EXPECT_EQ(frames[0].header["name"], "文件传输/报告.pdf");
  EXPECT_EQ(frames[0].body, body);
  EXPECT_FALSE(d.mid_frame());
}

TEST(frame_codec, many_frames_in_one_buffer_sticky_packets) {
  std::string all;
  for (int i = 0; i < 500; ++i) all += encode_frame({{"type", "ping"}, {"id", i}}, std::string(i % 5, 'x'));
  frame_decoder d;
  auto frames = decode_all(d, all, all.size());
  ASSERT_EQ(frames.size(), 500u);
  for (int i = 0; i < 500; ++i) {
    EXPECT_EQ(frames[i].id(), static_cast<std::uint64_t>(i));
    EXPECT_EQ(frames[i].body, std::string(i % 5, 'x'));
  }
}

TEST(frame_codec, split_at_every_offset) {
  const std::string two = encode_frame({{"type", "a"}, {"id", 1}}, "hello") + encode_frame({{"type", "b"}}, "");
  for (std::size_t cut = 0; cut <= two.size(); ++cut) {
    frame_decoder d;
    std::vector<frame> frames;
    for (std::string_view part : {std::string_view(two).substr(0, cut), std::string_view(two).substr(cut)}) {
      while (!part.empty()) {
        frame f;
        auto st = d.decode(part, f);
        ASSERT_NE(st, status::error) << "cut at " << cut;
        if (st == status::frame) frames.push_back(std::move(f));
      }
    }
    ASSERT_EQ(frames.size(), 2u) << "cut at " << cut;
    EXPECT_EQ(frames[0].type(), "a");
    EXPECT_EQ(frames[0].body, "hello");
    EXPECT_EQ(frames[1].type(), "b");
  }
}

TEST(frame_codec, mid_frame_tracks_partial_frames) {
  std::string b = encode_frame({{"type", "x"}}, "body");
  frame_decoder d;
  EXPECT_FALSE(d.mid_frame());
  std::string_view in(b.data(), 2);
  frame f;
  EXPECT_EQ(d.decode(in, f), status::need_more);
  EXPECT_TRUE(d.mid_frame());
  std::string_view rest(b.data() + 2, b.size() - 2);
  EXPECT_EQ(d.decode(rest, f), status::frame);
  EXPECT_FALSE(d.mid_frame());
}

TEST(frame_codec, largest_header_accepted) {
  std::string header = R"({"type":"t","pad":")";
  header += std::string(max_header_size - header.size() - 2, 'p');
  header += "\"}";
  ASSERT_EQ(header.size(), max_header_size);
  frame_decoder d;
  auto frames = decode_all(d, raw_frame(header), 1000);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].header["pad"].get<std::string>().size(), max_header_size - 19 - 2);
}

TEST(frame_codec, encoder_refuses_oversize_header) {
  json h = {{"type", "t"}, {"pad", std::string(max_header_size, 'p')}};
  std::string out = "keep";
  EXPECT_EQ(encode_frame(out, h, {}), errc::header_too_large);
  EXPECT_EQ(out, "keep");
}

TEST(frame_codec, encoder_refuses_bad_headers) {
  std::string out;
  EXPECT_EQ(encode_frame(out, json::array(), {}), errc::header_not_object);
  EXPECT_EQ(encode_frame(out, {{"id", 1}}, {}), errc::missing_type);
  EXPECT_EQ(encode_frame(out, {{"type", ""}}, {}), errc::missing_type);
  EXPECT_EQ(encode_frame(out, {{"type", "x"}, {"body", 3}}, "abc"), errc::bad_body_length);
  EXPECT_TRUE(out.empty());
}

TEST(frame_codec, encoder_replaces_invalid_utf8_strings) {
  std::string b = encode_frame({{"type", "x"}, {"text", std::string("a\xff" "b")}});
  frame_decoder d;
  auto frames = decode_all(d, b, b.size());
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].header["text"], "a\xEF\xBF\xBD" "b");
}

TEST(frame_codec, oversize_header_length_rejected_before_allocation) {
  frame_decoder d;
  std::string b = prefix(max_header_size + 1);
  std::string_view in(b);
  frame f;
  EXPECT_EQ(d.decode(in, f), status::error);
  EXPECT_EQ(d.error(), errc::header_too_large);
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(decode_error(prefix(0xFFFFFFFFu)), errc::header_too_large);
}

TEST(frame_codec, zero_header_length_rejected) { EXPECT_EQ(decode_error(prefix(0)), errc::empty_header); }

TEST(frame_codec, body_length_limits) {
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","body":16777217})")), errc::body_too_large);
  // Would overflow 64 bits: parsed as a float by JSON, so not an unsigned integer.
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","body":18446744073709551616})")), errc::bad_body_length);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","body":18446744073709551615})")), errc::body_too_large);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","body":-1})")), errc::bad_body_length);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","body":1.5})")), errc::bad_body_length);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","body":"3"})")), errc::bad_body_length);
}

TEST(frame_codec, declared_body_costs_nothing_until_it_arrives) {
  frame_decoder d;
  std::string b = raw_frame(R"({"type":"t","body":16777216})") + "abc";
  std::string_view in(b);
  frame f;
  EXPECT_EQ(d.decode(in, f), status::need_more);
  EXPECT_LE(d.buffered(), 3u);
}

TEST(frame_codec, largest_body_accepted) {
  std::string body(max_body_size, 'z');
  std::string b = encode_frame({{"type", "t"}}, body);
  frame_decoder d;
  auto frames = decode_all(d, b, 1 << 20);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].body.size(), max_body_size);
}

TEST(frame_codec, bad_json) {
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t")")), errc::bad_json);
  EXPECT_EQ(decode_error(raw_frame("{type:t}")), errc::bad_json);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t"} trailing)")), errc::bad_json);
}

TEST(frame_codec, json_not_an_object) {
  EXPECT_EQ(decode_error(raw_frame(R"(["type","t"])")), errc::header_not_object);
  EXPECT_EQ(decode_error(raw_frame("42")), errc::header_not_object);
  EXPECT_EQ(decode_error(raw_frame(R"("str")")), errc::header_not_object);
  EXPECT_EQ(decode_error(raw_frame("null")), errc::header_not_object);
}

TEST(frame_codec, missing_or_bad_type) {
  EXPECT_EQ(decode_error(raw_frame(R"({"id":1})")), errc::missing_type);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":1})")), errc::missing_type);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":""})")), errc::missing_type);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":null})")), errc::missing_type);
}

TEST(frame_codec, bad_id) {
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","id":-3})")), errc::bad_id);
  EXPECT_EQ(decode_error(raw_frame(R"({"type":"t","id":"7"})")), errc::bad_id);
}

TEST(frame_codec, invalid_utf8_header) {
  EXPECT_EQ(decode_error(raw_frame("{\"type\":\"\xC0\xAF\"}")), errc::invalid_utf8);    // overlong '/'
  EXPECT_EQ(decode_error(raw_frame("{\"type\":\"\xED\xA0\x80\"}")), errc::invalid_utf8);  // surrogate
  EXPECT_EQ(decode_error(raw_frame("{\"type\":\"\xFF\"}")), errc::invalid_utf8);
  EXPECT_EQ(decode_error(raw_frame("{\"type\":\"\xE6\x96\"}")), errc::invalid_utf8);  // truncated
}

TEST(frame_codec, error_is_sticky_until_reset) {
  frame_decoder d;
  std::string bad = prefix(0);
  std::string_view in(bad);
  frame f;
  EXPECT_EQ(d.decode(in, f), status::error);
  std::string good = encode_frame({{"type", "ok"}});
  std::string_view in2(good);
  EXPECT_EQ(d.decode(in2, f), status::error);
  d.reset();
  EXPECT_EQ(d.decode(in2, f), status::frame);
  EXPECT_EQ(f.type(), "ok");
}

TEST(frame_codec, custom_limits) {
  frame_decoder d(decoder_limits{.max_header = 32, .max_body = 4});
  std::string b = raw_frame(R"({"type":"t","body":5})");
  std::string_view in(b);
  frame f;
  EXPECT_EQ(d.decode(in, f), status::error);
  EXPECT_EQ(d.error(), errc::body_too_large);
}

TEST(frame_codec, make_error_shape) {
  json e = make_error(errc::auth_failed, {}, 9);
  EXPECT_EQ(e["type"], "error");
  EXPECT_EQ(e["code"], "auth_failed");
  EXPECT_EQ(e["id"], 9);
  EXPECT_FALSE(e["message"].get<std::string>().empty());
}
