#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cskit::net {

struct host_port {
  std::string host;  ///< name, IPv4 literal, or IPv6 literal without brackets
  std::uint16_t port = 0;
};

/// Parses HOST, HOST:PORT, [V6], [V6]:PORT (and a bare V6 literal without a
/// port). On failure returns nullopt and, if `error` is given, says why.
std::optional<host_port> parse_host_port(std::string_view text, std::uint16_t default_port,
                                         std::string* error = nullptr);

/// "host:port", bracketing IPv6 literals.
std::string format_host_port(std::string_view host, std::uint16_t port);

}  // namespace cskit::net
