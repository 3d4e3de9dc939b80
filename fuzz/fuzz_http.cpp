// libFuzzer target for the HTTPS front end's own parsing (proto/http.hpp):
// request targets as share paths, ranges, dates, Basic and Bearer
// credentials, the request-line sniff. Invariants: a decoded path holds no
// '\', no NUL and no '/' that was escaped, and no escape of '/', '.' or '\'
// survives; a range lies inside the file; a date parsed formats back to an
// IMF-fixdate.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proto/http.hpp"

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
  return 0;
}
