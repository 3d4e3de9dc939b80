#pragma once
// Server configuration: defaults, the TOML file (--config), and the user
// table. Pure: reads files, never touches sockets.

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "proto/messages.hpp"
#include "service/chat.hpp"
#include "service/echo.hpp"
#include "service/exec.hpp"
#include "service/files.hpp"
#include "service/time.hpp"

namespace cskit::server {

struct user_account {
  std::string name;
  /// The shared secret; never sent on the wire. Empty in a parsed entry
  /// named `admin`: the generated admin token (admin.token).
  std::string token;
  proto::permission_set permissions;
  std::string origin;  ///< where it is declared ("cskit.toml:12"), for messages
};

/// [tls]: transport security (docs/protocol.md, "Transport security").
struct tls_options {
  /// Cleartext instead of TLS: an explicit opt-in (`[tls] plaintext =
  /// true` or `serve --plaintext`), for benchmarks on loopback.
  bool plaintext = false;
  /// A certificate chain and key (PEM); both empty: the identity generated
  /// in the state directory (server.crt, server.key).
  std::filesystem::path cert;
  std::filesystem::path key;
  /// Kernel TLS: "auto" (when the kernel offers it), "on" (always ask
  /// OpenSSL for it) or "off".
  std::string kernel_tls = "auto";
  bool operator==(const tls_options&) const = default;
};

/// [irc]: the IRC front end to chat (docs/irc.md).
struct irc_options {
  std::string listen;          ///< ADDR[:PORT] (default port 6697); empty: off
  bool tls = true;             ///< TLS with the server's key; false: cleartext, loopback only unless...
  bool plaintext_remote = false;  ///< ...this allows cleartext on other addresses
  std::string network = "cskit";
  std::string motd;            ///< the message of the day (lines)
  std::size_t history_max = 1000;  ///< messages one CHATHISTORY request returns at most
  bool operator==(const irc_options&) const = default;
};

/// [web]: HTTPS on the cskit port (ALPN http/1.1), docs/http.md.
struct web_options {
  bool enabled = true;
  bool operator==(const web_options&) const = default;
};

struct server_config {
  std::string listen = "127.0.0.1:7701";
  std::filesystem::path root;       ///< the share (empty: <state_dir>/share)
  std::filesystem::path state_dir;  ///< empty: $XDG_STATE_HOME/cskit or ~/.local/state/cskit
  std::string name;                 ///< server name shown to clients (default: host name)
  unsigned threads = 0;             ///< 0: one per core
  std::size_t max_connections = 10000;
  /// Connections not logged in yet: in all, and from one address (IPv4) or
  /// /64 (IPv6), so that one host cannot keep others from logging in.
  std::size_t max_unauthenticated = 4096;
  std::size_t max_unauthenticated_per_address = 128;
  std::chrono::seconds idle_timeout{300};
  std::chrono::seconds handshake_timeout{10};
  std::chrono::seconds frame_timeout{30};
  std::chrono::seconds grace{5};
  std::string log_level = "info";
  std::vector<user_account> users;  ///< [[users]] of the config; empty: the default `admin` too
  /// The accounts `cskit user` manages (users.toml beside the config file,
  /// or in the state directory without one); read if it exists.
  std::filesystem::path users_file;
  service::files_options files;     ///< [files]: limits of the share
  service::echo_options echo;       ///< [echo]: RFC 862 on UDP and TCP
  service::time_options time;       ///< [time]: SNTPv4 server
  service::exec_options exec;       ///< [exec]: remote execution (off by default)
  service::chat_options chat;       ///< [chat]
  irc_options irc;                  ///< [irc]
  tls_options tls;                  ///< [tls]
  web_options web;                  ///< [web]
};

class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Minimum token length accepted in a config file or CSKIT_TOKEN.
inline constexpr std::size_t min_token_length = 16;

/// Parses a TOML config (see docs/configuration in README); throws
/// config_error naming the file, line and key on any problem. Unknown keys
/// are errors too, so that a typo never silently weakens security.
server_config parse_config(std::string_view toml_text, const std::string& source_name);
server_config load_config_file(const std::filesystem::path& path);

/// Fills in the state directory ($XDG_STATE_HOME/cskit or ~/.local/state/
/// cskit) and the users file (<state dir>/users.toml) when not set.
void fill_default_paths(server_config& config);

/// The users file: [[users]] entries only (the same keys as the config's).
std::vector<user_account> parse_users_file(std::string_view toml_text, const std::string& source_name);
/// Reads the users file; none: no users. Refuses one that others may read
/// (it holds tokens). Throws config_error.
std::vector<user_account> load_users_file(const std::filesystem::path& path);
/// The text of a users file holding `users` (what `cskit user` writes).
std::string format_users_file(const std::vector<user_account>& users);


/// Permissions of the default `admin` user: everything except exec.
proto::permission_set default_admin_permissions();

/// The default admin token: `env_token` when non-empty, otherwise the token
/// stored in <state_dir>/admin.token, generated (256 random bits, mode 0600)
/// on first use. Refuses a token file readable by group or others.
/// `generated` tells whether a new file was written.
std::string load_or_create_admin_token(const std::filesystem::path& state_dir, const std::string& env_token,
                                       bool& generated);

}  // namespace cskit::server
