#pragma once
// Remote execution: runs argv directly (never through a shell unless the
// policy allows `shell`), streams stdout/stderr as they are produced with
// backpressure, feeds stdin under a window, forwards signals and terminal
// size, and reports the exact exit status. Off unless [exec] enabled = true.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "net/child_process.hpp"
#include "proto/frame.hpp"

namespace cskit::net {
class connection;
}

namespace cskit::service {

struct exec_options {
  bool enabled = false;
  bool allow_shell = false;
  std::string shell = "/bin/sh";
  /// Allow-list: program names (looked up in `path`) or absolute paths.
  /// Empty: any program.
  std::vector<std::string> programs;
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  std::string cwd;  ///< default working directory (empty: the account's home, else /)
  /// Variables a client may set; a trailing * matches a prefix ("LC_*").
  std::vector<std::string> env_allow{"LANG", "LC_*", "TZ", "TERM", "COLUMNS", "LINES"};
  std::chrono::seconds max_wall_time{0};  ///< 0: no limit
  std::uint64_t cpu_seconds = 0;
  std::uint64_t memory_bytes = 0;
  std::uint64_t max_processes = 0;
  std::size_t max_concurrent = 64;
  std::size_t max_concurrent_per_user = 16;
  /// Account commands run as when the server runs as root (default nobody).
  std::string run_as;
  bool operator==(const exec_options&) const = default;
};

/// Resolved once at start-up from exec_options (account, allow-list).
struct exec_policy {
  exec_options options;
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  std::vector<gid_t> groups;
  std::string account;  ///< user name commands run as
  std::string home;
  std::vector<std::string> allowed;  ///< canonical paths of `programs`

  /// Throws std::runtime_error with a message for the operator.
  static exec_policy resolve(const exec_options& o);

  /// Finds `name` (a program name searched in `path`, or an absolute path)
  /// and checks the allow-list. Returns the canonical path, or an error.
  /// `by_policy` (when given) is set when the program exists but the
  /// allow-list refuses it.
  std::optional<std::string> program_for(const std::string& name, std::string& error, bool* by_policy = nullptr) const;
  bool env_allowed(const std::string& key) const;
};

/// Concurrency limits shared by every connection. Thread-safe.
class exec_limiter {
 public:
  explicit exec_limiter(const exec_options& o) : total_max_(o.max_concurrent), user_max_(o.max_concurrent_per_user) {}
  bool try_acquire(const std::string& user, std::string& why);
  void release(const std::string& user);
  /// New bounds (a configuration reload); commands running go on.
  void set_limits(std::size_t max_concurrent, std::size_t max_concurrent_per_user);

 private:
  std::mutex m_;
  std::size_t total_ = 0, total_max_, user_max_;
  std::map<std::string, std::size_t> per_user_;
};

/// The commands one connection runs. Destroying it (the connection closed)
/// kills every process group it started.
class exec_sessions {
 public:
  /// Bytes of stdin a client may send ahead of the server's exec.ack.
  static constexpr std::size_t stdin_window = 1 << 20;

  exec_sessions(const exec_policy& policy, exec_limiter& limiter, net::connection& conn, std::string user);
  ~exec_sessions();
  exec_sessions(const exec_sessions&) = delete;
  exec_sessions& operator=(const exec_sessions&) = delete;

  void start(std::uint64_t id, const proto::json& request);
  void stdin_data(std::uint64_t id, std::string_view data, bool eof);
  void signal(std::uint64_t id, const std::string& name);
  void resize(std::uint64_t id, const proto::json& request);

 private:
  struct running;
  // The steps of start(): each fills its part of `req` from the request,
  // or answers it (refused) and returns false.
  bool set_command(std::uint64_t id, const proto::json& h, net::spawn_request& req);
  bool set_argv(std::uint64_t id, const proto::json& h, net::spawn_request& req);
  bool set_directory(std::uint64_t id, const proto::json& h, net::spawn_request& req);
  bool set_environment(std::uint64_t id, const proto::json& h, net::spawn_request& req);
  bool set_wall_time(std::uint64_t id, const proto::json& h, net::spawn_request& req);
  /// Within the limits (exec_limiter): spawns, and says exec.started.
  void launch(std::uint64_t id, net::spawn_request req);
  net::child_process::callbacks callbacks_for(std::uint64_t id, running* r);
  void finish(std::uint64_t id, const net::exit_status& st);
  void error(std::uint64_t id, proto::errc code, const std::string& message);
  /// spawn_failed for a program that could not be run, with the status a
  /// shell would exit with (127 not found, 126 not executable).
  void not_started(std::uint64_t id, const std::string& message, int shell_status);

  const exec_policy& policy_;
  exec_limiter& limiter_;
  net::connection& conn_;
  std::string user_;
  std::map<std::uint64_t, std::unique_ptr<running>> running_;
};

/// Signal names accepted on the wire ("INT", "TERM", ...), or 0.
int signal_from_name(const std::string& name) noexcept;

}  // namespace cskit::service
