#pragma once
// The systemd journal's native protocol (systemd.journal-fields(7);
// "Native Journal Protocol" in systemd's documentation), without
// libsystemd: one datagram per entry to /run/systemd/journal/socket, each
// field KEY=VALUE on its own line, or, for a value that holds a newline,
// KEY, a newline, the value's length as 64-bit little-endian, the value
// and a newline. Keys are upper-case letters, digits and underscores.

#include <span>
#include <string>
#include <string_view>

namespace cskit::net {

struct journal_field {
  std::string_view key;
  std::string_view value;
};

/// Whether stderr is connected to the journal: systemd sets JOURNAL_STREAM
/// to the device and inode of the stream it gives a service, and they are
/// stderr's (a process whose stderr was redirected elsewhere is not).
bool stderr_is_journal() noexcept;

/// One journal entry in the native protocol's encoding.
std::string journal_entry(std::span<const journal_field> fields);

/// Sends one entry to the journal's socket ($CSKIT_JOURNAL_SOCKET, for
/// tests, else /run/systemd/journal/socket), through a socket each thread
/// connects once; never waits: false when journald's queue is full or it
/// cannot be reached (the caller writes the record elsewhere).
bool send_to_journal(std::span<const journal_field> fields) noexcept;

}  // namespace cskit::net
