#pragma once
// `systemctl reload` (SIGHUP): the configuration read again and applied to
// the running server: accounts, tokens, permissions and limits; sessions
// whose account changed are told and closed. What only a restart can
// change (addresses, the share, TLS, which services run) is named in a
// warning and left as it is.

#include <functional>
#include <string>
#include <vector>

#include "server/config.hpp"

namespace cskit::net {
class tcp_server;
struct reloadable_limits;
}  // namespace cskit::net
namespace cskit::service {
class chat_hub;
class exec_limiter;
class file_share;
}  // namespace cskit::service

namespace cskit::server {

struct server_context;

/// What a reload reaches in the running server.
struct reload_targets {
  server_context& ctx;
  service::chat_hub& hub;
  service::exec_limiter& exec;
  service::file_share& share;
  net::tcp_server& srv;
};

/// The limits of `config` that a running server can take.
net::reloadable_limits reloadable_limits_of(const server_config& config);

/// The settings that differ between `running` and `next` and that only a
/// restart applies ("listen", "[tls]", "[exec] enabled or programs", ...).
std::vector<std::string> changes_needing_restart(const server_config& running, const server_config& next);

/// Reads the configuration with `read`, then applies it to `to`: all of it
/// or, on any error, none (logged; the running configuration stays).
/// Tells the service manager (RELOADING=1, then READY=1). `running` is the
/// configuration the server started with.
void reload_server(const std::function<server_config()>& read, const server_config& running, reload_targets to);

}  // namespace cskit::server
