#include "server/config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <cstdio>
#include <sstream>
#include <toml++/toml.h>

#include "proto/auth.hpp"
#include "util/paths.hpp"
#include "util/token_file.hpp"

namespace cskit::server {
namespace {

[[noreturn]] void fail_at(const std::string& source, const toml::node& node, const std::string& what) {
  const auto& src = node.source();
  std::ostringstream os;
  os << source;
  if (src.begin.line) os << ":" << src.begin.line;
  os << ": " << what;
  throw config_error(os.str());
}

std::string fmt_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

template <class T>
T get_integer(const std::string& source, const toml::node& n, std::string_view key, T lo, T hi) {
  auto v = n.value<std::int64_t>();
  if (!n.is_integer() || !v || *v < static_cast<std::int64_t>(lo) || *v > static_cast<std::int64_t>(hi)) {
    fail_at(source, n,
            "'" + std::string(key) + "' must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  }
  return static_cast<T>(*v);
}

std::string get_string(const std::string& source, const toml::node& n, std::string_view key) {
  if (!n.is_string()) fail_at(source, n, "'" + std::string(key) + "' must be a string");
  return *n.value<std::string>();
}

void parse_server_table(const std::string& source, const toml::table& t, server_config& c) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "listen") c.listen = get_string(source, v, key);
    else if (key == "root") c.root = get_string(source, v, key);
    else if (key == "state_dir") c.state_dir = get_string(source, v, key);
    else if (key == "name") c.name = get_string(source, v, key);
    else if (key == "threads") c.threads = get_integer<unsigned>(source, v, key, 0, 1024);
    else if (key == "max_connections") c.max_connections = get_integer<std::size_t>(source, v, key, 1, 1000000);
    else if (key == "max_unauthenticated") c.max_unauthenticated = get_integer<std::size_t>(source, v, key, 1, 1000000);
    else if (key == "max_unauthenticated_per_address") {
      c.max_unauthenticated_per_address = get_integer<std::size_t>(source, v, key, 1, 1000000);
    }
    else if (key == "idle_timeout") c.idle_timeout = std::chrono::seconds(get_integer<int>(source, v, key, 1, 86400 * 7));
    else if (key == "handshake_timeout") c.handshake_timeout = std::chrono::seconds(get_integer<int>(source, v, key, 1, 3600));
    else if (key == "frame_timeout") c.frame_timeout = std::chrono::seconds(get_integer<int>(source, v, key, 1, 3600));
    else if (key == "grace") c.grace = std::chrono::seconds(get_integer<int>(source, v, key, 0, 3600));
    else if (key == "log_level") c.log_level = get_string(source, v, key);
    else if (key == "users_file") c.users_file = get_string(source, v, key);
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [server]");
  }
}

double get_number(const std::string& source, const toml::node& n, std::string_view key, double lo, double hi) {
  std::optional<double> v;
  if (n.is_integer()) v = static_cast<double>(*n.value<std::int64_t>());
  else if (n.is_floating_point()) v = *n.value<double>();
  if (!v || !(*v >= lo && *v <= hi)) {
    fail_at(source, n, "'" + std::string(key) + "' must be a number from " + fmt_number(lo) + " to " + fmt_number(hi));
  }
  return *v;
}

bool get_bool(const std::string& source, const toml::node& n, std::string_view key) {
  if (!n.is_boolean()) fail_at(source, n, "'" + std::string(key) + "' must be true or false");
  return *n.value<bool>();
}

// A rate of 0 turns a limit off; otherwise the burst must hold at least one unit.
void check_limit(const std::string& source, const toml::node& at, const char* what, service::bucket_limit& l,
                 double min_burst) {
  if (l.rate > 0 && l.burst < min_burst) {
    fail_at(source, at, std::string(what) + " burst must be at least " + fmt_number(min_burst) + " when its rate is set");
  }
}

void parse_echo_table(const std::string& source, const toml::table& t, service::echo_options& e) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "listen") e.listen = get_string(source, v, key);
    else if (key == "rate") e.packets.rate = get_number(source, v, key, 0, 1e9);
    else if (key == "burst") e.packets.burst = get_number(source, v, key, 0, 1e9);
    else if (key == "byte_rate") e.bytes.rate = get_number(source, v, key, 0, 1e12);
    else if (key == "byte_burst") e.bytes.burst = get_number(source, v, key, 0, 1e12);
    else if (key == "max_datagram") e.max_datagram = get_integer<std::size_t>(source, v, key, 1, 65535);
    else if (key == "max_tcp_connections") e.max_tcp_connections = get_integer<std::size_t>(source, v, key, 1, 100000);
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [echo]");
  }
  check_limit(source, t, "[echo] rate", e.packets, 1);
  check_limit(source, t, "[echo] byte_rate", e.bytes, 65507);
}

void parse_time_table(const std::string& source, const toml::table& t, service::time_options& o) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "listen") o.listen = get_string(source, v, key);
    else if (key == "stratum") o.stratum = get_integer<std::uint8_t>(source, v, key, 1, 15);
    else if (key == "reference_id") {
      if (!service::parse_reference_id(get_string(source, v, key), o.reference_id)) {
        fail_at(source, v, "'reference_id' must be an IPv4 address or 1-4 letters and digits (\"GPS\", \"LOCL\")");
      }
    } else if (key == "root_delay") o.root_delay = get_number(source, v, key, 0, 16);
    else if (key == "root_dispersion") o.root_dispersion = get_number(source, v, key, 0, 16);
    else if (key == "rate") o.requests.rate = get_number(source, v, key, 0, 1e9);
    else if (key == "burst") o.requests.burst = get_number(source, v, key, 0, 1e9);
    else if (key == "kiss_of_death") o.kiss_of_death = get_bool(source, v, key);
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [time]");
  }
  check_limit(source, t, "[time] rate", o.requests, 1);
}

std::vector<std::string> get_string_array(const std::string& source, const toml::node& n, std::string_view key) {
  const auto* arr = n.as_array();
  if (!arr) fail_at(source, n, "'" + std::string(key) + "' must be an array of strings");
  std::vector<std::string> out;
  for (auto&& x : *arr) {
    auto v = x.value<std::string>();
    if (!x.is_string() || !v) fail_at(source, x, "'" + std::string(key) + "' must contain strings only");
    out.push_back(*v);
  }
  return out;
}

void parse_exec_table(const std::string& source, const toml::table& t, service::exec_options& e) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "enabled") e.enabled = get_bool(source, v, key);
    else if (key == "allow_shell") e.allow_shell = get_bool(source, v, key);
    else if (key == "shell") e.shell = get_string(source, v, key);
    else if (key == "programs") e.programs = get_string_array(source, v, key);
    else if (key == "path") e.path = get_string(source, v, key);
    else if (key == "cwd") e.cwd = get_string(source, v, key);
    else if (key == "env_allow") e.env_allow = get_string_array(source, v, key);
    else if (key == "max_wall_time") e.max_wall_time = std::chrono::seconds(get_integer<std::int64_t>(source, v, key, 0, 86400 * 365));
    else if (key == "cpu_seconds") e.cpu_seconds = get_integer<std::uint64_t>(source, v, key, 0, 86400 * 365);
    else if (key == "memory_bytes") e.memory_bytes = get_integer<std::uint64_t>(source, v, key, 0, std::int64_t{1} << 50);
    else if (key == "max_processes") e.max_processes = get_integer<std::uint64_t>(source, v, key, 0, 1000000);
    else if (key == "max_concurrent") e.max_concurrent = get_integer<std::size_t>(source, v, key, 1, 100000);
    else if (key == "max_concurrent_per_user") e.max_concurrent_per_user = get_integer<std::size_t>(source, v, key, 1, 100000);
    else if (key == "run_as") e.run_as = get_string(source, v, key);
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [exec]");
  }
}

// A size: an integer number of bytes, or a string with a binary suffix
// ("512K", "10M", "2G", "1T").
std::uint64_t get_size(const std::string& source, const toml::node& n, std::string_view key) {
  const std::string what = "'" + std::string(key) + "' must be a number of bytes (e.g. 1073741824) or a size like \"10G\"";
  if (n.is_integer()) {
    auto v = *n.value<std::int64_t>();
    if (v < 0) fail_at(source, n, what);
    return static_cast<std::uint64_t>(v);
  }
  if (!n.is_string()) fail_at(source, n, what);
  std::string s = *n.value<std::string>();
  std::size_t used = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &used);
  } catch (const std::exception&) {
    fail_at(source, n, what);
  }
  std::string suffix = s.substr(used);
  if (!suffix.empty() && (suffix.back() == 'B' || suffix.back() == 'b')) suffix.pop_back();
  int shift = 0;
  if (suffix.empty()) shift = 0;
  else if (suffix == "K" || suffix == "k" || suffix == "Ki") shift = 10;
  else if (suffix == "M" || suffix == "Mi") shift = 20;
  else if (suffix == "G" || suffix == "Gi") shift = 30;
  else if (suffix == "T" || suffix == "Ti") shift = 40;
  else fail_at(source, n, what);
  if (v > (~0ULL >> shift)) fail_at(source, n, what);
  return static_cast<std::uint64_t>(v) << shift;
}

void parse_files_table(const std::string& source, const toml::table& t, service::files_options& f) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "max_file_size") f.max_file_size = get_size(source, v, key);
    else if (key == "quota") f.quota = get_size(source, v, key);
    else if (key == "fsync") f.fsync = get_bool(source, v, key);
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [files]");
  }
}

void parse_chat_table(const std::string& source, const toml::table& t, service::chat_options& c) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "enabled") {
      c.enabled = get_bool(source, v, key);
    } else if (key == "default_room") {
      c.default_room = get_string(source, v, key);
      if (!service::valid_room(c.default_room)) fail_at(source, v, "'default_room' is not a valid room name");
    } else if (key == "history") c.history = get_integer<std::size_t>(source, v, key, 0, 100000);
    else if (key == "history_store") {
      c.history_store = get_string(source, v, key);
      if (c.history_store != "sqlite" && c.history_store != "memory") {
        fail_at(source, v, "'history_store' must be \"sqlite\" or \"memory\"");
      }
    } else if (key == "history_path") c.history_path = get_string(source, v, key);
    else if (key == "history_keep") c.history_keep = get_integer<std::size_t>(source, v, key, 0, 100000000);
    else if (key == "history_days") c.history_max_age = std::chrono::hours(24 * get_integer<int>(source, v, key, 0, 100000));
    else if (key == "max_message") c.max_message = get_integer<std::size_t>(source, v, key, 1, 1 << 20);
    else if (key == "rate") c.rate = get_number(source, v, key, 0, 1e6);
    else if (key == "burst") c.burst = get_number(source, v, key, 1, 1e6);
    else if (key == "max_queue") c.max_queue = get_integer<std::size_t>(source, v, key, 4096, std::int64_t{1} << 32);
    else if (key == "max_rooms") c.max_rooms = get_integer<std::size_t>(source, v, key, 1, 1000000);
    else if (key == "ping_interval") c.ping_interval = std::chrono::seconds(get_integer<int>(source, v, key, 1, 3600));
    else if (key == "ping_timeout") c.ping_timeout = std::chrono::seconds(get_integer<int>(source, v, key, 2, 7200));
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [chat]");
  }
  if (c.ping_timeout <= c.ping_interval) fail_at(source, t, "[chat] ping_timeout must be longer than ping_interval");
}

void parse_irc_table(const std::string& source, const toml::table& t, irc_options& o) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "listen") o.listen = get_string(source, v, key);
    else if (key == "tls") o.tls = get_bool(source, v, key);
    else if (key == "plaintext_remote") o.plaintext_remote = get_bool(source, v, key);
    else if (key == "network") {
      o.network = get_string(source, v, key);
      if (!service::valid_nick(o.network)) fail_at(source, v, "'network' must be 1-32 letters, digits, '-', '_' or '.'");
    } else if (key == "motd") o.motd = get_string(source, v, key);
    else if (key == "history_max") o.history_max = get_integer<std::size_t>(source, v, key, 1, 100000);
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [irc]");
  }
}

void parse_tls_table(const std::string& source, const toml::table& t, tls_options& o) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "plaintext") o.plaintext = get_bool(source, v, key);
    else if (key == "cert") o.cert = get_string(source, v, key);
    else if (key == "key") o.key = get_string(source, v, key);
    else if (key == "kernel_tls") {
      o.kernel_tls = get_string(source, v, key);
      if (o.kernel_tls != "auto" && o.kernel_tls != "on" && o.kernel_tls != "off") {
        fail_at(source, v, "'kernel_tls' must be \"auto\", \"on\" or \"off\"");
      }
    } else fail_at(source, v, "unknown key '" + std::string(key) + "' in [tls]");
  }
  if (o.cert.empty() != o.key.empty()) fail_at(source, t, "[tls] needs both 'cert' and 'key', or neither");
}

void parse_web_table(const std::string& source, const toml::table& t, web_options& o) {
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "enabled") o.enabled = get_bool(source, v, key);
    else fail_at(source, v, "unknown key '" + std::string(key) + "' in [web]");
  }
}

user_account parse_user(const std::string& source, const toml::table& t) {
  user_account u;
  bool have_token = false;
  for (auto&& [k, v] : t) {
    std::string_view key = k.str();
    if (key == "name") {
      u.name = get_string(source, v, key);
      if (!proto::is_valid_user_name(u.name)) {
        fail_at(source, v, "user name '" + u.name + "' must be 1-64 characters of A-Z a-z 0-9 . _ -");
      }
    } else if (key == "token") {
      u.token = get_string(source, v, key);
      have_token = true;
      if (u.token.size() < min_token_length) {
        fail_at(source, v, "token must be at least " + std::to_string(min_token_length) + " characters");
      }
    } else if (key == "permissions") {
      const auto* arr = v.as_array();
      if (!arr) fail_at(source, v, "'permissions' must be an array of strings");
      for (auto&& p : *arr) {
        auto name = p.value<std::string>();
        auto perm = name ? proto::permission_from_wire(*name) : std::nullopt;
        if (!perm) fail_at(source, p, "unknown permission (use files-read, files-write, exec, chat)");
        u.permissions.add(*perm);
      }
    } else {
      fail_at(source, v, "unknown key '" + std::string(key) + "' in [[users]]");
    }
  }
  if (u.name.empty()) fail_at(source, t, "a [[users]] entry has no 'name'");
  // `admin` without a token keeps the generated one: giving the default
  // admin other permissions needs no token copied into the file.
  if (!have_token && u.name != "admin") fail_at(source, t, "user '" + u.name + "' has no 'token'");
  u.origin = source;
  if (t.source().begin.line) u.origin += ":" + std::to_string(t.source().begin.line);
  return u;
}

toml::table parse_toml(std::string_view text, const std::string& source) {
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << source << ":" << e.source().begin.line << ":" << e.source().begin.column << ": " << e.description();
    throw config_error(os.str());
  }
}

// The [[users]] array: each entry parsed, names unique.
void parse_users(const std::string& source, const toml::node& v, std::vector<user_account>& out) {
  const auto* arr = v.as_array();
  if (!arr) fail_at(source, v, "'users' must be an array of tables ([[users]])");
  for (auto&& e : *arr) {
    if (!e.is_table()) fail_at(source, e, "each [[users]] entry must be a table");
    auto u = parse_user(source, *e.as_table());
    for (const auto& other : out) {
      if (other.name == u.name) fail_at(source, e, "user '" + u.name + "' is defined twice");
    }
    out.push_back(std::move(u));
  }
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw config_error(path.string() + ": cannot open: " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

server_config parse_config(std::string_view text, const std::string& source) {
  const toml::table doc = parse_toml(text, source);
  server_config c;
  for (auto&& [k, v] : doc) {
    std::string_view key = k.str();
    if (key == "server") {
      if (!v.is_table()) fail_at(source, v, "'server' must be a table");
      parse_server_table(source, *v.as_table(), c);
    } else if (key == "echo" || key == "time" || key == "exec" || key == "chat" || key == "files" || key == "tls" ||
               key == "irc" || key == "web") {
      if (!v.is_table()) fail_at(source, v, "'" + std::string(key) + "' must be a table");
      if (key == "echo") parse_echo_table(source, *v.as_table(), c.echo);
      else if (key == "time") parse_time_table(source, *v.as_table(), c.time);
      else if (key == "exec") parse_exec_table(source, *v.as_table(), c.exec);
      else if (key == "files") parse_files_table(source, *v.as_table(), c.files);
      else if (key == "tls") parse_tls_table(source, *v.as_table(), c.tls);
      else if (key == "irc") parse_irc_table(source, *v.as_table(), c.irc);
      else if (key == "web") parse_web_table(source, *v.as_table(), c.web);
      else parse_chat_table(source, *v.as_table(), c.chat);
    } else if (key == "users") {
      parse_users(source, v, c.users);
    } else {
      fail_at(source, v, "unknown top-level key '" + std::string(key) + "' (expected [server], [tls], [files], [echo], [time], [exec], [chat], [irc], [web] or [[users]])");
    }
  }
  return c;
}

server_config load_config_file(const std::filesystem::path& path) {
  server_config c = parse_config(read_file(path), path.string());
  // The users file lives beside the config unless it says otherwise; a
  // relative path is relative to the config's directory.
  const auto dir = std::filesystem::absolute(path).parent_path();
  if (c.users_file.empty()) c.users_file = dir / "users.toml";
  else if (c.users_file.is_relative()) c.users_file = dir / c.users_file;
  return c;
}

void fill_default_paths(server_config& config) {
  if (config.state_dir.empty()) config.state_dir = util::default_state_dir();
  if (config.users_file.empty()) config.users_file = config.state_dir / "users.toml";
}

std::vector<user_account> parse_users_file(std::string_view text, const std::string& source) {
  const toml::table doc = parse_toml(text, source);
  std::vector<user_account> users;
  for (auto&& [k, v] : doc) {
    if (k.str() != "users") {
      fail_at(source, v, "unknown key '" + std::string(k.str()) + "': a users file holds [[users]] entries only");
    }
    parse_users(source, v, users);
  }
  return users;
}

std::vector<user_account> load_users_file(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    throw config_error(path.string() + ": " + std::strerror(errno));
  }
  if (st.st_mode & (S_IROTH | S_IWOTH)) {
    throw config_error(path.string() + " holds accounts and tokens, and every user may " +
                       ((st.st_mode & S_IROTH) ? "read" : "change") + " it; run: chmod o-rwx " + path.string());
  }
  return parse_users_file(read_file(path), path.string());
}

namespace {

// A TOML basic string.
std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", c);
      out += esc;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

}  // namespace

std::string format_users_file(const std::vector<user_account>& users) {
  std::string out =
      "# Accounts of cskit serve, managed by `cskit user` (add, del, set, token --rotate):\n"
      "# this file is rewritten whole, so keep comments in cskit.toml. Tokens are secrets.\n"
      "# The server reads it at start and on reload (systemctl reload cskit, or SIGHUP).\n";
  for (const auto& u : users) {
    out += "\n[[users]]\nname = " + toml_string(u.name) + "\n";
    if (!u.token.empty()) out += "token = " + toml_string(u.token) + "\n";
    out += "permissions = [";
    const auto names = u.permissions.names();
    for (std::size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + toml_string(names[i]);
    out += "]\n";
  }
  return out;
}

proto::permission_set default_admin_permissions() {
  proto::permission_set p;
  p.add(proto::permission::files_read);
  p.add(proto::permission::files_write);
  p.add(proto::permission::chat);
  return p;
}

std::string load_or_create_admin_token(const std::filesystem::path& state_dir, const std::string& env_token,
                                       bool& generated) {
  generated = false;
  if (!env_token.empty()) {
    if (env_token.size() < min_token_length) {
      throw config_error("CSKIT_TOKEN must be at least " + std::to_string(min_token_length) + " characters");
    }
    return env_token;
  }
  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  if (ec) throw config_error("cannot create state directory " + state_dir.string() + ": " + ec.message());
  ::chmod(state_dir.c_str(), 0700);
  const auto path = state_dir / "admin.token";

  for (int attempt = 0; attempt < 2; ++attempt) {
    std::string token;
    switch (util::read_private_token(path, token)) {
      case util::token_file_status::ok:
      case util::token_file_status::empty:
        if (token.size() < min_token_length) {
          throw config_error(path.string() + " holds no valid token (delete it to generate a new one)");
        }
        return token;
      case util::token_file_status::not_private:
        throw config_error(path.string() + " is readable by other users; run: chmod 600 " + path.string());
      case util::token_file_status::unreadable:
        throw config_error("cannot read " + path.string() + ": " + std::strerror(errno));
      case util::token_file_status::missing:
        break;
    }
    // Write a private temporary file, then link() it into place: link fails
    // if the name exists, so two servers starting at once agree on one token,
    // and no reader ever sees a half-written file.
    std::string tmp = (state_dir / "admin.token.XXXXXX").string();
    int fd = ::mkstemp(tmp.data());  // mode 0600
    if (fd < 0) throw config_error("cannot create a file in " + state_dir.string() + ": " + std::strerror(errno));
    const std::string fresh = proto::random_hex(32);
    const std::string line = fresh + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) && ::fsync(fd) == 0;
    ::close(fd);
    int linked = ok ? ::link(tmp.c_str(), path.c_str()) : -1;
    int saved = errno;
    ::unlink(tmp.c_str());
    if (!ok) throw config_error("cannot write " + tmp + ": " + std::strerror(saved));
    if (linked != 0) {
      if (saved == EEXIST) continue;  // another process won: read its token
      throw config_error("cannot create " + path.string() + ": " + std::strerror(saved));
    }
    generated = true;
    return fresh;
  }
  throw config_error("cannot read or create " + path.string());
}

}  // namespace cskit::server
