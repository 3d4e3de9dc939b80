#pragma once
// WebSocket framing (RFC 6455), the server's side: the handshake's accept
// key, frames out (unmasked), and a decoder of the client's frames that
// checks what the RFC requires of them (masked, no reserved bits, control
// frames short and whole, fragments in order, text in UTF-8) and bounds
// every message before it is buffered. Pure: no I/O. Beast's websocket
// stream is not used because it must own the socket; here the connection
// (net/connection) owns TLS, deadlines and the send queue, and hands
// bytes to the handler (docs/http.md, "Chat over a WebSocket").

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace cskit::proto::ws {

/// A Sec-WebSocket-Key is the base64 of 16 bytes.
bool valid_key(std::string_view key);
/// Sec-WebSocket-Accept for `key` (RFC 6455 4.2.2).
std::string accept_key(std::string_view key);

enum class opcode : std::uint8_t { continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10 };

/// Close codes (RFC 6455 7.4.1).
inline constexpr std::uint16_t normal = 1000;
inline constexpr std::uint16_t going_away = 1001;
inline constexpr std::uint16_t protocol_error = 1002;
inline constexpr std::uint16_t unsupported_data = 1003;
inline constexpr std::uint16_t invalid_payload = 1007;
inline constexpr std::uint16_t policy_violation = 1008;
inline constexpr std::uint16_t message_too_big = 1009;

/// Whether a peer may send `code` in a close frame (RFC 6455 7.4).
bool valid_close_code(std::uint16_t code);

/// Appends one unfragmented frame from the server.
void encode(std::string& out, opcode op, std::string_view payload);
/// Appends a close frame: `code`, then `reason` cut to fit in 123 bytes
/// (at a UTF-8 character's start).
void encode_close(std::string& out, std::uint16_t code, std::string_view reason);

struct message {
  opcode op;  ///< text, binary, close, ping or pong (fragments come joined)
  std::string payload;
};

struct failure {
  std::uint16_t code;
  std::string reason;
};

class decoder {
 public:
  /// `max_message`: the most a message (all its fragments) may take.
  explicit decoder(std::size_t max_message) : max_message_(max_message) {}
  /// Takes `bytes`; each complete message goes to `on_message`, which
  /// returns false to stop (the rest stays buffered). A frame the RFC
  /// forbids ends decoding: its failure is returned.
  std::optional<failure> feed(std::string_view bytes, const std::function<bool(message&&)>& on_message);
  /// Part of a frame is buffered.
  bool mid_frame() const noexcept { return at_ < buffer_.size() || fragmented_; }

 private:
  std::optional<failure> next(bool& got, message& out);
  std::size_t max_message_;
  std::string buffer_;  // bytes not decoded yet
  std::size_t at_ = 0;
  bool fragmented_ = false;  // a text or binary message continues
  opcode first_op_ = opcode::text;
  std::string partial_;      // its fragments so far
};

}  // namespace cskit::proto::ws
