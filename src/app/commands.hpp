#pragma once
// The CLI's commands. main.cpp parses arguments into these option structs;
// each run_* returns the process exit code.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "client/client.hpp"
#include "server/config.hpp"

namespace cskit::app {

/// Exit codes (documented in README and `cskit help`).
namespace exit_code {
inline constexpr int ok = 0;
inline constexpr int failure = 1;         ///< local failure (cannot listen, bad config, ...)
inline constexpr int usage = 2;           ///< bad command line
inline constexpr int connect = 3;         ///< cannot connect / connection lost
inline constexpr int auth = 4;            ///< authentication failed (either direction)
inline constexpr int permission = 5;      ///< permission denied
inline constexpr int protocol = 6;        ///< protocol error or version mismatch
inline constexpr int remote = 7;          ///< the server reported an error
inline constexpr int timeout = 8;         ///< no answer in time (ping: a probe was lost)
// file transfer
inline constexpr int no_space = 9;        ///< disk full (on either side)
inline constexpr int quota = 10;          ///< the share's quota would be exceeded
inline constexpr int integrity = 11;      ///< content digest mismatch: nothing committed
inline constexpr int changed = 12;        ///< the source changed or vanished during the transfer
inline constexpr int not_found = 13;      ///< no such file or directory
inline constexpr int exists = 14;         ///< the target exists (--no-clobber, mkdir)
// server identity (TLS)
inline constexpr int host_key_changed = 15;  ///< the server's key differs from the pinned or known one
inline constexpr int host_key_unknown = 16;  ///< the server's key is new and was not accepted, or its certificate is untrusted
inline constexpr int not_empty = 17;         ///< rm of a directory that is not empty, without -r
}  // namespace exit_code

/// The exit code for an error code (file commands).
int exit_code_for(proto::errc e) noexcept;

int exit_code_for(client::failure f) noexcept;

struct client_common {
  std::string host;
  std::optional<std::string> user;
  std::optional<std::string> token;
  std::string client_config;
  std::optional<std::string> fingerprint;  ///< --fingerprint SHA256:...
  std::optional<std::string> ca_file;      ///< --ca-file
  bool accept_new = false;                 ///< --accept-new
  bool plaintext = false;                  ///< --plaintext
  double connect_timeout = 10;
  double timeout = 30;
  bool json = false;
  std::uint64_t rate_limit = 0;  ///< put/get --bwlimit, bytes per second (0: none)
};

/// --bwlimit's RATE as rsync reads it: KiB per second, or with a suffix
/// K, M or G (or KiB, MiB, GiB: powers of 1024), KB, MB or GB (powers of
/// 1000); "0" is no limit. nullopt when it is not a rate, or under 1000
/// bytes per second.
std::optional<std::uint64_t> parse_rate(std::string_view text);

struct ping_options {
  client_common common;
  long count = 0;         ///< 0: until interrupted
  double interval = 1.0;  ///< seconds between probes
  std::size_t size = 0;   ///< payload bytes per probe
  bool quiet = false;
};

int run_ping(const ping_options& o);

/// Connects and authenticates to `host` with the credentials and deadlines
/// in `o` (which may name several hosts; `host` is the one to use).
client::connection connect_client(const client_common& o, const std::string& host);

/// `cskit exec`.
struct exec_options {
  client_common common;              ///< common.host: HOST or HOST1,HOST2,...
  std::vector<std::string> command;  ///< argv, run without a shell
  std::string shell;                 ///< --shell 'command line'
  std::string hosts_file;            ///< --hosts FILE
  std::vector<std::string> env;      ///< KEY=VALUE
  std::string cwd;
  double timeout = 0;                ///< seconds; 0: the server's limit only
  bool tty = false;
  bool no_stdin = false;
  int fanout = 32;
};
int run_exec(const exec_options& o);

/// `cskit chat`.
struct chat_options {
  client_common common;
  std::string nick;  ///< default: $USER
  std::string room;  ///< default: the server's default room
};
int run_chat(const chat_options& o);

/// `cskit ping --udp`: RFC 862 echo probes, no authentication.
struct udp_ping_options {
  std::string host;             ///< HOST[:PORT], default port 7
  long count = 0;               ///< 0: until interrupted
  double interval = 1.0;
  std::size_t size = 56;        ///< datagram size (at least 16)
  double timeout = 1.0;         ///< seconds before a probe counts as lost
  bool quiet = false;
  bool json = false;
};
int run_udp_ping(const udp_ping_options& o);

/// `cskit time` and `cskit sync`.
struct time_options {
  std::vector<std::string> hosts;  ///< HOST[:PORT]..., default port 123
  int samples = 4;
  double timeout = 1.0;  ///< seconds per request
  int version = 4;       ///< NTP version to ask with (2, 3 or 4)
  bool json = false;
};
int run_time(const time_options& o);

struct sync_options {
  time_options query;
  /// The panic threshold (ntpd's): a larger offset is refused (0: none).
  double max_offset = 1000;
  bool dry_run = false;
  bool force_step = false;
  bool force_slew = false;
};
int run_sync(const sync_options& o);
int run_info(const client_common& o);

/// `cskit put|get|ls|stat|mkdir|rm|mv`.
struct files_options {
  client_common common;  ///< host comes from the HOST:PATH arguments
  std::vector<std::string> args;  ///< positionals as typed
  bool recursive = false;  ///< -r (put, get, rm) / -R (ls)
  bool preserve = false;   ///< -p
  bool parents = false;    ///< mkdir -p
  bool long_format = false;  ///< ls -l
  bool all = false;          ///< ls -a: names starting with '.' too
  unsigned port = 0;         ///< -P: the port of every HOST without one (0: default)
  bool no_clobber = false;
  bool quiet = false;
  bool no_fsync = false;   ///< get --no-fsync
  std::string verify;      ///< "" or "sha256"
  bool archive = false;    ///< put/get -a: -r -p, and unchanged files are not sent again
  bool dry_run = false;    ///< put/get --dry-run
  bool checksum = false;   ///< put/get -c
  bool whole_file = false; ///< put -W: no delta transfer
  bool delete_extraneous = false;  ///< put/get --delete
  struct filter_rule {
    bool include = false;  ///< --include (else --exclude)
    std::string pattern;
  };
  std::vector<filter_rule> filter_rules;  ///< --exclude/--include, in command-line order
};
int run_put(const files_options& o);
int run_get(const files_options& o);
int run_ls(const files_options& o);
int run_stat(const files_options& o);
int run_mkdir(const files_options& o);
int run_rm(const files_options& o);
int run_mv(const files_options& o);

struct serve_options {
  server::server_config config;
  std::string config_file;
  bool print_fingerprint = false;  ///< --print-fingerprint: print the key's fingerprint and exit
};

}  // namespace cskit::app
