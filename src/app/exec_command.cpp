// `cskit exec`: run a command on one host (live streams, stdin, signals,
// optional terminal) or on several at once (fan-out, prefixed lines).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "app/cli_options.hpp"
#include "app/command_table.hpp"
#include "app/commands.hpp"
#include "proto/messages.hpp"

namespace cskit::app {

using proto::json;

namespace {

constexpr int own_error = 255;  // like ssh: the client's own failures

// The server could not start the program: the status a shell would exit
// with (127: no such program, 126: it cannot be executed), as ssh returns.
struct not_started : std::runtime_error {
  not_started(const std::string& what, int status) : std::runtime_error(what), status(status) {}
  int status;
};

[[noreturn]] void throw_error_frame(const proto::frame& f) {
  const auto code = f.header.find("exit_code");
  if (f.header.value("code", std::string()) == "spawn_failed" && code != f.header.end() && code->is_number_integer()) {
    const int status = code->get<int>();
    if (status == 126 || status == 127) throw not_started(f.header.value("message", std::string("cannot run")), status);
  }
  throw client::error_from_frame(f);
}
constexpr auto keepalive = std::chrono::seconds(15);

struct remote_status {
  bool finished = false;
  std::optional<int> exit_code;
  int error_status = own_error;  // when the command did not run: 126, 127, or own_error
  int signal = 0;
  bool core_dumped = false;
  bool timed_out = false;
  double duration = 0;
  std::uint64_t bytes_out = 0;

  int local_exit_code() const {
    if (exit_code) return *exit_code;
    if (signal) return 128 + signal;
    return own_error;
  }
  json to_json(const std::string& host) const {
    json j = {{"host", host}, {"duration", duration}, {"bytes_out", bytes_out}, {"timed_out", timed_out}};
    if (exit_code) j["exit_code"] = *exit_code;
    if (signal) {
      j["signal"] = signal;
      j["core_dumped"] = core_dumped;
    }
    j["status"] = local_exit_code();
    return j;
  }
  std::string text() const {
    std::string s = exit_code ? "exit " + std::to_string(*exit_code)
                              : "killed by signal " + std::to_string(signal) + (core_dumped ? " (core dumped)" : "");
    if (timed_out) s += ", timed out";
    return s;
  }
};

void read_exit(const proto::frame& f, remote_status& st) {
  const auto& h = f.header;
  st.finished = true;
  if (h.contains("exit_code")) st.exit_code = h.at("exit_code").get<int>();
  st.signal = h.value("signal", 0);
  st.core_dumped = h.value("core_dumped", false);
  st.timed_out = h.value("timed_out", false);
  st.duration = h.value("duration", 0.0);
  st.bytes_out = h.value("bytes_out", std::uint64_t{0});
}

json exec_request(const exec_options& o, bool with_stdin, std::optional<net::terminal_size> tty) {
  json req = {{"type", proto::type::exec}, {"stdin", with_stdin}};
  if (!o.shell.empty()) {
    req["shell"] = o.shell;
  } else {
    req["argv"] = o.command;
  }
  if (!o.cwd.empty()) req["cwd"] = o.cwd;
  if (o.timeout > 0) req["timeout"] = o.timeout;
  if (!o.env.empty()) {
    json env = json::object();
    for (const auto& kv : o.env) {
      auto eq = kv.find('=');
      env[kv.substr(0, eq)] = eq == std::string::npos ? "" : kv.substr(eq + 1);
    }
    req["env"] = env;
  }
  if (tty) {
    const char* term = std::getenv("TERM");
    req["tty"] = {{"rows", tty->rows}, {"cols", tty->cols}, {"term", term && *term ? term : "xterm-256color"}};
  }
  return req;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
      continue;
    }
    return false;  // EPIPE and friends: the reader is gone
  }
  return true;
}

std::optional<net::terminal_size> local_terminal_size() {
  winsize ws{};
  for (int fd : {STDIN_FILENO, STDOUT_FILENO}) {
    if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
      return net::terminal_size{ws.ws_row, ws.ws_col};
    }
  }
  return std::nullopt;
}

// ------------------------------------------------------------ signals

int signal_pipe[2] = {-1, -1};
extern "C" void forward_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  ssize_t ignored = ::write(signal_pipe[1], &b, 1);
  (void)ignored;
  errno = saved;
}

void install_signal_pipe() {
  if (::pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return;
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH}) ::sigaction(s, &sa, nullptr);
}

// ------------------------------------------------------------ raw terminal

struct raw_terminal {
  bool active = false;
  termios saved{};
  static raw_terminal* current;

  void enter() {
    if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved) != 0) return;
    termios raw = saved;
    ::cfmakeraw(&raw);
    if (::tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) == 0) {
      active = true;
      current = this;
      std::atexit([] {
        if (current) current->leave();
      });
    }
  }
  void leave() {
    if (current == this) current = nullptr;  // the atexit hook must not reach a dead object
    if (!active) return;
    ::tcsetattr(STDIN_FILENO, TCSADRAIN, &saved);
    active = false;
  }
  ~raw_terminal() { leave(); }
};
raw_terminal* raw_terminal::current = nullptr;

// ------------------------------------------------------------ one host, interactive

// The client's side of one running command: remote output to stdout and
// stderr, local stdin (within the server's window) and signals to the
// command, a keepalive while nothing else is sent; until exec.exit.
class command_pump {
 public:
  command_pump(client::connection& conn, std::uint64_t id, std::size_t credit, bool want_stdin, bool tty)
      : conn_(conn), id_(id), credit_(credit), stdin_open_(want_stdin), tty_(tty) {}

  void run(remote_status& st) {
    while (!st.finished) {
      // stdin is polled only while the server grants window: POLLHUP would
      // be reported even with no events asked for.
      const bool poll_stdin = stdin_open_ && credit_ > 0;
      pollfd fds[3] = {{conn_.native_handle(), POLLIN, 0}, {signal_pipe[0], POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
      const int n = ::poll(fds, poll_stdin ? 3 : 2, 1000);
      if (n < 0 && errno != EINTR) throw client::client_error(client::failure::connect, std::strerror(errno));
      // Remote output first: it is what keeps the server's queue moving.
      receive(st);
      if (st.finished) break;
      if (fds[1].revents & POLLIN) forward_signals();
      if (poll_stdin && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) forward_stdin();
      if (std::chrono::steady_clock::now() - last_send_ > keepalive) {
        conn_.send({{"type", proto::type::ping}});  // proves we are alive to the server's idle deadline
        last_send_ = std::chrono::steady_clock::now();
      }
    }
  }

 private:
  // Output bodies go from the receive buffer to stdout/stderr as they
  // arrive, never assembled into a frame first.
  bool stream_output(const json& h) {
    out_fd_ = -1;  // -1: not ours
    if (h.value("type", "") != proto::type::exec_output || h.value("id", std::uint64_t{0}) != id_) return false;
    out_fd_ = h.value("fd", 1) == 2 ? STDERR_FILENO : STDOUT_FILENO;
    return true;
  }
  void write_output(std::string_view part) {
    if (out_fd_ == STDERR_FILENO) {
      if (stderr_ok_) stderr_ok_ = write_all(STDERR_FILENO, part);
    } else if (out_fd_ == STDOUT_FILENO && stdout_ok_) {
      stdout_ok_ = write_all(STDOUT_FILENO, part);
    }
  }

  // Everything the server has sent so far.
  void receive(remote_status& st) {
    auto starts = [this](const json& h) { return stream_output(h); };
    auto part = [this](std::string_view p) { write_output(p); };
    while (auto f = conn_.try_receive_streamed(starts, part)) {
      if (f->id() != id_) continue;
      const auto type = f->type();
      if (type == proto::type::exec_output) {
        if (!f->body.empty()) {  // (a body that was not streamed)
          out_fd_ = f->header.value("fd", 1) == 2 ? STDERR_FILENO : STDOUT_FILENO;
          write_output(f->body);
        }
      } else if (type == proto::type::exec_ack) {
        credit_ += f->header.value("bytes", std::size_t{0});
      } else if (type == proto::type::exec_exit) {
        read_exit(*f, st);
        return;
      } else if (type == proto::type::error) {
        throw_error_frame(*f);
      }
    }
  }

  void forward_signals() {
    unsigned char sigs[16];
    const ssize_t k = ::read(signal_pipe[0], sigs, sizeof sigs);
    for (ssize_t i = 0; i < k; ++i) {
      if (sigs[i] == SIGWINCH) {
        if (auto size = local_terminal_size(); size && tty_) {
          conn_.send({{"type", proto::type::exec_resize}, {"id", id_}, {"rows", size->rows}, {"cols", size->cols}});
        }
      } else if (sigs[i] == SIGINT) {
        // First Ctrl-C interrupts the remote command, the second kills it.
        conn_.send({{"type", proto::type::exec_signal}, {"id", id_}, {"signal", ++interrupts_ > 1 ? "KILL" : "INT"}});
      } else {
        conn_.send({{"type", proto::type::exec_signal},
                    {"id", id_},
                    {"signal", sigs[i] == SIGHUP ? "HUP" : sigs[i] == SIGQUIT ? "QUIT" : "TERM"}});
      }
      last_send_ = std::chrono::steady_clock::now();
    }
  }

  void forward_stdin() {
    const std::size_t want = std::min(credit_, buf_size);
    const ssize_t k = ::read(STDIN_FILENO, buf_.get(), want);
    if (k > 0) {
      conn_.send({{"type", proto::type::exec_stdin}, {"id", id_}},
                 std::string_view(buf_.get(), static_cast<std::size_t>(k)));
      credit_ -= static_cast<std::size_t>(k);
    } else if (k == 0 || (errno != EINTR && errno != EAGAIN)) {
      conn_.send({{"type", proto::type::exec_stdin}, {"id", id_}, {"eof", true}});
      stdin_open_ = false;
    }
    last_send_ = std::chrono::steady_clock::now();
  }

  static constexpr std::size_t buf_size = 64 * 1024;
  client::connection& conn_;
  const std::uint64_t id_;
  std::size_t credit_;  // stdin bytes the server will take
  bool stdin_open_;
  const bool tty_;
  bool stdout_ok_ = true, stderr_ok_ = true;
  int interrupts_ = 0;
  int out_fd_ = -1;  // the stream of the exec.output being received
  std::chrono::steady_clock::time_point last_send_ = std::chrono::steady_clock::now();
  // Not zero-filled: clearing it cost 16 page faults in every run of a command.
  std::unique_ptr<char[]> buf_ = std::make_unique_for_overwrite<char[]>(buf_size);
};

// Sends the request; waits for exec.started (or an error, thrown). Returns
// the stdin window the server grants.
std::size_t start_command(client::connection& conn, std::uint64_t id, json req) {
  req["id"] = id;
  conn.send(req);
  for (;;) {
    proto::frame f = conn.receive();
    if (f.id() != id) continue;
    if (f.type() == proto::type::error) throw_error_frame(f);
    if (f.type() == proto::type::exec_started) return f.header.value("stdin_window", std::size_t{0});
  }
}

int run_single(const exec_options& o) {
  const bool want_stdin = !o.no_stdin;
  std::optional<net::terminal_size> tty;
  if (o.tty) tty = local_terminal_size().value_or(net::terminal_size{});
  ::signal(SIGPIPE, SIG_IGN);
  install_signal_pipe();

  remote_status st;
  try {
    auto conn = connect_client(o.common, o.common.host);
    const std::uint64_t id = conn.next_id();
    const std::size_t credit = start_command(conn, id, exec_request(o, want_stdin, tty));
    raw_terminal term;
    if (tty) term.enter();
    command_pump(conn, id, credit, want_stdin, tty.has_value()).run(st);
    term.leave();
    conn.close();
  } catch (const not_started& e) {
    std::fprintf(stderr, "cskit: %s: %s\n", o.common.host.c_str(), e.what());
    if (o.common.json) std::printf("%s\n", json{{"host", o.common.host}, {"error", e.what()}, {"status", e.status}}.dump().c_str());
    return e.status;
  } catch (const std::exception& e) {  // client_error, or a malformed frame from the server
    // On a terminal the line may still be in raw mode: start a fresh line.
    std::fprintf(stderr, "%scskit: %s: %s\n", ::isatty(2) ? "\r\n" : "", o.common.host.c_str(), e.what());
    if (o.common.json) std::printf("%s\n", json{{"host", o.common.host}, {"error", e.what()}}.dump().c_str());
    return own_error;
  }
  if (o.common.json) std::printf("%s\n", st.to_json(o.common.host).dump().c_str());
  if (st.timed_out) std::fprintf(stderr, "cskit: %s: command timed out and was killed\n", o.common.host.c_str());
  return st.local_exit_code();
}

// ------------------------------------------------------------ fan-out

class prefixed_output {
 public:
  prefixed_output(std::mutex& m, std::string host) : m_(m), host_(std::move(host)) {}
  void add(int fd, std::string_view data) {
    auto& pending = fd == 2 ? err_ : out_;
    pending.append(data);
    std::size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      emit(fd, std::string_view(pending).substr(0, nl + 1));
      pending.erase(0, nl + 1);
    }
  }
  void flush() {
    if (!out_.empty()) emit(1, out_ + "\n");
    if (!err_.empty()) emit(2, err_ + "\n");
    out_.clear();
    err_.clear();
  }

 private:
  void emit(int fd, std::string_view line) {
    std::lock_guard lock(m_);
    std::string s = host_ + ": ";
    s.append(line);
    write_all(fd == 2 ? STDERR_FILENO : STDOUT_FILENO, s);
  }
  std::mutex& m_;
  std::string host_;
  std::string out_, err_;
};

remote_status run_on(const exec_options& o, const std::string& host, std::mutex& out_mutex, std::string& error) {
  remote_status st;
  prefixed_output out(out_mutex, host);
  try {
    auto conn = connect_client(o.common, host);
    const std::uint64_t id = conn.next_id();
    json req = exec_request(o, false, std::nullopt);
    req["id"] = id;
    conn.send(req);
    auto last_send = std::chrono::steady_clock::now();
    while (!st.finished) {
      // A command may be silent for long: wait without a deadline, but
      // keep the connection alive for the server's idle timeout.
      pollfd p{conn.native_handle(), POLLIN, 0};
      ::poll(&p, 1, 1000);
      while (auto f = conn.try_receive()) {
        if (f->id() != id) continue;
        const auto type = f->type();
        if (type == proto::type::exec_output) {
          out.add(f->header.value("fd", 1), f->body);
        } else if (type == proto::type::exec_exit) {
          read_exit(*f, st);
          break;
        } else if (type == proto::type::error) {
          throw_error_frame(*f);
        }
      }
      if (std::chrono::steady_clock::now() - last_send > keepalive) {
        conn.send({{"type", proto::type::ping}});
        last_send = std::chrono::steady_clock::now();
      }
    }
    conn.close();
  } catch (const not_started& e) {
    error = e.what();
    st.error_status = e.status;
  } catch (const std::exception& e) {  // client_error, or a malformed frame from the server
    error = e.what();
  }
  out.flush();
  return st;
}

int run_fanout(const exec_options& o, const std::vector<std::string>& hosts) {
  std::mutex out_mutex;
  std::vector<remote_status> results(hosts.size());
  std::vector<std::string> errors(hosts.size());
  std::atomic<std::size_t> next{0};
  const std::size_t width = std::max<std::size_t>(1, std::min<std::size_t>(o.fanout, hosts.size()));
  std::vector<std::thread> workers;
  for (std::size_t w = 0; w < width; ++w) {
    workers.emplace_back([&] {
      for (std::size_t i; (i = next.fetch_add(1)) < hosts.size();) {
        results[i] = run_on(o, hosts[i], out_mutex, errors[i]);
      }
    });
  }
  for (auto& t : workers) t.join();

  int worst = 0;
  json summary = json::array();
  std::string text;
  for (std::size_t i = 0; i < hosts.size(); ++i) {
    const int code = errors[i].empty() ? results[i].local_exit_code() : results[i].error_status;
    worst = std::max(worst, code);
    if (!errors[i].empty()) {
      summary.push_back({{"host", hosts[i]}, {"error", errors[i]}, {"status", code}});
      text += "  " + hosts[i] + ": error: " + errors[i] + "\n";
    } else {
      summary.push_back(results[i].to_json(hosts[i]));
      text += "  " + hosts[i] + ": " + results[i].text() + " (" + std::to_string(results[i].duration).substr(0, 5) +
              " s)\n";
    }
  }
  if (o.common.json) {
    std::printf("%s\n", json{{"hosts", summary}, {"status", worst}}.dump().c_str());
  } else {
    std::fprintf(stderr, "cskit exec: %zu host%s\n%s", hosts.size(), hosts.size() == 1 ? "" : "s", text.c_str());
  }
  return worst;
}

}  // namespace

int run_exec(const exec_options& o) {
  if (o.command.empty() && o.shell.empty()) {
    std::fprintf(stderr, "cskit exec: give a command after HOST, or --shell 'command line'\n");
    return exit_code::usage;
  }
  if (!o.command.empty() && !o.shell.empty()) {
    std::fprintf(stderr, "cskit exec: give either a command or --shell, not both\n");
    return exit_code::usage;
  }
  for (const auto& kv : o.env) {
    if (kv.empty() || kv[0] == '=' || kv.find('=') == std::string::npos) {
      std::fprintf(stderr, "cskit exec: --env wants KEY=VALUE, not '%s'\n", kv.c_str());
      return exit_code::usage;
    }
  }
  std::vector<std::string> hosts;
  if (!o.hosts_file.empty()) {
    std::ifstream in(o.hosts_file);
    if (!in) {
      std::fprintf(stderr, "cskit exec: cannot read %s\n", o.hosts_file.c_str());
      return exit_code::usage;
    }
    for (std::string line; std::getline(in, line);) {
      line.erase(0, line.find_first_not_of(" \t\r"));
      line.erase(line.find_last_not_of(" \t\r") + 1);
      if (!line.empty() && line[0] != '#') hosts.push_back(line);
    }
  } else {
    std::size_t start = 0;
    while (start <= o.common.host.size()) {
      auto comma = o.common.host.find(',', start);
      if (comma == std::string::npos) comma = o.common.host.size();
      if (comma > start) hosts.push_back(o.common.host.substr(start, comma - start));
      start = comma + 1;
    }
  }
  if (hosts.empty()) {
    std::fprintf(stderr, "cskit exec: no host given\n");
    return exit_code::usage;
  }
  if (hosts.size() == 1 && o.hosts_file.empty()) return run_single(o);
  if (o.tty) {
    std::fprintf(stderr, "cskit exec: -t works with one host only\n");
    return exit_code::usage;
  }
  return run_fanout(o, hosts);
}

// ------------------------------------------------------------ the command line

namespace {

struct exec_state {
  exec_options o;
  std::string host_word;  // HOST[,HOST...]; with --hosts, the command's first word
};

// As ssh: options, HOST, then the command from the first word that is not
// an option of exec (CLI11 leaves it and the rest unparsed), and anything
// after `--` verbatim.
int run_exec_command(exec_state& s, const CLI::App& cmd, const command_args& args) {
  auto& e = s.o;
  std::vector<std::string> words = cmd.remaining();
  // No program name starts with '-': that word is an option exec does not
  // know (CLI11 stopped at it), not the command.
  if (!words.empty() && words.front().size() > 1 && words.front()[0] == '-') {
    std::fprintf(stderr, "cskit exec: unknown option '%s' (cskit help exec; a command's own options go after it)\n",
                 words.front().c_str());
    return exit_code::usage;
  }
  // A `--` after the command's first word is the command's own (rm -- -f).
  const bool command_started = !words.empty() || (!e.hosts_file.empty() && !s.host_word.empty());
  if (args.had_dashes && command_started) words.emplace_back("--");
  words.insert(words.end(), args.after_dashes.begin(), args.after_dashes.end());
  if (!e.hosts_file.empty()) {
    if (!s.host_word.empty()) words.insert(words.begin(), s.host_word);
  } else if (s.host_word.empty()) {
    std::fprintf(stderr, "cskit exec: missing HOST; usage: cskit exec [options] HOST[,HOST...] CMD [ARG...]\n");
    return exit_code::usage;
  } else {
    e.common.host = s.host_word;
  }
  e.command = std::move(words);
  e.common.timeout = 30;
  return run_exec(e);
}

command_runner build_exec(CLI::App& cmd, const command_args& args) {
  auto s = std::make_shared<exec_state>();
  auto& e = s->o;
  // With --hosts (given first) there is no HOST: the word is refused as
  // HOST, so that CLI11 stops there and the command begins with it.
  exec_options& opts = s->o;
  cmd.add_option("HOST", s->host_word, "HOST[,HOST...] (none with --hosts); the command follows it")
      ->check(CLI::Validator(
          [&opts](std::string&) { return opts.hosts_file.empty() ? std::string() : std::string("--hosts names the hosts"); },
          "", "not with --hosts"));
  cmd.validate_positionals();
  cmd.add_flag("-t,--tty", e.tty, "Run the command on a terminal (interactive programs; one host only)");
  cmd.add_flag("-n,--no-stdin", e.no_stdin, "Give the command /dev/null as stdin");
  cmd.add_option("--timeout", e.timeout, "Kill the command (its whole process group) after SECONDS")
      ->check(CLI::Range(0.001, 1e9));
  cmd.add_option("--cwd", e.cwd, "Working directory on the server");
  cmd.add_option("--env", e.env, "KEY=VALUE for the command (the server decides which keys are allowed; repeat it)")
      ->allow_extra_args(false);  // one value each: the words after it are HOST and the command
  cmd.add_option("--shell", e.shell, "A command line for the server's shell (only where its policy allows)");
  cmd.add_option("--hosts", e.hosts_file, "File with one HOST[:PORT] per line (fan-out); then the command, no HOST")
      ->trigger_on_parse();
  cmd.add_option("-f,--fanout", e.fanout, "Hosts run at once in fan-out (default 32)")->check(CLI::Range(1, 4096));
  cmd.add_option("--user,-u", e.common.user, "User name (default: CSKIT_USER, client config, or admin)");
  cmd.add_option("--token", e.common.token, "Token (default: CSKIT_TOKEN, then the client config)");
  cmd.add_option("--client-config", e.common.client_config, "Client config file");
  cmd.add_option("--connect-timeout", e.common.connect_timeout, "Seconds to wait for the connection")
      ->check(CLI::Range(0.1, 3600.0));
  cmd.add_flag("--json", e.common.json, "After the output, print the exit status as one JSON line");
  add_trust_options(cmd, e.common);
  // The command's own options (ls -l) are not exec's: parsing stops at
  // the first word after HOST that is not an option of exec.
  cmd.prefix_command();
  cmd.footer(R"(The command starts at the first word after HOST that is not an option of exec, as with ssh
  (cskit exec HOST ls -l); after `--` every word is the command's, even one like --json.
  It runs without a shell; --shell 'a | b' asks for one where the server allows it.
Exit status: the remote command's exit code, 128+N when it was killed by signal N,
  127 when the program does not exist, 126 when it cannot be executed,
  255 when cskit itself failed (cannot connect, not allowed, ...). Fan-out: the largest of them.
  Without -t, Ctrl-C sends SIGINT to the remote process group; a second Ctrl-C kills it.
Remote execution is off unless the server enables it and grants the user the exec
  permission (cskit help serve).)");
  return [s, &cmd, &args] { return run_exec_command(*s, cmd, args); };
}

const command_registration exec_registration{{
    .name = "exec",
    .summary = "Run a command on one or more servers, as ssh does",
    .usage = "[-t] [-n] [--timeout SECONDS] HOST[,HOST...] CMD [ARG...]",
    .order = 60,
    .build = build_exec,
    .words_after_dashes = true,
}};

}  // namespace

}  // namespace cskit::app
