// Wires the exec service into the request registry. The session has already
// checked authentication and the `exec` permission before any of these run.
#include "server/exec_routes.hpp"

#include "net/connection.hpp"
#include "proto/messages.hpp"

namespace cskit::server {

namespace {
service::exec_sessions& sessions(request& r, const service::exec_policy& policy, service::exec_limiter& limiter) {
  return r.scope.get<service::exec_sessions>("exec", [&] {
    return std::make_shared<service::exec_sessions>(policy, limiter, r.conn, r.user.name);
  });
}
}  // namespace

void register_exec_service(server_context& ctx, const service::exec_policy& policy, service::exec_limiter& limiter) {
  const auto perm = proto::permission::exec;
  const bool listed = policy.options.enabled;
  ctx.registry.add(std::string(proto::type::exec), "exec", perm, [&](request& r) {
    sessions(r, policy, limiter).start(r.id, r.frame.header);
  }, listed);
  ctx.registry.add(std::string(proto::type::exec_stdin), "exec", perm, [&](request& r) {
    if (auto* s = r.scope.find<service::exec_sessions>("exec")) {
      s->stdin_data(r.id, r.frame.body, r.frame.header.value("eof", false));
    }
  }, listed);
  ctx.registry.add(std::string(proto::type::exec_signal), "exec", perm, [&](request& r) {
    if (auto* s = r.scope.find<service::exec_sessions>("exec")) {
      s->signal(r.id, r.frame.header.value("signal", std::string()));
    }
  }, listed);
  ctx.registry.add(std::string(proto::type::exec_resize), "exec", perm, [&](request& r) {
    if (auto* s = r.scope.find<service::exec_sessions>("exec")) s->resize(r.id, r.frame.header);
  }, listed);
}

}  // namespace cskit::server
