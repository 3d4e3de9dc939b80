#include "proto/websocket.hpp"

#include <openssl/sha.h>

#include "proto/http.hpp"
#include "proto/utf8.hpp"

namespace cskit::proto::ws {

namespace {
constexpr std::string_view accept_guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

bool is_control(opcode op) { return static_cast<std::uint8_t>(op) >= 8; }

bool known(std::uint8_t op) { return op <= 2 || (op >= 8 && op <= 10); }

void put_be(std::string& out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}
}  // namespace

bool valid_close_code(std::uint16_t code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) || (code >= 3000 && code <= 4999);
}

bool valid_key(std::string_view key) {
  if (key.size() != 24) return false;
  auto raw = http::base64_decode(key);
  return raw && raw->size() == 16;
}

std::string accept_key(std::string_view key) {
  const std::string joined = std::string(key) + std::string(accept_guid);
  unsigned char md[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(joined.data()), joined.size(), md);
  return http::base64_encode(std::string_view(reinterpret_cast<const char*>(md), sizeof md));
}

void encode(std::string& out, opcode op, std::string_view payload) {
  out += static_cast<char>(0x80 | static_cast<std::uint8_t>(op));
  const std::uint64_t n = payload.size();
  if (n < 126) {
    out += static_cast<char>(n);
  } else if (n <= 0xffff) {
    out += static_cast<char>(126);
    put_be(out, n, 2);
  } else {
    out += static_cast<char>(127);
    put_be(out, n, 8);
  }
  out += payload;
}

void encode_close(std::string& out, std::uint16_t code, std::string_view reason) {
  std::size_t n = std::min<std::size_t>(reason.size(), 123);
  while (n > 0 && n < reason.size() && (static_cast<unsigned char>(reason[n]) & 0xc0) == 0x80) --n;
  std::string payload;
  put_be(payload, code, 2);
  payload += reason.substr(0, n);
  encode(out, opcode::close, payload);
}

std::optional<failure> decoder::feed(std::string_view bytes, const std::function<bool(message&&)>& on_message) {
  if (at_ == buffer_.size()) {
    buffer_.clear();
    at_ = 0;
  }
  buffer_.append(bytes);
  for (;;) {
    bool got = false;
    message m;
    if (auto f = next(got, m)) return f;
    if (!got) break;
    if (!on_message(std::move(m))) break;
  }
  if (at_ > 0 && (at_ == buffer_.size() || at_ > 64 * 1024)) {
    buffer_.erase(0, at_);
    at_ = 0;
  }
  return std::nullopt;
}

std::optional<failure> decoder::next(bool& got, message& out) {
  for (;;) {
    const std::string_view b = std::string_view(buffer_).substr(at_);
    if (b.size() < 2) return std::nullopt;
    const auto b0 = static_cast<std::uint8_t>(b[0]), b1 = static_cast<std::uint8_t>(b[1]);
    const bool fin = b0 & 0x80;
    const std::uint8_t op = b0 & 0x0f;
    if (b0 & 0x70) return failure{protocol_error, "reserved bits set"};
    if (!known(op)) return failure{protocol_error, "unknown opcode"};
    if (!(b1 & 0x80)) return failure{protocol_error, "a client's frame must be masked"};
    std::uint64_t len = b1 & 0x7f;
    std::size_t head = 2;
    if (len == 126 || len == 127) {
      const int n = len == 126 ? 2 : 8;
      if (b.size() < head + n) return std::nullopt;
      len = 0;
      for (int i = 0; i < n; ++i) len = len << 8 | static_cast<std::uint8_t>(b[head + i]);
      head += n;
      if (n == 8 && (len >> 63)) return failure{protocol_error, "frame length out of range"};
      if (len < (n == 2 ? 126u : 65536u)) return failure{protocol_error, "a length not in its shortest form"};
    }
    const auto kind = static_cast<opcode>(op);
    if (is_control(kind) && (len > 125 || !fin)) return failure{protocol_error, "a control frame must be short and whole"};
    if (!is_control(kind)) {
      if (kind == opcode::continuation && !fragmented_) return failure{protocol_error, "a continuation of nothing"};
      if (kind != opcode::continuation && fragmented_) return failure{protocol_error, "a new message inside a fragmented one"};
      if (len > max_message_ - std::min(max_message_, partial_.size())) {
        return failure{message_too_big, "a message is at most " + std::to_string(max_message_) + " bytes"};
      }
    }
    if (b.size() < head + 4 + len) return std::nullopt;
    const char* mask = b.data() + head;
    std::string payload(b.substr(head + 4, static_cast<std::size_t>(len)));
    for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(payload[i] ^ mask[i % 4]);
    at_ += head + 4 + static_cast<std::size_t>(len);
    if (is_control(kind)) {
      if (kind == opcode::close && payload.size() == 1) return failure{protocol_error, "a close frame of one byte"};
      if (kind == opcode::close && payload.size() > 2 && !is_valid_utf8(std::string_view(payload).substr(2))) {
        return failure{invalid_payload, "a close reason that is not UTF-8"};
      }
      out = {kind, std::move(payload)};
      got = true;
      return std::nullopt;
    }
    if (kind != opcode::continuation) first_op_ = kind;
    partial_ += payload;
    fragmented_ = !fin;
    if (!fin) continue;
    if (first_op_ == opcode::text && !is_valid_utf8(partial_)) return failure{invalid_payload, "text that is not UTF-8"};
    out = {first_op_, std::move(partial_)};
    partial_.clear();
    got = true;
    return std::nullopt;
  }
}

}  // namespace cskit::proto::ws
