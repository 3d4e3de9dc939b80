#pragma once
// Protocol constants and the named limits every decoder checks before it
// allocates anything. Changing one of these changes the wire contract:
// docs/protocol.md lists them.

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace cskit::proto {

/// Protocol version spoken by this build (hello.proto / auth.proto).
inline constexpr int protocol_version = 2;

/// Size of the header-length prefix (unsigned, network byte order).
inline constexpr std::size_t length_prefix_size = 4;

/// Largest JSON header accepted, in bytes (64 KiB).
inline constexpr std::uint32_t max_header_size = 64 * 1024;

/// Largest body a single frame may declare (16 MiB). Bulk data (files,
/// command output) is sent as a sequence of frames, each within this limit.
inline constexpr std::uint64_t max_body_size = 16 * 1024 * 1024;

/// Raw nonce length in bytes (hex-encoded on the wire: 64 characters).
inline constexpr std::size_t nonce_size = 32;

/// Longest user name accepted in an auth frame.
inline constexpr std::size_t max_user_name = 64;

/// TCP port `cskit serve` listens on when none is given.
inline constexpr std::uint16_t default_port = 7701;

inline constexpr std::string_view server_software = "cskit";

}  // namespace cskit::proto
