// `cskit put`, `get`, `ls`, `stat`, `mkdir`, `rm`, `mv`.
#include <sys/ioctl.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <memory>

#include "app/cli_options.hpp"
#include "app/command_table.hpp"
#include "app/commands.hpp"
#include "client/files.hpp"
#include "util/human.hpp"
#include "util/rounding.hpp"

namespace cskit::app {

using proto::errc;
using proto::json;

int exit_code_for(errc e) noexcept {
  switch (e) {
    case errc::no_space: return exit_code::no_space;
    case errc::quota_exceeded: return exit_code::quota;
    case errc::integrity: return exit_code::integrity;
    case errc::changed: return exit_code::changed;
    case errc::not_found: return exit_code::not_found;
    case errc::exists: return exit_code::exists;
    case errc::not_empty: return exit_code::not_empty;
    case errc::permission_denied: return exit_code::permission;
    case errc::auth_failed: return exit_code::auth;
    default: return exit_code::remote;
  }
}

namespace {

// An error found here: the classes that mean the same on both sides (disk
// full, not found, exists, permission, changed) keep their codes; any
// other is a local failure (1), never "the server reported an error".
int local_exit_code(errc e) noexcept {
  const int rc = exit_code_for(e);
  return rc == exit_code::remote ? exit_code::failure : rc;
}

struct remote_spec {
  std::string host;  // HOST or HOST:PORT, for connect_client
  std::string path;
  bool port_given = false;  // HOST:PORT:PATH
};

// HOST:PATH, HOST:PORT:PATH, [V6]:PATH, [V6]:PORT:PATH. nullopt: not remote.
std::optional<remote_spec> parse_remote(const std::string& s) {
  std::size_t host_end;
  if (!s.empty() && s.front() == '[') {
    host_end = s.find(']');
    if (host_end == std::string::npos || host_end + 1 >= s.size() || s[host_end + 1] != ':') return std::nullopt;
    ++host_end;
  } else {
    host_end = s.find(':');
    if (host_end == std::string::npos || host_end == 0) return std::nullopt;
    if (s.find('/') < host_end) return std::nullopt;  // a local path with a colon in it
  }
  remote_spec r;
  r.host = s.substr(0, host_end);
  std::string rest = s.substr(host_end + 1);
  auto colon = rest.find(':');
  if (colon != std::string::npos && colon > 0 && colon <= 5 &&
      rest.find_first_not_of("0123456789") == colon) {
    r.host += ":" + rest.substr(0, colon);
    r.port_given = true;
    rest = rest.substr(colon + 1);
  }
  r.path = rest;
  return r;
}

bool all_digits(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

// Applies -P and the rules a remote argument must pass before anything
// connects; returns why it is refused, or "" with `r` ready to use.
std::string check_remote(remote_spec& r, const std::string& arg, unsigned port) {
  // HOST:17701 names a file "17701" at the default port, which is rarely
  // what was meant: an explicit port (HOST:PORT:PATH or -P) settles it.
  if (!r.port_given && port == 0 && all_digits(r.path) && r.path.size() <= 5) {
    return "'" + arg + "' would name a file '" + r.path + "' on " + r.host + " at the default port " +
           std::to_string(proto::default_port) + ". For port " + r.path + " write " + arg +
           ": (the share's root) or -P " + r.path + "; for a file of that name, " + r.host + ":./" + r.path;
  }
  while (r.path.starts_with("./")) r.path.erase(0, 2);  // HOST:./NAME, as scp takes it
  if (r.path == ".") r.path.clear();
  if (port == 0) return {};
  if (!r.port_given) {
    r.host += ":" + std::to_string(port);
    r.port_given = true;
    return {};
  }
  const std::string given = r.host.substr(r.host.rfind(':') + 1);
  if (std::stoul(given) != port) {
    return "'" + arg + "' names port " + given + " and -P names port " + std::to_string(port);
  }
  return {};
}

using util::human_bytes;

// Shows only what a terminal can show harmlessly.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  return out;
}

// Terminal columns a string takes, roughly: a character beyond ASCII may be
// wide (CJK), so it counts as two; better cut a name too short than wrap.
std::size_t columns(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s) {
    if (c < 0x80) ++n;
    else if (c >= 0xc0) n += 2;  // a lead byte; continuation bytes add nothing
  }
  return n;
}

// The end of `name` that fits in `room` columns, "..." in front when cut
// (the file name is at the end of a path), never inside a character.
std::string fit(const std::string& name, std::size_t room) {
  if (columns(name) <= room) return name;
  if (room <= 3) return {};
  std::size_t start = name.size();
  while (start > 0 && columns(std::string_view(name).substr(start - 1)) <= room - 3) --start;
  while (start < name.size() && (static_cast<unsigned char>(name[start]) & 0xc0) == 0x80) ++start;
  return "..." + name.substr(start);
}

std::string clock_time(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) : fmt::format("{:02}:{:02}", s / 60, s % 60);
}

// A progress line on stderr, a few times a second, only when stdout and
// stderr are terminals (and not -q, --json, or data on stdout): the file
// at hand, then how far, how fast and how long still. When the transfer
// ends a summary takes its place and stays, as scp leaves one.
class progress_line {
 public:
  explicit progress_line(bool on) : on_(on), start_(std::chrono::steady_clock::now()) {}
  ~progress_line() { clear(); }

  void update(const client::transfer_progress& p) {
    if (!on_) return;
    files_total_ = p.files_total;  // for the summary, even when nothing is shown now
    if (p.current != current_) {
      current_ = p.current;
      name_ = printable(p.current);
    }
    auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(250) && p.bytes_done < p.bytes_total) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? static_cast<double>(p.bytes_done - p.resumed_bytes) / secs : 0;
    std::string eta = "--:--";
    if (rate > 0 && p.bytes_total >= p.bytes_done) {
      eta = clock_time(static_cast<double>(p.bytes_total - p.bytes_done) / rate);
    }
    const int pct = p.bytes_total ? static_cast<int>(100.0 * static_cast<double>(p.bytes_done) /
                                                     static_cast<double>(p.bytes_total))
                                  : 100;
    std::string rest = fmt::format("{:3d}%  {} / {}", pct, human_bytes(static_cast<double>(p.bytes_done)),
                                   human_bytes(static_cast<double>(p.bytes_total)));
    if (p.files_total != 1) rest += fmt::format("  {}/{} files", p.files_done, p.files_total);
    rest += fmt::format("  {}/s  ETA {}", human_bytes(rate), eta);
    if (p.resumed_bytes) rest += fmt::format("  (resumed {})", human_bytes(static_cast<double>(p.resumed_bytes)));
    show(rest);
  }

  /// Replaces the live line with a summary that stays.
  void finish(const client::transfer_result& r) {
    if (!on_) return;
    clear();
    const bool one_file = r.files == 1 && files_total_ == 1 && !name_.empty();
    std::vector<std::string> parts;
    if (!one_file) {
      parts.push_back(files_total_ > r.files ? fmt::format("{} of {} files", r.files, files_total_)
                                             : fmt::format("{} file{}", r.files, r.files == 1 ? "" : "s"));
    }
    if (r.files == files_total_) parts.push_back("100%");
    const double rate = r.seconds > 0 ? static_cast<double>(r.bytes - r.resumed_bytes) / r.seconds : 0;
    parts.push_back(human_bytes(static_cast<double>(r.bytes)));
    parts.push_back(human_bytes(rate) + "/s");
    parts.push_back(clock_time(r.seconds));
    if (r.dirs) parts.push_back(fmt::format("{} dir{}", r.dirs, r.dirs == 1 ? "" : "s"));
    if (r.resumed_bytes) parts.push_back(fmt::format("({} resumed)", human_bytes(static_cast<double>(r.resumed_bytes))));
    if (r.matched_bytes && r.bytes >= r.resumed_bytes + r.matched_bytes) {
      parts.push_back(fmt::format("({} matched, {} sent)", human_bytes(static_cast<double>(r.matched_bytes)),
                                  human_bytes(static_cast<double>(r.bytes - r.resumed_bytes - r.matched_bytes))));
    }
    if (r.unchanged) parts.push_back(fmt::format("{} unchanged", r.unchanged));
    if (r.excluded) parts.push_back(fmt::format("{} excluded", r.excluded));
    if (r.deleted) parts.push_back(fmt::format("{} deleted", r.deleted));
    std::string rest;
    for (const auto& part : parts) rest += (rest.empty() ? "" : "  ") + part;
    if (one_file) {
      const std::size_t width = terminal_width();
      const std::size_t room = width > columns(rest) + 3 ? width - columns(rest) - 3 : 0;
      const auto slash = name_.find_last_of('/', name_.size() > 1 ? name_.size() - 2 : 0);
      rest = fit(slash == std::string::npos ? name_ : name_.substr(slash + 1), room) + "  " + rest;  // as scp: the base name
    }
    std::fprintf(stderr, "%s\n", rest.c_str());
    std::fflush(stderr);
  }

 private:
  void show(const std::string& rest) {
    const std::size_t width = terminal_width();
    const std::size_t room = width > columns(rest) + 3 ? width - columns(rest) - 3 : 0;
    const std::string name = fit(name_, room);
    std::fprintf(stderr, "\r\033[K%s%s%s", name.c_str(), name.empty() ? "" : "  ", rest.c_str());
    std::fflush(stderr);
    shown_ = true;
  }
  void clear() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }
  static std::size_t terminal_width() {
    winsize ws{};
    if (::ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
  }

  bool on_;
  bool shown_ = false;
  std::uint64_t files_total_ = 0;
  std::string current_, name_;  // the file at hand, and as shown
  std::chrono::steady_clock::time_point start_, last_{};
};

int report_client_error(const client::client_error& e, bool as_json, const char* cmd) {
  std::fprintf(stderr, "cskit %s: %s\n", cmd, e.what());
  if (as_json) {
    json j = {{"ok", false},
              {"error", {{"code", e.code() ? std::string(proto::to_wire(*e.code())) : std::string()}, {"message", e.what()}}}};
    std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  }
  if ((e.kind() == client::failure::remote || e.kind() == client::failure::local) && e.code()) {
    return e.kind() == client::failure::local ? local_exit_code(*e.code()) : exit_code_for(*e.code());
  }
  return exit_code_for(e.kind());
}

template <class F>
int with_connection(const files_options& o, const std::string& host, const char* cmd, F&& f) {
  // A lost connection during sendfile (which cannot pass MSG_NOSIGNAL) must
  // be an error message and exit code 3, not death by SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  try {
    auto conn = connect_client(o.common, host);
    try {
      client::file_client fc(conn);
      return f(fc);
    } catch (const client::client_error& e) {
      // Cut mid-transfer (the connection lost, the server shutting down):
      // what arrived is kept in part files, and a re-run resumes there.
      const std::string_view c(cmd);
      const bool pipe = std::find(o.args.begin(), o.args.end(), "-") != o.args.end();  // nothing kept to resume
      if (e.kind() != client::failure::connect || (c != "put" && c != "get") || pipe) throw;
      const int rc = report_client_error(e, o.common.json, cmd);
      std::fprintf(stderr, "cskit %s: the transfer was cut; run the same command again to resume it\n", cmd);
      return rc;
    }
  } catch (const client::client_error& e) {
    return report_client_error(e, o.common.json, cmd);
  } catch (const client::output_closed&) {
    // As cat, killed by SIGPIPE: no message, and the shell sees 128+13.
    std::fflush(stderr);
    ::signal(SIGPIPE, SIG_DFL);
    ::raise(SIGPIPE);
    return 128 + SIGPIPE;
  }
}

int usage(const char* cmd, const std::string& msg) {
  std::fprintf(stderr, "cskit %s: %s\n", cmd, msg.c_str());
  return exit_code::usage;
}

// --dry-run, as text: a line per step, then what it comes to.
void print_planned(const client::transfer_result& r) {
  std::uint64_t files = 0, bytes = 0, deletions = 0;
  for (const auto& step : r.planned) {
    switch (step.what) {
      case client::planned_step::send:
        ++files;
        bytes += step.size;
        std::printf("send   %s  (%s)\n", printable(step.path).c_str(), human_bytes(static_cast<double>(step.size)).c_str());
        break;
      case client::planned_step::mkdir: std::printf("mkdir  %s\n", printable(step.path).c_str()); break;
      case client::planned_step::link: std::printf("link   %s\n", printable(step.path).c_str()); break;
      case client::planned_step::remove:
        ++deletions;
        std::printf("delete %s\n", printable(step.path).c_str());
        break;
    }
  }
  std::printf("dry run: %llu file%s (%s) would be sent, %llu unchanged, %llu excluded", static_cast<unsigned long long>(files),
              files == 1 ? "" : "s", human_bytes(static_cast<double>(bytes)).c_str(),
              static_cast<unsigned long long>(r.unchanged), static_cast<unsigned long long>(r.excluded));
  if (deletions) std::printf(", %llu deleted (with all they hold)", static_cast<unsigned long long>(deletions));
  std::printf("; nothing was changed\n");
}

json planned_json(const client::transfer_result& r) {
  json steps = json::array();
  for (const auto& step : r.planned) {
    static constexpr const char* names[] = {"send", "mkdir", "link", "delete"};
    json j = {{"action", names[step.what]}, {"path", step.path}};
    if (step.what == client::planned_step::send) j["size"] = step.size;
    steps.push_back(std::move(j));
  }
  return steps;
}

int finish_transfer(const char* cmd, const files_options& o, const client::transfer_result& r) {
  int rc = exit_code::ok;
  if (o.dry_run && !o.common.json) print_planned(r);
  for (const auto& e : r.errors) {
    std::fprintf(stderr, "cskit %s: %s\n", cmd, printable(e.message).c_str());
    if (rc == exit_code::ok) rc = e.local ? local_exit_code(e.code) : exit_code_for(e.code);
  }
  if (o.common.json) {
    json errs = json::array();
    for (const auto& e : r.errors) errs.push_back({{"path", e.path}, {"code", proto::to_wire(e.code)}, {"message", e.message}});
    json j = {{"ok", r.errors.empty()},
              {"files", r.files},
              {"dirs", r.dirs},
              {"symlinks", r.symlinks},
              {"bytes", r.bytes},
              {"resumed_bytes", r.resumed_bytes},
              {"matched_bytes", r.matched_bytes},
              {"seconds", util::round_to_places(r.seconds, 6)},
              {"bytes_per_second", r.seconds > 0 ? util::round_half_away(static_cast<double>(r.bytes - r.resumed_bytes) / r.seconds) : 0.0},
              {"digest", o.verify == "sha256" ? "xxh3-128+sha256" : "xxh3-128"},
              {"unchanged", r.unchanged},
              {"excluded", r.excluded},
              {"deleted", r.deleted},
              {"errors", errs}};
    if (o.dry_run) {
      j["dry_run"] = true;
      j["planned"] = planned_json(r);
    }
    std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  }
  return rc;
}

std::string format_mode(const client::remote_entry& e) {
  std::string s = e.type == "dir" ? "d" : e.type == "symlink" ? "l" : e.type == "file" ? "-" : "?";
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i) s += (e.mode & (0400u >> i)) ? rwx[i] : '-';
  return s;
}

std::string format_time(std::int64_t ns) {
  std::time_t t = static_cast<std::time_t>(ns / 1000000000LL);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

json entry_to_json(const client::remote_entry& e) {
  json j = {{"name", e.name}, {"type", e.type}, {"size", e.size}, {"mode", e.mode}, {"mtime_ns", e.mtime_ns}};
  if (e.type == "symlink") j["target"] = e.target;
  return j;
}

// Parses remote arguments that must all name one server; returns why one
// is refused, or "" with `out` filled.
std::string parse_remotes(const std::vector<std::string>& args, const files_options& o,
                          std::vector<remote_spec>& out) {
  for (const auto& a : args) {
    auto r = parse_remote(a);
    if (!r) return "'" + a + "' is not HOST:PATH (the share's root is HOST:)";
    if (std::string why = check_remote(*r, a, o.port); !why.empty()) return why;
    if (!out.empty() && r->host != out.front().host) return "all remote paths must be on the same server";
    out.push_back(std::move(*r));
  }
  return {};
}

// A local argument that reads as HOST:PATH means both ends are remote,
// which cskit does not do (scp -3 would): say so rather than take it as a
// local name.
std::string both_remote(const std::string& local) {
  return "'" + local + "' is a remote path too: cskit copies between this machine and one server (get, then put, " +
         "to copy between two); for a local name with a colon, write ./" + local;
}

// --exclude/--include as given; throws std::invalid_argument naming a bad
// pattern.
client::path_filter filter_of(const files_options& o) {
  client::path_filter f;
  for (const auto& rule : o.filter_rules) {
    f.add(rule.include ? client::path_filter::action::include : client::path_filter::action::exclude, rule.pattern);
  }
  return f;
}

client::transfer_options transfer_options_of(const files_options& o, progress_line& line) {
  client::transfer_options t;
  t.recursive = o.recursive || o.archive;
  t.preserve = o.preserve || o.archive;
  t.skip_unchanged = o.archive;
  t.dry_run = o.dry_run;
  t.checksum = o.checksum;
  t.delta = (o.archive || o.checksum) && !o.whole_file;
  t.delete_extraneous = o.delete_extraneous;
  t.filter = filter_of(o);
  t.no_clobber = o.no_clobber;
  t.sha256 = o.verify == "sha256";
  t.fsync = !o.no_fsync;
  t.on_progress = [&line](const client::transfer_progress& p) { line.update(p); };
  return t;
}

// What the transfer flags cannot mean together; "" when they are fine.
std::string check_transfer_flags(const files_options& o) {
  try {
    (void)filter_of(o);
  } catch (const std::invalid_argument& e) {
    return std::string("--exclude/--include: ") + e.what();
  }
  if (!o.filter_rules.empty() && !o.recursive && !o.archive) {
    return "--exclude and --include choose inside a tree: they need -r (or -a)";
  }
  if (o.delete_extraneous && !o.recursive && !o.archive) return "--delete keeps a tree in step: it needs -r (or -a)";
  return {};
}

}  // namespace

std::optional<std::uint64_t> parse_rate(std::string_view text) {
  std::size_t digits = 0;
  while (digits < text.size() && (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.')) ++digits;
  if (digits == 0 || digits > 20) return std::nullopt;
  char* end = nullptr;
  const std::string number(text.substr(0, digits));
  const double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || !(value >= 0)) return std::nullopt;
  std::string unit(text.substr(digits));
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // As rsync: K, M, G (and KiB, MiB, GiB) are powers of 1024, KB, MB, GB
  // powers of 1000; no suffix is K.
  double base = 1024.0;
  if (unit.ends_with("ib")) {
    unit.resize(unit.size() - 2);
  } else if (unit.size() == 2 && unit.back() == 'b') {
    unit.pop_back();
    base = 1000.0;
  }
  double scale = 0;
  if (unit.empty() || unit == "k") scale = base;
  else if (unit == "m") scale = base * base;
  else if (unit == "g") scale = base * base * base;
  if (scale == 0 || value * scale > 1e15) return std::nullopt;
  const auto rate = static_cast<std::uint64_t>(value * scale);
  if (rate != 0 && rate < 1000) return std::nullopt;
  return rate;
}

int run_put(const files_options& o) {
  if (o.args.size() < 2) return usage("put", "usage: cskit put [-r] [-p] [-a] LOCAL... HOST:[REMOTE]");
  std::vector<remote_spec> dest;
  if (!parse_remote(o.args.back())) {
    return usage("put", "the last argument must be HOST:[REMOTE] (for example 127.0.0.1:backup/)");
  }
  if (std::string why = parse_remotes({o.args.back()}, o, dest); !why.empty()) return usage("put", why);
  std::vector<std::string> sources(o.args.begin(), o.args.end() - 1);
  for (const auto& src : sources) {
    if (parse_remote(src)) return usage("put", both_remote(src));
  }
  if (std::string why = check_transfer_flags(o); !why.empty()) return usage("put", why);
  progress_line line(!o.quiet && !o.common.json && !o.dry_run && ::isatty(1) && ::isatty(2));
  return with_connection(o, dest[0].host, "put", [&](client::file_client& fc) {
    auto r = fc.put(sources, dest[0].path, transfer_options_of(o, line));
    line.finish(r);
    return finish_transfer("put", o, r);
  });
}

int run_get(const files_options& o) {
  if (o.args.empty()) return usage("get", "usage: cskit get [-r] [-p] [-a] HOST:REMOTE... [LOCAL]");
  std::vector<std::string> remote_args = o.args;
  std::string local = ".";
  if (o.args.size() > 1) {
    local = o.args.back();
    remote_args.pop_back();
    if (parse_remote(local)) return usage("get", both_remote(local));
  }
  std::vector<remote_spec> specs;
  if (std::string why = parse_remotes(remote_args, o, specs); !why.empty()) return usage("get", why);
  std::vector<std::string> paths;
  for (const auto& r : specs) paths.push_back(r.path);
  if (std::string why = check_transfer_flags(o); !why.empty()) return usage("get", why);
  progress_line line(!o.quiet && !o.common.json && !o.dry_run && local != "-" && ::isatty(1) && ::isatty(2));
  return with_connection(o, specs.front().host, "get", [&](client::file_client& fc) {
    auto r = fc.get(paths, local, transfer_options_of(o, line));
    line.finish(r);
    return finish_transfer("get", o, r);
  });
}

namespace {

// A relative path with a component that starts with '.'.
bool hidden(std::string_view path) {
  for (std::size_t i = 0;;) {
    if (i < path.size() && path[i] == '.') return true;
    i = path.find('/', i);
    if (i == std::string_view::npos) return false;
    ++i;
  }
}

// As ls and sftp's ls: names starting with '.' (and what is below them)
// are left out unless -a, except a file named on the command line.
void drop_hidden(client::file_client& fc, const std::string& path, std::vector<client::remote_entry>& entries) {
  const auto slash = path.rfind('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (entries.size() == 1 && entries[0].name == base && hidden(base) && fc.stat(path).type != "dir") return;
  std::erase_if(entries, [](const client::remote_entry& e) { return hidden(e.name); });
}

void print_listing(const files_options& o, const std::vector<client::remote_entry>& entries) {
  for (const auto& e : entries) {
    std::string name = printable(e.name) + (e.type == "dir" && !o.long_format ? "/" : "");
    if (o.long_format) {
      std::string line = fmt::format("{} {:>12} {} {}", format_mode(e), e.size, format_time(e.mtime_ns), name);
      if (e.type == "symlink") line += " -> " + printable(e.target);
      std::printf("%s\n", line.c_str());
    } else {
      std::printf("%s\n", name.c_str());
    }
  }
}

}  // namespace

int run_ls(const files_options& o) {
  if (o.args.size() != 1) return usage("ls", "usage: cskit ls [-l] [-a] [-R] HOST:[PATH]");
  std::vector<remote_spec> specs;
  if (std::string why = parse_remotes(o.args, o, specs); !why.empty()) return usage("ls", why);
  const remote_spec& spec = specs.front();
  return with_connection(o, spec.host, "ls", [&](client::file_client& fc) {
    auto entries = fc.list(spec.path, o.recursive, false);
    if (!o.all) drop_hidden(fc, spec.path, entries);
    if (o.common.json) {
      json arr = json::array();
      for (const auto& e : entries) arr.push_back(entry_to_json(e));
      std::printf("%s\n", json({{"ok", true}, {"path", spec.path}, {"entries", arr}})
                              .dump(-1, ' ', false, json::error_handler_t::replace)
                              .c_str());
      return exit_code::ok;
    }
    print_listing(o, entries);
    return exit_code::ok;
  });
}

int run_stat(const files_options& o) {
  if (o.args.size() != 1) return usage("stat", "usage: cskit stat HOST:PATH");
  std::vector<remote_spec> specs;
  if (std::string why = parse_remotes(o.args, o, specs); !why.empty()) return usage("stat", why);
  const remote_spec& spec = specs.front();
  return with_connection(o, spec.host, "stat", [&](client::file_client& fc) {
    auto e = fc.stat(spec.path);
    if (o.common.json) {
      std::printf("%s\n", json({{"ok", true}, {"entry", entry_to_json(e)}}).dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    } else {
      std::printf("  name: %s\n  type: %s\n  size: %llu\n  mode: %s (%04o)\nmodify: %s\n",
                  printable(spec.path.empty() ? "/" : spec.path).c_str(), e.type.c_str(),
                  static_cast<unsigned long long>(e.size), format_mode(e).c_str(), e.mode, format_time(e.mtime_ns).c_str());
      if (e.type == "symlink") std::printf("target: %s\n", printable(e.target).c_str());
    }
    return exit_code::ok;
  });
}

namespace {

// mkdir and rm: each path in turn on one connection, as their local
// namesakes do; a path that fails is reported and the others go on.
int each_path(const files_options& o, const char* cmd, const char* use,
              const std::function<json(client::file_client&, const std::string&)>& fn) {
  if (o.args.empty()) return usage(cmd, std::string("usage: ") + use);
  std::vector<remote_spec> specs;
  if (std::string why = parse_remotes(o.args, o, specs); !why.empty()) return usage(cmd, why);
  return with_connection(o, specs.front().host, cmd, [&](client::file_client& fc) {
    int rc = exit_code::ok;
    json results = json::array();
    for (const auto& spec : specs) {
      try {
        json one = fn(fc, spec.path);
        one["path"] = spec.path;
        one["ok"] = true;
        results.push_back(std::move(one));
      } catch (const client::client_error& e) {
        if (e.kind() != client::failure::remote && e.kind() != client::failure::permission) throw;
        std::fprintf(stderr, "cskit %s: %s\n", cmd, printable(e.what()).c_str());
        const errc code = e.code().value_or(errc::io_error);
        if (rc == exit_code::ok) rc = exit_code_for(code);
        results.push_back({{"path", spec.path},
                           {"ok", false},
                           {"error", {{"code", proto::to_wire(code)}, {"message", e.what()}}}});
      }
    }
    if (o.common.json) {
      // One path: its fields at the top as well, as before several were taken.
      json j = results.size() == 1 ? results[0] : json::object();
      j["ok"] = rc == exit_code::ok;
      j["results"] = results;
      std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    }
    return rc;
  });
}

}  // namespace

int run_mkdir(const files_options& o) {
  return each_path(o, "mkdir", "cskit mkdir [-p] HOST:PATH...", [&](client::file_client& fc, const std::string& path) {
    fc.mkdir(path, o.parents);
    return json::object();
  });
}

int run_rm(const files_options& o) {
  return each_path(o, "rm", "cskit rm [-r] HOST:PATH...", [&](client::file_client& fc, const std::string& path) {
    return json{{"removed", fc.rm(path, o.recursive)}};
  });
}

int run_mv(const files_options& o) {
  if (o.args.size() != 2) return usage("mv", "usage: cskit mv [--no-clobber] HOST:FROM TO");
  std::vector<remote_spec> specs;
  if (std::string why = parse_remotes({o.args[0]}, o, specs); !why.empty()) return usage("mv", why);
  const std::string& to_arg = o.args[1];
  if (auto to = parse_remote(to_arg)) {  // TO names the same server, or only a path there
    if (std::string why = check_remote(*to, to_arg, o.port); !why.empty()) return usage("mv", why);
    if (to->host != specs.front().host) return usage("mv", "both paths must be on the same server");
    specs.push_back(std::move(*to));
  } else {
    specs.push_back({specs.front().host, to_arg, true});
  }
  return with_connection(o, specs.front().host, "mv", [&](client::file_client& fc) {
    auto to = fc.mv(specs[0].path, specs[1].path, o.no_clobber);
    if (o.common.json) {
      std::printf("%s\n", json({{"ok", true}, {"from", specs[0].path}, {"to", to}})
                              .dump(-1, ' ', false, json::error_handler_t::replace)
                              .c_str());
    }
    return exit_code::ok;
  });
}

// ------------------------------------------------------------ the command line

namespace {

constexpr const char* transfer_footer =
    R"(Tree copies choose with --exclude/--include (rules tried in order, the first that matches
decides; a directory left out is not entered) and skip unchanged files with -a. With -a or -c,
a changed file the receiving side has an older copy of travels as its differences only.
Every file is digested (XXH3-128) by the sender while it is read and by the receiver while
it is written, written to a temporary file beside the target (a resumable part file; an unnamed
one for files up to 256 KiB), flushed, and moved into place only when the digests match. Run
the same command again after an interruption: it resumes where it stopped (a tree copied under
a new name continues in it). Without -p a new file gets the source's permission bits less the
umask, and a replaced one keeps its own.
)";

void add_filter_options(CLI::App& cmd, files_options& o) {
  for (const bool include : {false, true}) {
    cmd.add_option_function<std::string>(
           include ? "--include" : "--exclude",
           [&o, include](const std::string& pattern) { o.filter_rules.push_back({include, pattern}); },
           include ? "Take what matches PATTERN even if a later --exclude matches it (rules apply in order)"
                   : "Leave out what matches PATTERN: rsync's rules (*.o, cache/, /top-only, a/**/b)")
        ->type_name("PATTERN")
        ->trigger_on_parse()
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  }
}

// The options put and get share.
std::shared_ptr<files_options> add_transfer_options(CLI::App& cmd) {
  auto o = std::make_shared<files_options>();
  cmd.add_option("PATHS", o->args, "Sources, then the destination")->required();
  cmd.add_flag("-r,--recursive", o->recursive, "Copy directories and everything in them");
  cmd.add_flag("-p,--preserve", o->preserve,
               "Keep modification times, and impose the permission bits on replaced files too (without -p a new "
               "file gets the source's bits less the umask, a replaced one keeps its own)");
  cmd.add_flag("-q,--quiet", o->quiet, "No progress line");
  cmd.add_flag("-n,--no-clobber", o->no_clobber, "Never replace an existing file");
  cmd.add_flag("-a,--archive", o->archive,
               "Like rsync -a: -r and -p, and a file whose destination has the same size and modification time "
               "is not sent again (a re-run sends only what changed)");
  cmd.add_flag("-c,--checksum", o->checksum,
               "Skip a file whose destination has the same size and XXH3-128 digest, whatever its time (the "
               "server reads its copies to compare; with -p, times and bits are brought in line)");
  cmd.add_flag("--dry-run", o->dry_run, "Say what would be sent, made and deleted, and change nothing");
  files_options& ref = *o;
  cmd.add_option_function<std::string>(
         "--bwlimit",
         [&ref](const std::string& text) {
           const auto rate = parse_rate(text);
           if (!rate) throw CLI::ValidationError("--bwlimit", "'" + text + "' is not a rate (KiB/s, or 500K, 10M, 1G; at least 1KB)");
           ref.common.rate_limit = *rate;
         },
         "Average bytes per second, both ways, as rsync's --bwlimit: KiB/s, or with K, M or G")
      ->type_name("RATE");
  cmd.add_flag("--delete", o->delete_extraneous,
               "Remove from the destination tree what the source no longer has (not what --exclude leaves out); "
               "only after a transfer without errors");
  add_filter_options(cmd, *o);
  cmd.add_option("--verify", o->verify, "Also check a SHA-256 digest (XXH3-128 is always checked)")
      ->check(CLI::IsMember({"sha256", "xxh3"}));
  add_port_option(cmd, *o);
  add_login_options(cmd, o->common);
  cmd.footer(std::string(transfer_footer) + remote_paths_text);
  return o;
}

command_runner build_put(CLI::App& cmd, const command_args&) {
  auto o = add_transfer_options(cmd);
  cmd.add_flag("--whole-file", o->whole_file,
               "With -a or -c, send a changed file whole instead of only what differs from the server's "
               "copy (rsync's --whole-file; -W is --timeout here)");
  return [o] { return run_put(*o); };
}

command_runner build_get(CLI::App& cmd, const command_args&) {
  auto o = add_transfer_options(cmd);
  cmd.add_flag("--whole-file", o->whole_file,
               "With -a or -c, fetch a changed file whole instead of only what differs from the local "
               "copy (rsync's --whole-file; -W is --timeout here)");
  cmd.add_flag("--no-fsync", o->no_fsync,
               "Do not flush downloaded files to disk before renaming them into place (faster, like scp; "
               "a power failure can then leave an incomplete file)");
  return [o] { return run_get(*o); };
}

// What every command on remote paths has besides its own options.
void add_remote_path_options(CLI::App& cmd, files_options& o) {
  add_port_option(cmd, o);
  add_login_options(cmd, o.common);
  cmd.footer(remote_paths_text);
}

command_runner build_ls(CLI::App& cmd, const command_args&) {
  auto o = std::make_shared<files_options>();
  cmd.add_option("HOST:PATH", o->args, "HOST:[PATH]")->required();
  cmd.add_flag("-l", o->long_format, "Long format: type, permissions, size, time");
  cmd.add_flag("-a,--all", o->all, "Also names that start with '.' (left out otherwise, as ls does)");
  cmd.add_flag("-R,--recursive", o->recursive, "List everything below, as relative paths");
  add_remote_path_options(cmd, *o);
  return [o] { return run_ls(*o); };
}

command_runner build_stat(CLI::App& cmd, const command_args&) {
  auto o = std::make_shared<files_options>();
  cmd.add_option("HOST:PATH", o->args, "HOST:PATH")->required();
  add_remote_path_options(cmd, *o);
  return [o] { return run_stat(*o); };
}

command_runner build_mkdir(CLI::App& cmd, const command_args&) {
  auto o = std::make_shared<files_options>();
  cmd.add_option("HOST:PATH", o->args, "HOST:PATH..., all on one server")->required();
  cmd.add_flag("-p,--parents", o->parents, "Create missing parents; no error if it exists");
  add_remote_path_options(cmd, *o);
  return [o] { return run_mkdir(*o); };
}

command_runner build_rm(CLI::App& cmd, const command_args&) {
  auto o = std::make_shared<files_options>();
  cmd.add_option("HOST:PATH", o->args, "HOST:PATH..., all on one server")->required();
  cmd.add_flag("-r,--recursive", o->recursive, "Remove a directory and everything in it");
  add_remote_path_options(cmd, *o);
  return [o] { return run_rm(*o); };
}

command_runner build_mv(CLI::App& cmd, const command_args&) {
  auto o = std::make_shared<files_options>();
  cmd.add_option("PATHS", o->args, "HOST:FROM and TO (a path on the same server)")->required();
  cmd.add_flag("-n,--no-clobber", o->no_clobber, "Never replace an existing file");
  add_remote_path_options(cmd, *o);
  return [o] { return run_mv(*o); };
}

const command_registration put_registration{{
    .name = "put",
    .summary = "Upload files ('-' is stdin)",
    .usage = "[-r] [-p] [-a] LOCAL... HOST:[REMOTE]",
    .order = 80,
    .build = build_put,
}};
const command_registration get_registration{{
    .name = "get",
    .summary = "Download files ('-' is stdout)",
    .usage = "[-r] [-p] [-a] HOST:REMOTE... [LOCAL]",
    .order = 90,
    .build = build_get,
}};
const command_registration ls_registration{{
    .name = "ls",
    .summary = "List a remote directory",
    .usage = "[-l] [-a] [-R] HOST:[PATH]",
    .order = 100,
    .build = build_ls,
}};
const command_registration stat_registration{{
    .name = "stat",
    .summary = "Show a remote file's type, size, permissions and time",
    .usage = "HOST:PATH",
    .order = 110,
    .build = build_stat,
}};
const command_registration mkdir_registration{{
    .name = "mkdir",
    .summary = "Create remote directories",
    .usage = "[-p] HOST:PATH...",
    .order = 120,
    .build = build_mkdir,
}};
const command_registration rm_registration{{
    .name = "rm",
    .summary = "Remove remote files or directories",
    .usage = "[-r] HOST:PATH...",
    .order = 130,
    .build = build_rm,
}};
const command_registration mv_registration{{
    .name = "mv",
    .summary = "Move or rename on the server",
    .usage = "[-n] HOST:FROM TO",
    .order = 140,
    .build = build_mv,
}};

}  // namespace

}  // namespace cskit::app
