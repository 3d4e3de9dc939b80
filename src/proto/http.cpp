#include "proto/http.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>

namespace cskit::proto::http {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// An escape that, decoded again, would be '/', '.' or '\'.
bool is_encoded_separator(std::string_view s, std::size_t at) {
  if (at + 2 >= s.size() || s[at] != '%') return false;
  const int hi = hex_value(s[at + 1]), lo = hex_value(s[at + 2]);
  if (hi < 0 || lo < 0) return false;
  const int c = hi * 16 + lo;
  return c == '/' || c == '.' || c == '\\';
}

}  // namespace

std::optional<std::string> target_path(std::string_view target, std::string_view prefix, std::string& why) {
  target = target.substr(0, target.find('?'));
  target = target.substr(0, target.find('#'));
  const std::string_view bare = prefix.substr(0, prefix.size() - (prefix.ends_with('/') ? 1 : 0));
  if (target == bare) return std::string();
  if (!target.starts_with(prefix)) {
    why = "not under " + std::string(prefix);
    return std::nullopt;
  }
  target.remove_prefix(prefix.size());
  std::string out;
  out.reserve(target.size());
  for (std::size_t i = 0; i < target.size(); ++i) {
    const char c = target[i];
    if (c == '\\') {
      why = "a backslash";
      return std::nullopt;
    }
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      why = "a control character";
      return std::nullopt;
    }
    if (c != '%') {
      out += c;
      continue;
    }
    const int hi = i + 2 < target.size() ? hex_value(target[i + 1]) : -1;
    const int lo = i + 2 < target.size() ? hex_value(target[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      why = "a malformed percent-escape";
      return std::nullopt;
    }
    const char d = static_cast<char>(hi * 16 + lo);
    if (d == '/' || d == '\\' || static_cast<unsigned char>(d) < 0x20 || d == 0x7f) {
      why = "an encoded '/', '\\' or control character";
      return std::nullopt;
    }
    out += d;
    i += 2;
  }
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (is_encoded_separator(out, i)) {
      why = "a double-encoded '/', '.' or '\\'";
      return std::nullopt;
    }
  }
  return out;
}

std::string percent_encode_path(std::string_view s) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out += ch;
    } else {
      out += '%';
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out;
}

namespace {

bool parse_u64(std::string_view s, std::uint64_t& v) {
  if (s.empty() || s.size() > 19) return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

range_result parse_range(std::string_view header, std::uint64_t size, byte_range& out) {
  if (!header.starts_with("bytes=")) return range_result::none;
  header.remove_prefix(6);
  if (header.find(',') != std::string_view::npos) return range_result::none;  // several: the whole
  const auto dash = header.find('-');
  if (dash == std::string_view::npos) return range_result::none;
  const std::string_view a = header.substr(0, dash), b = header.substr(dash + 1);
  std::uint64_t first = 0, last = 0;
  if (a.empty()) {  // the last b bytes
    if (!parse_u64(b, last)) return range_result::none;
    if (last == 0 || size == 0) return range_result::unsatisfiable;
    const std::uint64_t n = std::min(last, size);
    out = {size - n, n};
    return range_result::ok;
  }
  if (!parse_u64(a, first)) return range_result::none;
  if (b.empty()) {
    last = size ? size - 1 : 0;
  } else if (!parse_u64(b, last) || last < first) {
    return range_result::none;
  }
  if (first >= size) return range_result::unsatisfiable;
  last = std::min(last, size - 1);
  out = {first, last - first + 1};
  return range_result::ok;
}

std::string format_date(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

std::optional<std::time_t> parse_date(std::string_view text) {
  if (text.size() != 29 || !text.ends_with(" GMT")) return std::nullopt;
  const std::string s(text);
  std::tm tm{};
  const char* end = ::strptime(s.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  return ::timegm(&tm);
}

std::optional<std::string> base64_decode(std::string_view b64) {
  if (b64.empty() || b64.size() % 4 != 0 || b64.size() > 1u << 20) return std::nullopt;
  std::size_t pad = 0;
  for (std::size_t i = b64.size(); i > 0 && b64[i - 1] == '='; --i) ++pad;
  if (pad > 2) return std::nullopt;
  std::string raw(b64.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(raw.data()),
                                reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  raw.resize(static_cast<std::size_t>(n) - pad);  // the padding decodes to zeros
  return raw;
}

std::string base64_encode(std::string_view bytes) {
  std::string out((bytes.size() + 2) / 3 * 4 + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::optional<content_range> parse_content_range(std::string_view h) {
  if (!h.starts_with("bytes ")) return std::nullopt;
  h.remove_prefix(6);
  const auto dash = h.find('-'), slash = h.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash) return std::nullopt;
  content_range r;
  if (!parse_u64(h.substr(0, dash), r.first) || !parse_u64(h.substr(dash + 1, slash - dash - 1), r.last) ||
      !parse_u64(h.substr(slash + 1), r.total)) {
    return std::nullopt;
  }
  if (r.last < r.first || r.last >= r.total) return std::nullopt;
  return r;
}

std::optional<std::string> content_digest_sha256(std::string_view h) {
  while (!h.empty()) {
    const auto comma = h.find(',');
    std::string_view item = h.substr(0, comma);
    h = comma == std::string_view::npos ? std::string_view() : h.substr(comma + 1);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (!item.starts_with("sha-256=:") || item.size() < 11 || !item.ends_with(':')) continue;
    auto raw = base64_decode(item.substr(9, item.size() - 10));
    if (!raw || raw->size() != 32) return std::nullopt;
    static constexpr char digits[] = "0123456789abcdef";
    std::string hex;
    for (unsigned char b : *raw) {
      hex += digits[b >> 4];
      hex += digits[b & 15];
    }
    return hex;
  }
  return std::nullopt;
}

std::optional<credentials> parse_basic(std::string_view a) {
  const auto space = a.find(' ');
  if (space == std::string_view::npos || !iequals(a.substr(0, space), "Basic")) return std::nullopt;
  std::string_view b64 = a.substr(space + 1);
  while (!b64.empty() && b64.front() == ' ') b64.remove_prefix(1);
  if (b64.size() > 4096) return std::nullopt;
  auto raw = base64_decode(b64);
  if (!raw) return std::nullopt;
  const auto colon = raw->find(':');
  if (colon == std::string::npos) return std::nullopt;
  return credentials{raw->substr(0, colon), raw->substr(colon + 1)};
}

std::optional<std::string> parse_bearer(std::string_view a) {
  const auto space = a.find(' ');
  if (space == std::string_view::npos || !iequals(a.substr(0, space), "Bearer")) return std::nullopt;
  std::string_view token = a.substr(space + 1);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  if (token.empty() || token.find(' ') != std::string_view::npos) return std::nullopt;
  return std::string(token);
}

bool looks_like_request(std::string_view first) {
  std::size_t n = 0;
  while (n < first.size() && n < 16 && first[n] >= 'A' && first[n] <= 'Z') ++n;
  return n >= 3 && n < first.size() && first[n] == ' ';
}

std::string_view media_type(std::string_view name) {
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 24> types{{
      {"txt", "text/plain; charset=utf-8"}, {"md", "text/markdown; charset=utf-8"},
      {"html", "text/html; charset=utf-8"}, {"htm", "text/html; charset=utf-8"},
      {"css", "text/css; charset=utf-8"},   {"js", "text/javascript; charset=utf-8"},
      {"json", "application/json"},         {"xml", "application/xml"},
      {"csv", "text/csv; charset=utf-8"},   {"pdf", "application/pdf"},
      {"png", "image/png"},                 {"jpg", "image/jpeg"},
      {"jpeg", "image/jpeg"},               {"gif", "image/gif"},
      {"webp", "image/webp"},               {"svg", "image/svg+xml"},
      {"ico", "image/vnd.microsoft.icon"},  {"mp3", "audio/mpeg"},
      {"mp4", "video/mp4"},                 {"webm", "video/webm"},
      {"zip", "application/zip"},           {"gz", "application/gzip"},
      {"tar", "application/x-tar"},         {"wasm", "application/wasm"},
  }};
  const auto dot = name.rfind('.');
  if (dot == std::string_view::npos || name.find('/', dot) != std::string_view::npos) return "application/octet-stream";
  const std::string_view ext = name.substr(dot + 1);
  for (const auto& [e, t] : types) {
    if (iequals(e, ext)) return t;
  }
  return "application/octet-stream";
}

std::string_view reason(int status) {
  switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 415: return "Unsupported Media Type";
    case 413: return "Content Too Large";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
  }
}

}  // namespace cskit::proto::http
