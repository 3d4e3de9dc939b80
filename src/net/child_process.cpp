#include "net/child_process.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <pthread.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <array>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstring>
#include <utility>
#include <spdlog/spdlog.h>

#ifndef P_PIDFD
#define P_PIDFD 3  // Linux 5.4; older glibc headers lack the name
#endif

namespace cskit::net {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

constexpr std::size_t read_chunk = 256 * 1024;
/// Output pipes are enlarged to this, so a fast writer needs fewer wake-ups.
constexpr int pipe_size = 1 << 20;
/// After the process exits, how long its output may keep flowing (from
/// processes outside its group that inherited the pipes) before we stop.
constexpr auto output_drain_limit = std::chrono::seconds(2);

// What the child reports through the error pipe when it cannot exec.
struct spawn_failure {
  int stage;  // 0 exec, 1 chdir, 2 credentials, 3 terminal, 4 limits
  int error;
};

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

[[noreturn]] void child_fail(int errpipe, int stage) {
  spawn_failure f{stage, errno};
  ssize_t ignored = ::write(errpipe, &f, sizeof f);
  (void)ignored;
  ::_exit(127);
}

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

}  // namespace

struct child_process::impl : std::enable_shared_from_this<impl> {
  explicit impl(const asio::any_io_executor& ex)
      : out(ex), err(ex), in(ex), pidfd_desc(ex), drain_timer(ex) {}

  pid_t pid = -1;
  bool pty = false;
  asio::posix::stream_descriptor out, err, in, pidfd_desc;
  asio::steady_timer drain_timer;
  callbacks cb;
  // Allocated on the first read and never zero-filled: most commands print
  // little, and clearing 2 x 256 KiB cost more than spawning `true`.
  std::unique_ptr<char[]> out_buf, err_buf;
  bool paused = false;
  bool out_reading = false, err_reading = false;
  bool out_eof = false, err_eof = true;  // err_eof is cleared when there is a stderr pipe
  bool exited = false, reaped = false, reported = false;
  exit_status status;
  std::string stdin_buf, stdin_inflight;
  bool stdin_writing = false, stdin_close_pending = false, stdin_closed = false;
  asio::steady_timer deadline_timer{drain_timer.get_executor()};

  void arm_deadline(std::chrono::milliseconds limit) {
    deadline_timer.expires_after(limit);
    deadline_timer.async_wait([self = shared_from_this()](const error_code& e) {
      if (e || self->reaped) return;
      // Ask politely, then insist.
      self->status.timed_out = true;
      ::kill(-self->pid, SIGTERM);
      self->deadline_timer.expires_after(std::chrono::seconds(2));
      self->deadline_timer.async_wait([self](const error_code& e2) {
        if (!e2 && !self->reaped) ::kill(-self->pid, SIGKILL);
      });
    });
  }

  asio::posix::stream_descriptor& desc(int fd) { return fd == 1 ? out : err; }

  // Takes over the parent's ends of the child's streams (each set to -1):
  // the terminal's master, or the three pipes (stdin's, unless /dev/null).
  void adopt_streams(int& master, int& in_w, int& out_r, int& err_r) {
    if (master >= 0) {
      pty = true;
      const int master_w = ::fcntl(master, F_DUPFD_CLOEXEC, 3);
      out.assign(std::exchange(master, -1));
      if (master_w >= 0) in.assign(master_w);
      return;
    }
    out.assign(std::exchange(out_r, -1));
    err.assign(std::exchange(err_r, -1));
    err_eof = false;
    if (in_w >= 0) in.assign(std::exchange(in_w, -1));
    else stdin_closed = true;
  }

  void start_read(int fd) {
    bool& reading = fd == 1 ? out_reading : err_reading;
    bool& eof = fd == 1 ? out_eof : err_eof;
    if (paused || reading || eof) return;
    reading = true;
    auto& buf = fd == 1 ? out_buf : err_buf;
    if (!buf) buf = std::make_unique_for_overwrite<char[]>(read_chunk);
    desc(fd).async_read_some(asio::buffer(buf.get(), read_chunk), [self = shared_from_this(), fd](const error_code& ec, std::size_t n) {
      (fd == 1 ? self->out_reading : self->err_reading) = false;
      if (ec) {
        // EOF; EIO on a terminal master once the slave side is closed.
        (fd == 1 ? self->out_eof : self->err_eof) = true;
        error_code ignored;
        self->desc(fd).close(ignored);
        self->maybe_finish();
        return;
      }
      if (self->cb.on_output) self->cb.on_output(fd, std::string_view((fd == 1 ? self->out_buf : self->err_buf).get(), n));
      self->start_read(fd);
    });
  }

  void wait_exit() {
    pidfd_desc.async_wait(asio::posix::stream_descriptor::wait_read, [self = shared_from_this()](const error_code& ec) {
      if (ec) return;  // closed: the owner is gone and the process was killed
      self->on_exited();
    });
  }

  void on_exited() {
    // The leader is a zombie now, so its pid (the group id) cannot be
    // reused: end whatever else is left in its group, then reap it.
    ::kill(-pid, SIGKILL);
    siginfo_t info{};
    int rc;
    do {
      rc = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_desc.native_handle()), &info, WEXITED);
    } while (rc != 0 && errno == EINTR);
    reaped = true;
    exited = true;
    deadline_timer.cancel();
    if (rc == 0) {
      if (info.si_code == CLD_EXITED) {
        status.exited = true;
        status.code = info.si_status;
      } else {
        status.signal = info.si_status;
        status.core_dumped = info.si_code == CLD_DUMPED;
      }
    }
    error_code ignored;
    pidfd_desc.close(ignored);
    close_stdin_now();
    if (!(out_eof && err_eof)) {
      drain_timer.expires_after(output_drain_limit);
      drain_timer.async_wait([self = shared_from_this()](const error_code& e) {
        if (e) return;
        error_code ignored2;
        self->out.close(ignored2);  // the pending reads end with operation_aborted
        self->err.close(ignored2);
        self->out_eof = self->err_eof = true;
        self->maybe_finish();
      });
    }
    maybe_finish();
  }

  void maybe_finish() {
    if (reported || !exited || !out_eof || !err_eof) return;
    reported = true;
    drain_timer.cancel();
    // The callback may destroy the owner (and with it `cb`): call a copy.
    auto on_exit = std::move(cb.on_exit);
    cb = {};
    if (on_exit) on_exit(status);
  }

  void pump_stdin() {
    if (stdin_writing || stdin_closed) return;
    if (stdin_buf.empty()) {
      if (stdin_close_pending) close_stdin_now();
      return;
    }
    // The bytes being written must not move while the write is pending, so
    // new input goes to stdin_buf while stdin_inflight is written.
    stdin_inflight.swap(stdin_buf);
    stdin_writing = true;
    write_inflight(0);
  }

  void write_inflight(std::size_t off) {
    in.async_write_some(asio::buffer(stdin_inflight.data() + off, stdin_inflight.size() - off),
                        [self = shared_from_this(), off](const error_code& ec, std::size_t n) {
                          if (ec) {
                            // The command closed its stdin (EPIPE) or is gone: nothing
                            // queued can be consumed any more. Count it as consumed so
                            // the sender is not left waiting for window.
                            const std::size_t dropped = self->stdin_inflight.size() - off + self->stdin_buf.size();
                            self->stdin_inflight.clear();
                            self->stdin_buf.clear();
                            self->stdin_writing = false;
                            self->close_stdin_now();
                            if (dropped && self->cb.on_stdin_consumed) self->cb.on_stdin_consumed(dropped);
                            return;
                          }
                          if (self->cb.on_stdin_consumed) self->cb.on_stdin_consumed(n);
                          if (off + n < self->stdin_inflight.size()) {
                            self->write_inflight(off + n);
                            return;
                          }
                          self->stdin_inflight.clear();
                          self->stdin_writing = false;
                          self->pump_stdin();
                        });
  }

  void close_stdin_now() {
    if (stdin_closed) return;
    stdin_closed = true;
    error_code ignored;
    in.close(ignored);
  }

  void detach() {
    cb = {};
    if (!reaped && pid > 0) ::kill(-pid, SIGKILL);
    error_code ignored;
    out.close(ignored);
    err.close(ignored);
    close_stdin_now();
    drain_timer.cancel();
    deadline_timer.cancel();
    // pidfd_desc stays open: its wait completes once the killed process
    // exits and reaps it, so no zombie is left behind.
  }
};

child_process::child_process(std::shared_ptr<impl> p) : impl_(std::move(p)) {}

child_process::~child_process() { impl_->detach(); }

namespace {

// The descriptors a spawn sets up; whatever is still held is closed when it
// goes out of scope (handed over ones are set to -1).
struct spawn_fds {
  int in_r = -1, in_w = -1, out_r = -1, out_w = -1, err_r = -1, err_w = -1, master = -1, slave = -1;
  int errpipe[2] = {-1, -1};  // the child's exec failure, or EOF once execve succeeded

  spawn_fds() = default;
  spawn_fds(const spawn_fds&) = delete;
  spawn_fds& operator=(const spawn_fds&) = delete;
  ~spawn_fds() {
    for (int* fd : {&in_r, &in_w, &out_r, &out_w, &err_r, &err_w, &master, &slave, &errpipe[0], &errpipe[1]}) {
      close_fd(*fd);
    }
  }
  // The child's ends, once it has them.
  void close_child_ends() {
    close_fd(errpipe[1]);
    close_fd(in_r);
    close_fd(out_w);
    close_fd(err_w);
    close_fd(slave);
  }
};

// Pipes (or a terminal) for the child's standard streams, and the error
// pipe. False with `error` set when one cannot be made.
bool open_streams(const spawn_request& req, spawn_fds& f, std::string& error) {
  auto fail = [&error](const char* what) {
    error = std::string(what) + ": " + std::strerror(errno);
    return false;
  };
  if (::pipe2(f.errpipe, O_CLOEXEC) != 0) return fail("pipe");
  if (req.pty) {
    winsize ws{req.pty->rows, req.pty->cols, 0, 0};
    if (::openpty(&f.master, &f.slave, nullptr, nullptr, &ws) != 0) return fail("cannot open a pseudo-terminal");
    ::fcntl(f.master, F_SETFD, FD_CLOEXEC);
    ::fcntl(f.slave, F_SETFD, FD_CLOEXEC);
    return true;
  }
  int p[2];
  if (req.stdin_null) {
    f.in_r = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (f.in_r < 0) return fail("/dev/null");
  } else {
    if (::pipe2(p, O_CLOEXEC) != 0) return fail("pipe");
    f.in_r = p[0];
    f.in_w = p[1];
  }
  if (::pipe2(p, O_CLOEXEC) != 0) return fail("pipe");
  f.out_r = p[0];
  f.out_w = p[1];
  ::fcntl(f.out_r, F_SETPIPE_SZ, pipe_size);  // best effort: capped by /proc/sys/fs/pipe-max-size
  if (::pipe2(p, O_CLOEXEC) != 0) return fail("pipe");
  f.err_r = p[0];
  f.err_w = p[1];
  ::fcntl(f.err_r, F_SETPIPE_SZ, pipe_size);
  return true;
}

// What the child needs, prepared before vfork(): after it, only system
// calls are allowed (no allocation, no locks).
struct child_plan {
  std::vector<char*> argv, envp;
  // CPU: SIGXCPU at the limit (a program may catch it and clean up), SIGKILL a second later.
  std::array<rlimit, 3> limits;
  long max_fd;

  explicit child_plan(const spawn_request& req)
      : limits{rlimit{req.cpu_seconds, req.cpu_seconds + 1}, rlimit{req.memory_bytes, req.memory_bytes},
               rlimit{req.max_processes, req.max_processes}},
        max_fd(std::min<long>(::sysconf(_SC_OPEN_MAX), 65536)) {
    for (const auto& a : req.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (const auto& e : req.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
};

// The child's side of vfork: system calls only, then execve. Reports a
// failure (its stage and errno) through the error pipe.
[[noreturn]] void run_child(const spawn_request& req, const spawn_fds& f, const child_plan& plan) {
  const int ep = f.errpipe[1];
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) ::sigaction(s, &dfl, nullptr);  // SIGPIPE back to default, too
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (f.master >= 0) {
    if (::setsid() < 0 || ::ioctl(f.slave, TIOCSCTTY, 0) != 0) child_fail(ep, 3);
    if (::dup2(f.slave, 0) < 0 || ::dup2(f.slave, 1) < 0 || ::dup2(f.slave, 2) < 0) child_fail(ep, 3);
  } else {
    ::setpgid(0, 0);
    if (::dup2(f.in_r, 0) < 0 || ::dup2(f.out_w, 1) < 0 || ::dup2(f.err_w, 2) < 0) child_fail(ep, 3);
  }
  if (req.cpu_seconds && ::setrlimit(RLIMIT_CPU, &plan.limits[0]) != 0) child_fail(ep, 4);
  if (req.memory_bytes && ::setrlimit(RLIMIT_AS, &plan.limits[1]) != 0) child_fail(ep, 4);
  if (req.max_processes && ::setrlimit(RLIMIT_NPROC, &plan.limits[2]) != 0) child_fail(ep, 4);
  // Raw syscalls: glibc's setuid() would try to change every thread of
  // the (shared-memory) parent.
  if (req.gid) {
    if (::syscall(SYS_setgroups, req.groups.size(), req.groups.data()) != 0 || ::syscall(SYS_setgid, *req.gid) != 0) {
      child_fail(ep, 2);
    }
  }
  if (req.uid && ::syscall(SYS_setuid, *req.uid) != 0) child_fail(ep, 2);
  if (!req.cwd.empty() && ::chdir(req.cwd.c_str()) != 0) child_fail(ep, 1);
  // No descriptor of the server leaks into the command.
  if (::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < plan.max_fd; ++fd) {
      if (fd != ep) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
  }
  ::execve(req.program.c_str(), plan.argv.data(), plan.envp.data());
  child_fail(ep, 0);
}

// The parent reads the error pipe: EOF as soon as execve succeeded. False
// (the child reaped, `error` and the shell's status set) when it failed.
bool child_started(pid_t pid, spawn_fds& f, const spawn_request& req, std::string& error, int* shell_status) {
  spawn_failure failure{};
  ssize_t got;
  do {
    got = ::read(f.errpipe[0], &failure, sizeof failure);
  } while (got < 0 && errno == EINTR);
  close_fd(f.errpipe[0]);
  if (got != static_cast<ssize_t>(sizeof failure)) return true;
  int ignored;
  ::waitpid(pid, &ignored, 0);
  static constexpr const char* stages[] = {"cannot execute", "cannot change to the working directory",
                                           "cannot switch to the configured account", "cannot set up the terminal",
                                           "cannot set resource limits"};
  const int stage = failure.stage >= 0 && failure.stage <= 4 ? failure.stage : 0;
  error = std::string(stages[stage]) + ": " + std::strerror(failure.error);
  if (shell_status && stage == 0) {
    // ENOENT for a program that is there: its interpreter (#!) is missing,
    // which a shell reports as 126 too.
    const bool missing =
        (failure.error == ENOENT || failure.error == ENOTDIR) && ::access(req.program.c_str(), F_OK) != 0;
    *shell_status = missing ? 127 : 126;
  }
  return false;
}

}  // namespace

std::shared_ptr<child_process> child_process::spawn(const asio::any_io_executor& ex, const spawn_request& req,
                                                    callbacks cb, std::string& error, int* shell_status) {
  if (shell_status) *shell_status = 0;
  if (req.argv.empty() || req.program.empty()) {
    error = "no command";
    return nullptr;
  }
  spawn_fds fds;
  if (!open_streams(req, fds, error)) return nullptr;
  const child_plan plan(req);

  // vfork: the child borrows the parent's memory until execve, so nothing
  // is copied (fork would copy the page tables and make every thread of the
  // server fault on its next writes). The price: the child may only make
  // raw system calls, and signals stay blocked until it has reset them.
  sigset_t all, old_mask;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old_mask);
  const pid_t pid = ::vfork();
  if (pid == 0) run_child(req, fds, plan);
  const int spawn_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid < 0) {
    error = std::string("vfork: ") + std::strerror(spawn_errno);
    return nullptr;
  }
  // Also here, so the group exists before we could signal it. Not with a
  // terminal: the child calls setsid(), which fails for a group leader.
  if (!req.pty) ::setpgid(pid, pid);
  fds.close_child_ends();
  if (!child_started(pid, fds, req, error, shell_status)) return nullptr;
  const int pfd = pidfd_open(pid);
  if (pfd < 0) {
    error = std::string("pidfd_open: ") + std::strerror(errno) + " (Linux 5.3 or later is needed)";
    ::kill(-pid, SIGKILL);
    int ignored;
    ::waitpid(pid, &ignored, 0);
    return nullptr;
  }
  auto p = std::make_shared<impl>(ex);
  p->pid = pid;
  p->cb = std::move(cb);
  p->pidfd_desc.assign(pfd);
  p->adopt_streams(fds.master, fds.in_w, fds.out_r, fds.err_r);
  p->start_read(1);
  p->start_read(2);
  p->wait_exit();
  if (req.wall_time.count() > 0) p->arm_deadline(req.wall_time);
  return std::shared_ptr<child_process>(new child_process(p));
}

pid_t child_process::pid() const noexcept { return impl_->pid; }

void child_process::write_stdin(std::string_view data) {
  if (impl_->stdin_closed || impl_->stdin_close_pending) return;
  impl_->stdin_buf.append(data);
  impl_->pump_stdin();
}

void child_process::close_stdin() {
  auto& p = *impl_;
  if (p.stdin_closed) return;
  if (p.pty) {
    // A terminal has no EOF of its own: send the EOF character, as Ctrl-D.
    termios t{};
    char eof = 4;
    if (::tcgetattr(p.out.native_handle(), &t) == 0 && t.c_cc[VEOF]) eof = static_cast<char>(t.c_cc[VEOF]);
    p.stdin_buf.push_back(eof);
    p.pump_stdin();
    return;
  }
  p.stdin_close_pending = true;
  p.pump_stdin();
}

std::size_t child_process::stdin_queued() const noexcept {
  return impl_->stdin_buf.size() + impl_->stdin_inflight.size();
}

void child_process::signal_group(int sig) {
  auto& p = *impl_;
  if (p.reaped) return;
  if (p.pty && p.out.is_open()) {
    const pid_t fg = ::tcgetpgrp(p.out.native_handle());
    if (fg > 0) {
      ::kill(-fg, sig);
      return;
    }
  }
  ::kill(-p.pid, sig);
}

void child_process::resize(terminal_size size) {
  if (!impl_->pty || !impl_->out.is_open()) return;
  winsize ws{size.rows, size.cols, 0, 0};
  ::ioctl(impl_->out.native_handle(), TIOCSWINSZ, &ws);
}

void child_process::pause_output() { impl_->paused = true; }

void child_process::resume_output() {
  impl_->paused = false;
  impl_->start_read(1);
  impl_->start_read(2);
}

bool child_process::running() const noexcept { return !impl_->reaped; }

}  // namespace cskit::net
