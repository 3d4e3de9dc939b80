#pragma once
#include "server/session.hpp"
#include "service/exec.hpp"

namespace cskit::server {

/// Registers exec, exec.stdin, exec.signal and exec.resize (permission
/// `exec`). `policy` and `limiter` must outlive the server.
void register_exec_service(server_context& ctx, const service::exec_policy& policy, service::exec_limiter& limiter);

}  // namespace cskit::server
