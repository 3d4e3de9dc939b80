#pragma once
// Pinned server keys, as ssh's known_hosts file (docs/protocol.md, "Known
// hosts"). One entry per line:
//
//   HOST:PORT SHA256:<base64 of the SHA-256 of the key>   [comment]
//
// HOST is the host as the user typed it (lower-cased; IPv6 in brackets),
// so a server reached under two names has two entries. Blank lines and
// lines starting with '#' are ignored; a line that does not parse is
// skipped (and reported by lookup()). Pure file handling: no network.

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace cskit::client {

/// $XDG_CONFIG_HOME/cskit/known_hosts, else ~/.config/cskit/known_hosts.
std::filesystem::path default_known_hosts();

/// The key an entry is filed under: "host:port", "[v6]:port".
std::string known_host_key(std::string_view host, std::uint16_t port);

struct known_host_result {
  enum class status {
    unknown,   ///< no entry for this host and port
    match,     ///< an entry holds this fingerprint
    mismatch,  ///< entries exist, none holds this fingerprint: the key changed
  };
  status state = status::unknown;
  std::size_t line = 0;      ///< match/mismatch: the (first) entry's line, from 1
  std::string stored;        ///< mismatch: the fingerprint on that line
  std::vector<std::size_t> bad_lines;  ///< lines that could not be parsed
};

/// Looks `key` up in `file` (a missing file is empty). Throws
/// std::runtime_error when the file exists but cannot be read.
known_host_result lookup_known_host(const std::filesystem::path& file, std::string_view key,
                                    std::string_view fingerprint);

/// Appends an entry, creating the file (0600) and its directory (0700).
/// The line is written with one append, so concurrent clients cannot
/// interleave. Throws std::runtime_error.
void add_known_host(const std::filesystem::path& file, std::string_view key, std::string_view fingerprint);

}  // namespace cskit::client
