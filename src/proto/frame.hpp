#pragma once
// The cskit frame codec. Pure: bytes in, frames or errors out; no I/O.
//
// Wire layout of one frame (docs/protocol.md, "Framing"):
//   u32 header_length (network byte order, 1..max_header_size)
//   header_length bytes: UTF-8 JSON object with a non-empty string "type"
//   body bytes: exactly header["body"] of them (absent = 0, <= max_body_size)

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "proto/errc.hpp"
#include "proto/limits.hpp"

namespace cskit::proto {

using json = nlohmann::json;

struct frame {
  json header = json::object();  ///< always an object with a string "type"
  std::string body;

  std::string_view type() const;
  /// The request id, if the header carries one.
  std::optional<std::uint64_t> id() const;
};

struct decoder_limits {
  std::uint32_t max_header = max_header_size;
  std::uint64_t max_body = max_body_size;
};

/// Incremental frame decoder. Feed it whatever the transport delivered, in
/// pieces of any size; it returns each complete frame once.
///
/// Memory: it never allocates more than the bytes it has actually received
/// (plus growth slack), so a peer that declares a large body and then sends
/// nothing costs nothing. Lengths are checked against the limits before any
/// allocation. After an error the decoder stays failed until reset().
class frame_decoder {
 public:
  /// header and body_part are returned only with report_headers(true).
  enum class status { need_more, frame, error, header, body_part };

  explicit frame_decoder(decoder_limits limits = {}) noexcept : limits_(limits) {}

  /// Consumes bytes from the front of `in` (advancing it) up to the end of
  /// the next complete frame. Returns status::frame with `out` filled,
  /// status::need_more once `in` is exhausted, or status::error (see error()).
  status decode(std::string_view& in, frame& out);

  /// Streamed bodies (bulk data written straight to its destination, never
  /// buffered whole). When on, a frame that declares a body first yields
  /// status::header once its header is parsed (see current_header()). The
  /// caller may then call stream_body(): the body is returned as it arrives
  /// as status::body_part pieces (body_part(), a view into the caller's
  /// input), and the frame itself as status::frame with an empty body. If
  /// the caller does not, the body is buffered as usual.
  void report_headers(bool on) noexcept { report_headers_ = on; }
  const json& current_header() const noexcept { return current_.header; }
  void stream_body() noexcept { streaming_ = true; }
  std::string_view body_part() const noexcept { return part_; }
  /// True when a streamed frame is complete and the next decode() returns
  /// it even without more input.
  bool frame_pending() const noexcept { return phase_ == phase::body && body_need_ == 0 && streaming_; }

  errc error() const noexcept { return error_; }
  /// True when part of a frame has been received but not all of it.
  bool mid_frame() const noexcept { return phase_ != phase::length || length_have_ != 0; }
  /// Bytes buffered for the frame in progress (for memory accounting).
  std::size_t buffered() const noexcept { return header_buf_.size() + current_.body.size(); }
  void reset() noexcept;

 private:
  enum class phase { length, header, body };
  errc parse_header(std::string_view bytes);
  status fail(errc e) noexcept;

  decoder_limits limits_;
  phase phase_ = phase::length;
  errc error_ = errc::ok;
  unsigned char length_buf_[length_prefix_size] = {};
  std::size_t length_have_ = 0;
  std::uint32_t header_need_ = 0;
  std::string header_buf_;
  std::uint64_t body_need_ = 0;
  frame current_;
  bool report_headers_ = false;
  bool header_reported_ = false;
  bool streaming_ = false;
  std::string_view part_;
};

/// Validates a decoded header (object, "type", "body", "id"); used by the
/// decoder and by anyone building frames from untrusted JSON.
errc validate_header(const json& header, const decoder_limits& limits, std::uint64_t& body_length);

/// Appends the encoding of one frame to `out`. `header` must be an object
/// with a non-empty string "type" and no "body" key: the encoder adds "body"
/// from body.size(). Strings that are not valid UTF-8 are replaced with
/// U+FFFD so the peer's decoder accepts them. Returns header_too_large,
/// body_too_large, missing_type or bad_body_length without touching `out`.
errc encode_frame(std::string& out, const json& header, std::string_view body = {});

/// Appends the length prefix and header of a frame whose `body_length`
/// body bytes the caller sends itself (with sendfile). Same checks as
/// encode_frame.
errc encode_frame_header(std::string& out, const json& header, std::uint64_t body_length);

/// Convenience form; throws std::system_error on an encoding error.
std::string encode_frame(const json& header, std::string_view body = {});

/// Builds an `error` frame header: {"type":"error","code":..,"message":..[,"id":..]}.
json make_error(errc code, std::string_view message = {}, std::optional<std::uint64_t> id = {});

}  // namespace cskit::proto
