#pragma once
// `cskit serve`: turns a server_config into a running server.

#include <functional>
#include <string>

#include "server/config.hpp"

namespace cskit::server {

struct serve_hooks {
  /// Called once listening, with the bound address (tests use port 0).
  std::function<void(const std::string& address)> on_listening;
  /// SIGHUP (systemctl reload): the configuration read again, as at the
  /// start (file and flags); throws config_error. Null: the start-up
  /// configuration again (its users file and admin token are re-read).
  std::function<server_config()> reload;
};

/// Fills in defaults (state dir, share, name, threads, default admin user),
/// binds, prints the start-up banner to stdout and serves until SIGINT or
/// SIGTERM, then shuts down gracefully. SIGHUP reloads (hooks.reload). Throws config_error for bad
/// configuration and std::system_error when it cannot listen.
void run_server(server_config config, const serve_hooks& hooks = {});

/// The fingerprint of the server's TLS key (`serve --print-fingerprint`),
/// creating the default identity if there is none yet, so that it can be
/// shared before the first start. Throws config_error.
std::string server_fingerprint(server_config config);

}  // namespace cskit::server
