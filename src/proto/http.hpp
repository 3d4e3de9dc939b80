#pragma once
// HTTP/1.1 pieces the HTTPS front end needs that Beast's parser does not
// give: request targets as share paths, byte ranges (RFC 9110 14.1),
// HTTP-dates (RFC 9110 5.6.7), Basic credentials (RFC 7617), media types.
// Pure: no I/O.

#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>

namespace cskit::proto::http {

/// A request target's path after `prefix` ("/files/"), percent-decoded
/// once, as a share path ("" for the root; no leading '/'). Refused, with
/// `why`: a target outside the prefix, a malformed escape, an encoded '/',
/// a control character or a backslash in any form, and escapes that decode to another
/// escape of '/', '.' or '\' (double encoding). The query is dropped. The
/// result still needs the share's own path check (no "..", no control
/// characters).
std::optional<std::string> target_path(std::string_view target, std::string_view prefix, std::string& why);

/// `s` with every byte outside RFC 3986's unreserved set and '/' escaped.
std::string percent_encode_path(std::string_view s);

struct byte_range {
  std::uint64_t first = 0;
  std::uint64_t length = 0;
};
enum class range_result { none, ok, unsatisfiable };
/// A Range header against a representation of `size` bytes: `none` when
/// there is none, it is not a single "bytes=" range or it is malformed (the
/// whole representation is sent, as RFC 9110 allows); `unsatisfiable` when
/// it starts at or after the end.
range_result parse_range(std::string_view header, std::uint64_t size, byte_range& out);

/// IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
std::string format_date(std::time_t t);
/// An IMF-fixdate (the only form a sender may generate); nullopt otherwise.
std::optional<std::time_t> parse_date(std::string_view text);

struct credentials {
  std::string user;
  std::string secret;
};
/// "Basic base64(user:secret)" -> the pair; nullopt when it is not that.
std::optional<credentials> parse_basic(std::string_view authorization);
/// "Bearer TOKEN" -> the token; nullopt when it is not that.
std::optional<std::string> parse_bearer(std::string_view authorization);

/// A PUT's Content-Range ("bytes FIRST-LAST/TOTAL", RFC 9110 14.4): one
/// piece of a file uploaded in pieces. Nullopt when malformed, when LAST <
/// FIRST, or when LAST is not below TOTAL.
struct content_range {
  std::uint64_t first = 0, last = 0, total = 0;
};
std::optional<content_range> parse_content_range(std::string_view header);

/// The SHA-256 of a Content-Digest field (RFC 9530: "sha-256=:BASE64:",
/// among other algorithms separated by commas), as 64 lowercase hex
/// digits; nullopt when there is none or it is malformed.
std::optional<std::string> content_digest_sha256(std::string_view header);

/// Standard base64 (RFC 4648 4), padded; nullopt when malformed.
std::optional<std::string> base64_decode(std::string_view b64);
std::string base64_encode(std::string_view bytes);

/// Whether `first` (a connection's first bytes) starts an HTTP/1 request:
/// a method token of capitals and a space ("GET /...").
bool looks_like_request(std::string_view first);

/// The media type for a file name, by its extension; octet-stream when unknown.
std::string_view media_type(std::string_view name);

/// The reason phrase of a status code this server sends.
std::string_view reason(int status);

}  // namespace cskit::proto::http
