// libFuzzer target for the HTTPS front end's own parsing (proto/http.hpp,
// proto/websocket.hpp): request targets as share paths, ranges, dates,
// Basic and Bearer credentials, the request-line sniff, Content-Range,
// Content-Digest, base64, and WebSocket frames from a client. Invariants:
// a decoded path holds no '\', no NUL and no '/' that was escaped, and no
// escape of '/', '.' or '\' survives; a range lies inside the file; a date
// parsed formats back to an IMF-fixdate; a piece lies inside its file;
// base64 round-trips; a WebSocket message is within its bound and, as
// text, UTF-8, however the bytes are split.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proto/http.hpp"
#include "proto/utf8.hpp"
#include "proto/websocket.hpp"

using namespace cskit::proto::http;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool has_encoded_separator(std::string_view s) {
  for (std::size_t i = 0; i + 2 < s.size(); ++i) {
    if (s[i] != '%') continue;
    const std::string hex(s.substr(i + 1, 2));
    char* end = nullptr;
    const long v = std::strtol(hex.c_str(), &end, 16);
    if (end == hex.c_str() + 2 && (v == '/' || v == '.' || v == '\\')) return true;
  }
  return false;
}

// The same bytes whole and split in two must decode alike.
void check_websocket(std::string_view in) {
  namespace ws = cskit::proto::ws;
  constexpr std::size_t bound = 300;
  std::string whole, split;
  auto take = [](std::string& into) {
    return [&into](ws::message&& m) {
      check(m.payload.size() <= bound || (m.op != ws::opcode::text && m.op != ws::opcode::binary));
      check(m.op != ws::opcode::text || cskit::proto::is_valid_utf8(m.payload));
      check(m.op != ws::opcode::continuation);
      into += std::to_string(static_cast<int>(m.op)) + ":" + m.payload + "|";
      return true;
    };
  };
  ws::decoder a(bound), b(bound);
  const auto fa = a.feed(in, take(whole));
  auto fb = b.feed(in.substr(0, in.size() / 2), take(split));
  if (!fb) fb = b.feed(in.substr(in.size() / 2), take(split));
  check(whole == split && fa.has_value() == fb.has_value());
  if (fa) check(fa->code == fb->code);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string why;
  const std::string target = "/files/" + std::string(in);
  if (auto path = target_path(target, "/files/", why)) {
    check(path->find('\\') == std::string::npos && path->find('\0') == std::string::npos);
    check(!has_encoded_separator(*path));
    // Every '/' in the result was a '/' in the target (never an escape).
    std::size_t slashes = 0;
    for (char c : std::string_view(target).substr(7, target.find_first_of("?#") == std::string::npos
                                                              ? std::string::npos
                                                              : target.find_first_of("?#") - 7)) {
      slashes += c == '/';
    }
    std::size_t out = 0;
    for (char c : *path) out += c == '/';
    check(out == slashes);
  } else {
    check(!why.empty());
  }
  const std::uint64_t file_size = size > 0 ? data[0] * 1000ull : 0;
  byte_range r;
  if (parse_range(in, file_size, r) == range_result::ok) {
    check(r.length > 0 && r.first < file_size && r.first + r.length <= file_size);
  }
  if (auto t = parse_date(in)) check(format_date(*t).size() == 29);
  if (auto c = parse_basic(in)) check(c->user.find(':') == std::string::npos);
  if (auto b = parse_bearer(in)) check(!b->empty() && b->find(' ') == std::string::npos);
  (void)looks_like_request(in);
  check(!media_type(in).empty());
  check(!percent_encode_path(in).empty() || in.empty());
  if (auto p = parse_content_range(in)) check(p->first <= p->last && p->last < p->total);
  if (auto d = content_digest_sha256(in)) check(d->size() == 64);
  if (auto raw = base64_decode(in)) check(base64_decode(base64_encode(*raw)).value_or("?") == *raw || raw->empty());
  check_websocket(in);
  return 0;
}
