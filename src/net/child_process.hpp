#pragma once
// A child process driven by an event loop: spawned in its own process group
// (or session, with a pseudo-terminal), its stdout and stderr read as they
// are produced, its stdin fed, its exit noticed through a pidfd (no SIGCHLD
// handler, no zombies), and the whole group killed when it is destroyed.
// All members must be used on the loop of the executor it was created with.

#include <sys/types.h>

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cskit::net {

struct terminal_size {
  std::uint16_t rows = 24;
  std::uint16_t cols = 80;
};

struct spawn_request {
  std::string program;            ///< absolute path, executed directly (no shell)
  std::vector<std::string> argv;  ///< argv[0] included
  std::vector<std::string> env;   ///< "KEY=VALUE", the complete environment
  std::string cwd;                ///< empty: inherit
  bool stdin_null = false;        ///< give the command /dev/null
  std::optional<terminal_size> pty;  ///< run on a new pseudo-terminal
  /// Wall-clock limit: SIGTERM to the group, SIGKILL 2 s later (0: none).
  std::chrono::milliseconds wall_time{0};
  // Resource limits (0: unchanged)
  std::uint64_t cpu_seconds = 0;
  std::uint64_t memory_bytes = 0;  ///< address space
  std::uint64_t max_processes = 0; ///< RLIMIT_NPROC (counts every process of the user)
  // Account to run as (when the server runs as root)
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  std::vector<gid_t> groups;
};

struct exit_status {
  bool exited = false;  ///< true: `code` is valid; false: killed by `signal`
  int code = 0;
  int signal = 0;
  bool core_dumped = false;
  bool timed_out = false;  ///< ended by the wall-time limit
};

class child_process {
 public:
  struct callbacks {
    /// Output as it is produced: fd 1 (stdout, or the terminal) or 2.
    std::function<void(int fd, std::string_view data)> on_output;
    /// `n` more stdin bytes were taken by the command's pipe.
    std::function<void(std::size_t n)> on_stdin_consumed;
    /// Once, after the process exited and all its output was delivered.
    std::function<void(const exit_status&)> on_exit;
  };

  /// Forks and executes. On failure returns nullptr and says why in `error`
  /// (for example "No such file or directory" from execve); when execve
  /// itself failed, `shell_status` is what a POSIX shell exits with then:
  /// 127 for a program that does not exist, 126 for one it cannot execute
  /// (0 for a failure before execve: the directory, the account, limits).
  static std::shared_ptr<child_process> spawn(const boost::asio::any_io_executor& ex, const spawn_request& req,
                                              callbacks cb, std::string& error, int* shell_status = nullptr);
  ~child_process();  ///< kills the process group if still running
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  pid_t pid() const noexcept;
  /// Queues bytes for stdin; on_stdin_consumed reports progress.
  void write_stdin(std::string_view data);
  /// EOF on stdin (for a terminal: the EOF character, as a user's Ctrl-D).
  void close_stdin();
  std::size_t stdin_queued() const noexcept;
  /// Signals the whole process group (with a terminal: its foreground group).
  void signal_group(int sig);
  void resize(terminal_size size);
  /// Stops/restarts reading output (backpressure from a slow client).
  void pause_output();
  void resume_output();
  bool running() const noexcept;

  struct impl;

 private:
  explicit child_process(std::shared_ptr<impl> p);
  std::shared_ptr<impl> impl_;
};

}  // namespace cskit::net
