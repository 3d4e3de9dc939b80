#include "server/reload.hpp"

#include <time.h>

#include <spdlog/spdlog.h>

#include "net/service_manager.hpp"
#include "net/tcp_server.hpp"
#include "server/accounts.hpp"
#include "server/session.hpp"
#include "service/chat.hpp"
#include "service/exec.hpp"
#include "service/files.hpp"

namespace cskit::server {

net::reloadable_limits reloadable_limits_of(const server_config& config) {
  net::reloadable_limits r;
  r.max_connections = config.max_connections;
  r.max_unauthenticated = config.max_unauthenticated;
  r.max_unauthenticated_per_source = config.max_unauthenticated_per_address;
  r.limits.idle_timeout = config.idle_timeout;
  r.limits.handshake_timeout = config.handshake_timeout;
  r.limits.frame_timeout = config.frame_timeout;
  r.grace = config.grace;
  return r;
}

std::vector<std::string> changes_needing_restart(const server_config& a, const server_config& b) {
  std::vector<std::string> out;
  auto check = [&out](bool same, const char* what) {
    if (!same) out.emplace_back(what);
  };
  check(a.listen == b.listen, "listen");
  check(a.root == b.root, "root");
  check(a.state_dir == b.state_dir, "state_dir");
  check(a.name == b.name, "name");
  check(a.threads == b.threads, "threads");
  check(a.tls == b.tls, "[tls]");
  check(a.echo == b.echo, "[echo]");
  check(a.time == b.time, "[time]");
  check(a.chat == b.chat, "[chat]");
  check(a.irc == b.irc, "[irc]");
  check(a.web == b.web, "[web]");
  check(a.files.fsync == b.files.fsync, "[files] fsync");
  check((a.files.quota > 0) == (b.files.quota > 0), "[files] quota (turned on or off)");
  // Of [exec], only the limits on concurrent commands are reloaded.
  service::exec_options exec = b.exec;
  exec.max_concurrent = a.exec.max_concurrent;
  exec.max_concurrent_per_user = a.exec.max_concurrent_per_user;
  check(a.exec == exec, "[exec] (apart from max_concurrent and max_concurrent_per_user)");
  return out;
}

namespace {

std::string monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::to_string(static_cast<unsigned long long>(ts.tv_sec) * 1000000ull +
                        static_cast<unsigned long long>(ts.tv_nsec) / 1000);
}

// Everything that can fail comes first: nothing is applied until `next`
// has been read whole and its accounts built.
void apply(const server_config& next, const accounts_setup& accounts, reload_targets to) {
  const auto level = spdlog::level::from_str(next.log_level);
  if (level != spdlog::level::off || next.log_level == "off") spdlog::set_level(level);
  to.srv.set_limits(reloadable_limits_of(next));
  to.exec.set_limits(next.exec.max_concurrent, next.exec.max_concurrent_per_user);
  to.share.set_limits(next.files.max_file_size, next.files.quota);
  to.ctx.set_accounts(accounts.table);
  std::vector<std::string> names;
  for (const auto& u : accounts.table->all()) names.push_back(u->name);
  to.hub.set_accounts(names);
  // Each session compares the account it logged in with to the new one.
  to.srv.reload_sessions();
}

}  // namespace

void reload_server(const std::function<server_config()>& read, const server_config& running, reload_targets to) {
  net::notify_service_manager("RELOADING=1\nMONOTONIC_USEC=" + monotonic_usec() + "\nSTATUS=reloading the configuration");
  std::string status;
  try {
    server_config next = read ? read() : running;
    fill_default_paths(next);
    if (next.name.empty()) next.name = running.name;
    const auto pending = changes_needing_restart(running, next);
    // The admin token stays where the server found it (a new state
    // directory is one of the changes that wait for a restart).
    next.state_dir = running.state_dir;
    const auto level = spdlog::level::from_str(next.log_level);
    if (level == spdlog::level::off && next.log_level != "off") {
      throw config_error("unknown log level '" + next.log_level + "'");
    }
    const accounts_setup accounts = load_accounts(next);
    apply(next, accounts, to);
    if (!pending.empty()) {
      std::string list;
      for (const auto& p : pending) list += (list.empty() ? "" : ", ") + p;
      spdlog::warn("reload: changed, but applied only at the next restart: {}", list);
    }
    status = "reloaded: " + std::to_string(accounts.table->all().size()) + " account(s)" +
             (pending.empty() ? "" : "; a restart is needed for some changes");
    spdlog::info("{}", status);
  } catch (const std::exception& e) {  // config_error, or a file system's error: nothing was applied
    status = std::string("reload failed, the running configuration is kept: ") + e.what();
    spdlog::error("{}", status);
  }
  net::notify_service_manager("READY=1\nSTATUS=" + status);
}

}  // namespace cskit::server
