#include "net/endpoint.hpp"

#include <charconv>

namespace cskit::net {
namespace {

bool parse_port(std::string_view s, std::uint16_t& out) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size() || v > 65535) return false;
  out = static_cast<std::uint16_t>(v);
  return true;
}

bool valid_host_chars(std::string_view h) {
  for (char c : h) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '-' || c == '_' || c == ':' || c == '%';
    if (!ok) return false;
  }
  return true;
}

std::optional<host_port> fail(std::string* error, std::string why) {
  if (error) *error = std::move(why);
  return std::nullopt;
}

}  // namespace

std::optional<host_port> parse_host_port(std::string_view text, std::uint16_t default_port,
                                         std::string* error) {
  host_port out;
  out.port = default_port;
  if (text.empty()) return fail(error, "empty host");
  if (text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) return fail(error, "missing ']' after IPv6 address");
    out.host = std::string(text.substr(1, close - 1));
    auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':' || !parse_port(rest.substr(1), out.port)) {
        return fail(error, "invalid port after ']' in '" + std::string(text) + "'");
      }
    }
    if (out.host.empty() || out.host.find(':') == std::string::npos) {
      return fail(error, "'[...]' must contain an IPv6 address");
    }
  } else {
    auto colon = text.find(':');
    if (colon != std::string_view::npos && text.find(':', colon + 1) != std::string_view::npos) {
      out.host = std::string(text);  // bare IPv6 literal, no port
    } else if (colon != std::string_view::npos) {
      out.host = std::string(text.substr(0, colon));
      if (!parse_port(text.substr(colon + 1), out.port)) {
        return fail(error, "invalid port '" + std::string(text.substr(colon + 1)) + "' (expected 0-65535)");
      }
    } else {
      out.host = std::string(text);
    }
  }
  if (out.host.empty()) return fail(error, "empty host");
  if (out.host.size() > 253 || !valid_host_chars(out.host)) {
    return fail(error, "invalid host name '" + out.host + "'");
  }
  return out;
}

std::string format_host_port(std::string_view host, std::uint16_t port) {
  std::string s;
  if (host.find(':') != std::string_view::npos) {
    s = "[" + std::string(host) + "]";
  } else {
    s = std::string(host);
  }
  return s + ":" + std::to_string(port);
}

}  // namespace cskit::net
