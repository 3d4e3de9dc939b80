#include "service/exec.hpp"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <spdlog/spdlog.h>
#include <stdexcept>

#include "net/connection.hpp"
#include "proto/messages.hpp"

namespace cskit::service {

using proto::errc;
using proto::json;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t output_high = 1 << 20;  // pause the command above this much queued output
constexpr std::size_t output_low = 256 << 10; // and resume below this

struct signal_name {
  const char* name;
  int number;
};
constexpr signal_name signal_names[] = {{"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
                                        {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"CONT", SIGCONT},
                                        {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"WINCH", SIGWINCH}};

bool valid_env_name(const std::string& k) {
  if (k.empty() || !(std::isalpha(static_cast<unsigned char>(k[0])) || k[0] == '_')) return false;
  for (char c : k) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
  }
  return true;
}

bool has_nul(const std::string& s) { return s.find('\0') != std::string::npos; }

std::optional<std::string> canonical_executable(const std::string& path) {
  std::error_code ec;
  auto c = fs::canonical(path, ec);
  if (ec) return std::nullopt;
  struct stat st {};
  if (::stat(c.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || ::access(c.c_str(), X_OK) != 0) return std::nullopt;
  return c.string();
}

std::optional<std::string> search_path(const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos) return canonical_executable(name);
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    if (!dir.empty()) {
      if (auto c = canonical_executable(dir + "/" + name)) return c;
    }
    start = end + 1;
  }
  return std::nullopt;
}

// What a shell exits with for a program it cannot run: 126 when something
// by that name is there but cannot be executed, 127 when nothing is.
int missing_program_status(const std::string& name, const std::string& path) {
  std::error_code ec;
  if (name.find('/') != std::string::npos) return fs::exists(name, ec) ? 126 : 127;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    if (end > start && fs::exists(path.substr(start, end - start) + "/" + name, ec)) return 126;
    start = end + 1;
  }
  return 127;
}

std::string status_text(const net::exit_status& st) {
  if (st.exited) return "exit " + std::to_string(st.code);
  std::string s = "signal " + std::to_string(st.signal);
  if (st.core_dumped) s += " (core dumped)";
  return s;
}

}  // namespace

int signal_from_name(const std::string& name) noexcept {
  std::string n = name.rfind("SIG", 0) == 0 ? name.substr(3) : name;
  for (const auto& s : signal_names) {
    if (n == s.name) return s.number;
  }
  return 0;
}

// ------------------------------------------------------------- policy

exec_policy exec_policy::resolve(const exec_options& o) {
  exec_policy p;
  p.options = o;
  const bool root = ::geteuid() == 0;
  std::string account = o.run_as;
  if (root && account.empty()) account = "nobody";
  if (!account.empty()) {
    passwd pw{}, *res = nullptr;
    std::vector<char> buf(16384);
    if (::getpwnam_r(account.c_str(), &pw, buf.data(), buf.size(), &res) != 0 || !res) {
      throw std::runtime_error("[exec] run_as: no such user '" + account + "'");
    }
    if (!root && res->pw_uid != ::geteuid()) {
      throw std::runtime_error("[exec] run_as = '" + account + "' needs the server to run as root");
    }
    if (root && res->pw_uid == 0) {
      throw std::runtime_error("[exec] run_as must be an unprivileged account, not '" + account + "'");
    }
    p.account = res->pw_name;
    p.home = res->pw_dir ? res->pw_dir : "/";
    if (root) {
      p.uid = res->pw_uid;
      p.gid = res->pw_gid;
      int n = 64;
      std::vector<gid_t> groups(static_cast<std::size_t>(n));
      if (::getgrouplist(res->pw_name, res->pw_gid, groups.data(), &n) < 0) {
        groups.resize(static_cast<std::size_t>(n));
        ::getgrouplist(res->pw_name, res->pw_gid, groups.data(), &n);
      }
      groups.resize(static_cast<std::size_t>(std::max(n, 0)));
      p.groups = groups;
    }
  } else {
    passwd pw{}, *res = nullptr;
    std::vector<char> buf(16384);
    if (::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &res) == 0 && res) {
      p.account = res->pw_name;
      p.home = res->pw_dir ? res->pw_dir : "/";
    } else {
      p.account = std::to_string(::geteuid());
      p.home = "/";
    }
  }
  std::error_code ec;
  if (!fs::is_directory(p.home, ec)) p.home = "/";  // e.g. nobody's /nonexistent
  for (const auto& prog : o.programs) {
    auto c = search_path(prog, o.path);
    if (!c) throw std::runtime_error("[exec] programs: '" + prog + "' is not an executable file (searched " + o.path + ")");
    p.allowed.push_back(*c);
  }
  if (o.allow_shell && !canonical_executable(o.shell)) {
    throw std::runtime_error("[exec] shell: '" + o.shell + "' is not an executable file");
  }
  return p;
}

std::optional<std::string> exec_policy::program_for(const std::string& name, std::string& error, bool* by_policy) const {
  if (by_policy) *by_policy = false;
  if (name.find('/') != std::string::npos && name[0] != '/') {
    error = "give a program name (searched in the server's PATH) or an absolute path, not '" + name + "'";
    return std::nullopt;
  }
  auto c = search_path(name, options.path);
  if (!c) {
    // With an allow-list, a name that is not found is not probed further
    // (126 against 127 would tell which files exist but cannot run).
    error = allowed.empty() && missing_program_status(name, options.path) == 126
                ? "'" + name + "' cannot be executed (not an executable file)"
                : "no such program: '" + name + "'";
    return std::nullopt;
  }
  if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), *c) == allowed.end()) {
    if (by_policy) *by_policy = true;
    error = "'" + name + "' is not on the server's list of allowed programs";
    return std::nullopt;
  }
  return c;
}

bool exec_policy::env_allowed(const std::string& key) const {
  for (const auto& pat : options.env_allow) {
    if (!pat.empty() && pat.back() == '*') {
      if (key.rfind(pat.substr(0, pat.size() - 1), 0) == 0) return true;
    } else if (key == pat) {
      return true;
    }
  }
  return false;
}

// ------------------------------------------------------------- limiter

bool exec_limiter::try_acquire(const std::string& user, std::string& why) {
  std::lock_guard lock(m_);
  if (total_ >= total_max_) {
    why = "the server is running its maximum of " + std::to_string(total_max_) + " commands";
    return false;
  }
  auto& n = per_user_[user];
  if (n >= user_max_) {
    why = "user '" + user + "' is running the maximum of " + std::to_string(user_max_) + " commands";
    return false;
  }
  ++n;
  ++total_;
  return true;
}

void exec_limiter::set_limits(std::size_t max_concurrent, std::size_t max_concurrent_per_user) {
  std::lock_guard lock(m_);
  total_max_ = max_concurrent;
  user_max_ = max_concurrent_per_user;
}

void exec_limiter::release(const std::string& user) {
  std::lock_guard lock(m_);
  --total_;
  auto it = per_user_.find(user);
  if (it != per_user_.end() && --it->second == 0) per_user_.erase(it);
}

// ------------------------------------------------------------- sessions

struct exec_sessions::running {
  std::shared_ptr<net::child_process> proc;
  std::string argv_text;
  std::chrono::steady_clock::time_point started;
  std::uint64_t bytes_out = 0;
  bool waiting_for_drain = false;
  int interrupts = 0;
};

exec_sessions::exec_sessions(const exec_policy& policy, exec_limiter& limiter, net::connection& conn,
                             std::string user)
    : policy_(policy), limiter_(limiter), conn_(conn), user_(std::move(user)) {}

exec_sessions::~exec_sessions() {
  for (auto& [id, r] : running_) {
    spdlog::info("exec user={} peer={} argv={} killed: connection closed after {:.3f} s, {} bytes out", user_,
                 conn_.peer(), r->argv_text,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - r->started).count(), r->bytes_out);
    r->proc.reset();  // kills the group
    limiter_.release(user_);
  }
}

void exec_sessions::error(std::uint64_t id, errc code, const std::string& message) {
  conn_.send(proto::make_error(code, message, id));
}

void exec_sessions::not_started(std::uint64_t id, const std::string& message, int shell_status) {
  json e = proto::make_error(errc::spawn_failed, message, id);
  if (shell_status != 0) e["exit_code"] = shell_status;
  conn_.send(e);
}

void exec_sessions::start(std::uint64_t id, const json& h) {
  if (!policy_.options.enabled) {
    error(id, errc::not_allowed, "remote execution is disabled on this server (its config needs [exec] enabled = true)");
    return;
  }
  if (running_.count(id)) {
    error(id, errc::bad_request, "a command with this id is already running");
    return;
  }
  // Each step answers the request itself when it refuses it.
  net::spawn_request req;
  if (!set_command(id, h, req) || !set_directory(id, h, req) || !set_environment(id, h, req) ||
      !set_wall_time(id, h, req)) {
    return;
  }
  launch(id, std::move(req));
}

bool exec_sessions::set_command(std::uint64_t id, const json& h, net::spawn_request& req) {
  const auto& o = policy_.options;
  req.uid = policy_.uid;
  req.gid = policy_.gid;
  req.groups = policy_.groups;
  req.cpu_seconds = o.cpu_seconds;
  req.memory_bytes = o.memory_bytes;
  req.max_processes = o.max_processes;
  req.stdin_null = !h.value("stdin", true);
  if (auto it = h.find("shell"); it != h.end()) {
    if (!it->is_string() || it->get_ref<const std::string&>().empty() || h.contains("argv")) {
      error(id, errc::bad_request, "exec: \"shell\" must be a non-empty string, without \"argv\"");
      return false;
    }
    if (!o.allow_shell) {
      error(id, errc::not_allowed, "this server does not run shell command lines (its config needs [exec] allow_shell = true)");
      return false;
    }
    if (has_nul(it->get_ref<const std::string&>())) {
      error(id, errc::bad_request, "the command line contains a NUL byte");
      return false;
    }
    req.program = *canonical_executable(o.shell);
    req.argv = {o.shell, "-c", it->get<std::string>()};
    return true;
  }
  return set_argv(id, h, req);
}

bool exec_sessions::set_argv(std::uint64_t id, const json& h, net::spawn_request& req) {
  auto a = h.find("argv");
  if (a == h.end() || !a->is_array() || a->empty() || a->size() > 4096) {
    error(id, errc::bad_request, "exec needs \"argv\": a non-empty array of strings (at most 4096)");
    return false;
  }
  std::size_t total = 0;
  for (const auto& x : *a) {
    if (!x.is_string() || has_nul(x.get_ref<const std::string&>())) {
      error(id, errc::bad_request, "every argv element must be a string without NUL bytes");
      return false;
    }
    total += x.get_ref<const std::string&>().size() + 1;
    req.argv.push_back(x.get<std::string>());
  }
  const std::string& name = req.argv[0];
  if (total > 1 << 20 || name.empty()) {
    error(id, errc::bad_request, "argv is empty or larger than 1 MiB");
    return false;
  }
  std::string why;
  bool by_policy = false;
  auto p = policy_.program_for(name, why, &by_policy);
  if (p) {
    req.program = *p;
    return true;
  }
  if (by_policy) {
    error(id, errc::not_allowed, why);
  } else if (name.find('/') != std::string::npos && name[0] != '/') {
    error(id, errc::spawn_failed, why);  // a relative path: refused, not looked for
  } else {
    const bool probe = policy_.allowed.empty();
    not_started(id, why, probe ? missing_program_status(name, policy_.options.path) : 127);
  }
  return false;
}

bool exec_sessions::set_directory(std::uint64_t id, const json& h, net::spawn_request& req) {
  // The request's (absolute, or relative to the default).
  const auto& o = policy_.options;
  req.cwd = o.cwd.empty() ? policy_.home : o.cwd;
  if (auto c = h.find("cwd"); c != h.end()) {
    if (!c->is_string() || has_nul(c->get_ref<const std::string&>())) {
      error(id, errc::bad_request, "\"cwd\" must be a string");
      return false;
    }
    const auto& want = c->get_ref<const std::string&>();
    req.cwd = !want.empty() && want[0] == '/' ? want : req.cwd + "/" + want;
  }
  return true;
}

bool exec_sessions::set_environment(std::uint64_t id, const json& h, net::spawn_request& req) {
  // A fixed base plus what the client asked for and may set.
  const auto& o = policy_.options;
  std::map<std::string, std::string> env{{"PATH", o.path},   {"HOME", policy_.home}, {"USER", policy_.account},
                                         {"LOGNAME", policy_.account}, {"SHELL", o.shell}, {"LANG", "C.UTF-8"}};
  if (auto e = h.find("env"); e != h.end()) {
    if (!e->is_object() || e->size() > 256) {
      error(id, errc::bad_request, "\"env\" must be an object of at most 256 string values");
      return false;
    }
    for (const auto& [k, v] : e->items()) {
      if (!v.is_string() || !valid_env_name(k) || has_nul(v.get_ref<const std::string&>()) ||
          v.get_ref<const std::string&>().size() > 65536) {
        error(id, errc::bad_request, "invalid environment variable '" + k + "'");
        return false;
      }
      if (!policy_.env_allowed(k)) {
        error(id, errc::not_allowed, "the server does not let clients set " + k + " (see [exec] env_allow)");
        return false;
      }
      env[k] = v.get<std::string>();
    }
  }
  if (auto t = h.find("tty"); t != h.end()) {
    if (!t->is_object()) {
      error(id, errc::bad_request, "\"tty\" must be an object {rows, cols, term}");
      return false;
    }
    net::terminal_size size;
    size.rows = static_cast<std::uint16_t>(std::clamp<int>(t->value("rows", 24), 1, 10000));
    size.cols = static_cast<std::uint16_t>(std::clamp<int>(t->value("cols", 80), 1, 10000));
    req.pty = size;
    std::string term = t->value("term", std::string("xterm-256color"));
    bool ok = !term.empty() && term.size() < 64;
    for (char c : term) ok &= std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    env["TERM"] = ok ? term : "xterm-256color";
  }
  for (auto& [k, v] : env) req.env.push_back(k + "=" + v);
  return true;
}

bool exec_sessions::set_wall_time(std::uint64_t id, const json& h, net::spawn_request& req) {
  const std::chrono::seconds wall = policy_.options.max_wall_time;
  req.wall_time = wall;
  if (auto t = h.find("timeout"); t != h.end()) {
    if (!t->is_number() || t->get<double>() <= 0) {
      error(id, errc::bad_request, "\"timeout\" must be a positive number of seconds");
      return false;
    }
    auto asked = std::chrono::milliseconds(static_cast<std::int64_t>(std::min(t->get<double>(), 1e9) * 1000));
    req.wall_time = wall.count() ? std::min<std::chrono::milliseconds>(asked, wall) : asked;
  }
  return true;
}

net::child_process::callbacks exec_sessions::callbacks_for(std::uint64_t id, running* rp) {
  net::child_process::callbacks cb;
  cb.on_output = [this, id, rp](int fd, std::string_view data) {
    rp->bytes_out += data.size();
    conn_.touch();
    conn_.send({{"type", proto::type::exec_output}, {"id", id}, {"fd", fd}}, data);
    if (!rp->waiting_for_drain && conn_.queued_bytes() > output_high && rp->proc) {
      // The client reads slower than the command writes: stop reading the
      // command (it blocks on its full pipe) until the queue drains.
      rp->waiting_for_drain = true;
      rp->proc->pause_output();
      conn_.when_queue_below(output_low, [this, id] {
        auto it = running_.find(id);
        if (it == running_.end()) return;
        it->second->waiting_for_drain = false;
        it->second->proc->resume_output();
      });
    }
  };
  cb.on_stdin_consumed = [this, id](std::size_t n) {
    conn_.send({{"type", proto::type::exec_ack}, {"id", id}, {"bytes", n}});
  };
  cb.on_exit = [this, id](const net::exit_status& st) { finish(id, st); };
  return cb;
}

void exec_sessions::launch(std::uint64_t id, net::spawn_request req) {
  std::string why;
  if (!limiter_.try_acquire(user_, why)) {
    error(id, errc::busy, why);
    return;
  }
  auto r = std::make_unique<running>();
  r->argv_text = json(req.argv).dump();
  r->started = std::chrono::steady_clock::now();
  std::string spawn_error;
  int shell_status = 0;
  auto proc = net::child_process::spawn(conn_.executor(), req, callbacks_for(id, r.get()), spawn_error, &shell_status);
  if (!proc) {
    limiter_.release(user_);
    spdlog::info("exec user={} peer={} argv={} not started: {}", user_, conn_.peer(), r->argv_text, spawn_error);
    not_started(id, spawn_error, shell_status);
    return;
  }
  r->proc = std::move(proc);
  const pid_t pid = r->proc->pid();
  running_.emplace(id, std::move(r));
  conn_.send({{"type", proto::type::exec_started},
              {"id", id},
              {"pid", pid},
              {"stdin_window", stdin_window},
              {"account", policy_.account}});
}

void exec_sessions::finish(std::uint64_t id, const net::exit_status& st) {
  auto it = running_.find(id);
  if (it == running_.end()) return;
  auto& r = *it->second;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - r.started).count();
  json j = {{"type", proto::type::exec_exit}, {"id", id}, {"duration", secs}, {"bytes_out", r.bytes_out},
            {"timed_out", st.timed_out}};
  if (st.exited) {
    j["exit_code"] = st.code;
  } else {
    j["signal"] = st.signal;
    j["core_dumped"] = st.core_dumped;
  }
  conn_.send(j);
  spdlog::info("exec user={} peer={} argv={} {}{} duration={:.3f}s bytes_out={}", user_, conn_.peer(), r.argv_text,
               status_text(st), st.timed_out ? " (timed out)" : "", secs, r.bytes_out);
  limiter_.release(user_);
  running_.erase(it);  // the process is reaped; nothing left to kill
}

void exec_sessions::stdin_data(std::uint64_t id, std::string_view data, bool eof) {
  auto it = running_.find(id);
  if (it == running_.end()) return;  // finished already: input that raced the exit
  auto& p = *it->second->proc;
  if (p.stdin_queued() + data.size() > 4 * stdin_window) {
    error(id, errc::bad_request, "stdin sent beyond the window the server granted");
    it->second->proc->signal_group(SIGKILL);
    return;
  }
  if (!data.empty()) p.write_stdin(data);
  if (eof) p.close_stdin();
}

void exec_sessions::signal(std::uint64_t id, const std::string& name) {
  auto it = running_.find(id);
  if (it == running_.end()) return;
  const int sig = signal_from_name(name);
  if (!sig) {
    error(id, errc::bad_request, "unknown signal '" + name + "'");
    return;
  }
  it->second->proc->signal_group(sig);
}

void exec_sessions::resize(std::uint64_t id, const json& h) {
  auto it = running_.find(id);
  if (it == running_.end()) return;
  net::terminal_size size;
  size.rows = static_cast<std::uint16_t>(std::clamp<int>(h.value("rows", 24), 1, 10000));
  size.cols = static_cast<std::uint16_t>(std::clamp<int>(h.value("cols", 80), 1, 10000));
  it->second->proc->resize(size);
}

}  // namespace cskit::service
