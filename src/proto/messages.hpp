#pragma once
// Frame type names and permission names used on the wire.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cskit::proto {

namespace type {
inline constexpr std::string_view hello = "hello";      // server -> client, first frame
inline constexpr std::string_view auth = "auth";        // client -> server, second frame
inline constexpr std::string_view welcome = "welcome";  // server -> client, auth accepted
inline constexpr std::string_view error = "error";
inline constexpr std::string_view ping = "ping";  // either direction
inline constexpr std::string_view pong = "pong";
inline constexpr std::string_view info = "info";
inline constexpr std::string_view info_reply = "info.reply";
inline constexpr std::string_view bye = "bye";  // server -> client before an orderly close
// remote execution (docs/protocol.md, "exec")
inline constexpr std::string_view exec = "exec";                  // C->S: start a command
inline constexpr std::string_view exec_started = "exec.started";  // S->C
inline constexpr std::string_view exec_output = "exec.output";    // S->C: stdout/stderr bytes
inline constexpr std::string_view exec_stdin = "exec.stdin";      // C->S: stdin bytes / EOF
inline constexpr std::string_view exec_ack = "exec.ack";          // S->C: stdin bytes consumed
inline constexpr std::string_view exec_signal = "exec.signal";    // C->S
inline constexpr std::string_view exec_resize = "exec.resize";    // C->S: terminal size
inline constexpr std::string_view exec_exit = "exec.exit";        // S->C: final status
}  // namespace type

enum class permission : std::uint8_t {
  files_read = 1 << 0,
  files_write = 1 << 1,
  exec = 1 << 2,
  chat = 1 << 3,
};

/// A set of permissions as a bit mask.
class permission_set {
 public:
  constexpr permission_set() = default;
  constexpr bool has(permission p) const noexcept { return bits_ & static_cast<std::uint8_t>(p); }
  constexpr void add(permission p) noexcept { bits_ |= static_cast<std::uint8_t>(p); }
  constexpr void remove(permission p) noexcept { bits_ &= static_cast<std::uint8_t>(~static_cast<std::uint8_t>(p)); }
  constexpr bool operator==(const permission_set&) const = default;
  /// Wire names, in a fixed order: files-read, files-write, exec, chat.
  std::vector<std::string> names() const;

 private:
  std::uint8_t bits_ = 0;
};

std::string_view to_wire(permission p) noexcept;
std::optional<permission> permission_from_wire(std::string_view name) noexcept;

}  // namespace cskit::proto
