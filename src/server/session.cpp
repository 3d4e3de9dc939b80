#include "server/session.hpp"

#include <spdlog/spdlog.h>

#include "net/admission.hpp"
#include "net/tls.hpp"
#include "proto/limits.hpp"
#include "proto/messages.hpp"
#include "service/files.hpp"
#include "version.hpp"

namespace cskit::server {

using proto::errc;
using proto::json;

std::shared_ptr<const user_account> server_context::find_user(std::string_view name) const {
  const auto table = accounts();
  return table ? table->find(name) : nullptr;
}

std::shared_ptr<const account_table> server_context::accounts() const {
  std::lock_guard lock(accounts_mutex_);
  return accounts_;
}

void server_context::set_accounts(std::shared_ptr<const account_table> table) {
  std::lock_guard lock(accounts_mutex_);
  accounts_ = std::move(table);
}

void session::on_open(net::connection& c) {
  json hello = {{"type", proto::type::hello},
                {"proto", proto::protocol_version},
                {"server", proto::server_software},
                {"version", cskit_version},
                {"name", ctx_.name},
                {"auth", {"hmac-sha256"}}};
  binding_ = c.channel_binding();
  if (!binding_.empty()) {
    // The TLS exporter is fresh for each connection and both sides
    // contribute to it: no nonce is needed (docs/protocol.md, "Proofs").
    spdlog::info("connection from {} ({})", c.peer(), c.tls_description());
    hello["binding"] = proto::to_wire(proto::binding_kind::tls_exporter);
  } else {
    spdlog::info("connection from {} (cleartext)", c.peer());
    server_nonce_ = proto::random_nonce();
    hello["binding"] = proto::to_wire(proto::binding_kind::nonces);
    hello["nonce"] = proto::to_hex(server_nonce_);
  }
  c.send(hello);
}

void session::on_close(net::connection& c, std::string_view reason) {
  scope_.clear(reason);  // services release what this connection held (kill its commands, chat quit)
  if (user_) {
    spdlog::info("closed {} user={} requests={} ({})", c.peer(), user_->name, requests_, reason);
  } else {
    spdlog::info("closed {} before authentication ({})", c.peer(), reason);
  }
}

bool session::on_header(net::connection& c, const json& header) {
  // Only an authenticated request to a streaming route that will be
  // allowed is streamed; everything else is buffered and answered in
  // dispatch() as usual (including its errors).
  if (!user_) return false;
  auto type = header.find("type");
  auto id = header.find("id");
  if (type == header.end() || !type->is_string() || id == header.end() || !id->is_number_unsigned()) return false;
  const auto* route = ctx_.registry.find(type->get_ref<const std::string&>());
  if (!route || !route->on_body_part) return false;
  if (route->needs && !user_->permissions.has(*route->needs)) return false;
  proto::frame f;
  f.header = header;
  streaming_.emplace(request{c, scope_, *user_, id->get<std::uint64_t>(), std::move(f), true});
  streaming_route_ = route;
  return true;
}

void session::on_body_part(net::connection&, std::string_view part) {
  if (!streaming_) return;
  try {
    streaming_route_->on_body_part(*streaming_, part);
  } catch (const json::exception& e) {
    streaming_->error(errc::bad_request, fmt::format("a field has the wrong type ({})", e.what()));
  }
}

void session::on_frame(net::connection& c, proto::frame&& f) {
  if (streaming_) {
    // The end of a streamed frame: its route finishes it.
    ++requests_;
    request r = std::move(*streaming_);
    streaming_.reset();
    try {
      streaming_route_->handler(r);
    } catch (const json::exception& e) {
      r.error(errc::bad_request, fmt::format("'{}': a field has the wrong type ({})", f.type(), e.what()));
    }
    return;
  }
  if (welcome_pending_) {
    // Held until the login's slot comes (a bounded amount).
    held_bytes_ += f.body.size() + 256;
    if (held_.size() >= 256 || held_bytes_ > (1u << 20)) {
      c.fail(errc::bad_request, "too many requests sent ahead of the login's reply");
      return;
    }
    held_.push_back(std::move(f));
    return;
  }
  if (!user_) {
    authenticate(c, f);
  } else {
    dispatch(c, std::move(f));
  }
}

std::optional<session::auth_request> session::parse_auth(net::connection& c, const proto::frame& f) const {
  const auto id = f.id();
  if (f.type() != proto::type::auth) {
    spdlog::info("{}: first frame was '{}', not 'auth'", c.peer(), f.type());
    c.fail(errc::handshake_required, "the first frame must be \"auth\" (see docs/protocol.md)", id);
    return std::nullopt;
  }
  const json& h = f.header;
  auto proto_it = h.find("proto");
  if (proto_it == h.end() || !proto_it->is_number_integer() || proto_it->get<std::int64_t>() != proto::protocol_version) {
    spdlog::info("{}: unsupported protocol version {}", c.peer(), proto_it == h.end() ? "(none)" : proto_it->dump());
    c.fail(errc::unsupported_version,
           "this server speaks protocol version " + std::to_string(proto::protocol_version) + " only", id);
    return std::nullopt;
  }
  auto user_it = h.find("user");
  auto proof_it = h.find("proof");
  if (user_it == h.end() || !user_it->is_string() || proof_it == h.end() || !proof_it->is_string()) {
    c.fail(errc::bad_request, "auth needs string fields user and proof", id);
    return std::nullopt;
  }
  const std::string& name = user_it->get_ref<const std::string&>();
  auto proof = proto::from_hex<32>(proof_it->get_ref<const std::string&>());
  if (!proof || !proto::is_valid_user_name(name)) {
    c.fail(errc::bad_request, "auth: proof must be 64 hex digits, user 1-64 of [A-Za-z0-9._-]", id);
    return std::nullopt;
  }
  auth_request r{name, *proof, binding_.empty() ? proto::binding_kind::nonces : proto::binding_kind::tls_exporter,
                 binding_};
  if (r.kind == proto::binding_kind::nonces) {
    auto nonce_it = h.find("nonce");
    auto client_nonce = nonce_it != h.end() && nonce_it->is_string()
                            ? proto::from_hex<proto::nonce_size>(nonce_it->get_ref<const std::string&>())
                            : std::nullopt;
    if (!client_nonce) {
      c.fail(errc::bad_request, "auth over cleartext needs a nonce of 64 hex digits", id);
      return std::nullopt;
    }
    r.binding = proto::nonce_binding(server_nonce_, *client_nonce);
  }
  return r;
}

void session::authenticate(net::connection& c, proto::frame& f) {
  auto request = parse_auth(c, f);
  if (!request) return;
  const auto id = f.id();
  const json& h = f.header;
  const std::string& name = request->user;
  const auto kind = request->kind;
  const std::string& binding = request->binding;

  // Answered no earlier than the slot of this source and this user name
  // (auth_throttle): parallel attempts queue up instead of multiplying the
  // guess rate. One that would wait past the login deadline is not tried.
  const auto now = auth_throttle::clock::now();
  const std::string source = net::source_key::of(c.peer_address()).describe();
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(c.login_deadline() - now);
  const auto when = ctx_.throttle.admit(source, name, std::max(std::chrono::milliseconds(0), left - std::chrono::seconds(1)), now);
  if (!when) {
    spdlog::warn("login of '{}' from {} refused untried: too many recent failures from {} or for this user", name,
                 c.peer(), source);
    c.fail(errc::auth_failed, "too many failed logins from your address or for this user: try again later", id);
    return;
  }
  const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(*when - now);
  // Settled below as a failure or a success; if anything in between ends
  // the attempt early (an exception closes the connection), as abandoned,
  // so that it never holds a slot of its source or user.
  struct settle_guard {
    auth_throttle& throttle;
    const std::string& source;
    const std::string& user;
    bool settled = false;
    ~settle_guard() {
      if (!settled) throttle.abandon(source, user);
    }
  } guard{ctx_.throttle, source, name};

  // Always compute an HMAC, even for an unknown user, so that response
  // timing does not reveal which user names exist.
  const auto u = ctx_.find_user(name);
  static const std::string decoy_token(32, 'x');
  auto expected = proto::compute_proof(proto::proof_role::client, u ? u->token : decoy_token, name, kind, binding);
  if (!u || !proto::proofs_equal(expected, request->proof)) {
    // A client that shows which TLS channel it computed its proof over
    // lets us tell a relay in the path (which terminates TLS on both
    // sides, so the two ends export different values) from a wrong token.
    auto seen = h.find("binding");
    const bool relayed = kind == proto::binding_kind::tls_exporter && seen != h.end() && seen->is_string() &&
                         !seen->get_ref<const std::string&>().empty() &&
                         seen->get_ref<const std::string&>() != proto::binding_check(binding);
    guard.settled = true;
    ctx_.throttle.on_failure(source, name, *when);
    spdlog::warn("authentication failed from {} for user '{}'{}{}", c.peer(), name,
                 relayed ? ": channel binding mismatch, the client's TLS session is not this one (a TLS-terminating "
                           "relay is in the path)"
                         : "",
                 wait.count() ? fmt::format(" (reply delayed {} ms)", wait.count()) : "");
    c.fail(errc::auth_failed,
           relayed ? "authentication failed: your proof is bound to another TLS session (a relay is in the path)"
                   : "authentication failed: unknown user or wrong token",
           id, wait);
    return;
  }
  guard.settled = true;
  ctx_.throttle.on_success(source, name, *when);
  const std::string server_proof =
      proto::to_hex(proto::compute_proof(proto::proof_role::server, u->token, name, kind, binding));
  if (wait.count() <= 0) return welcome(c, u, id, server_proof);
  welcome_pending_ = true;
  spdlog::info("login of {} as {} held {} ms (recent failures from {})", c.peer(), u->name, wait.count(), source);
  c.run_after(wait, [this, &c, u, id, server_proof] {
    // A reload while the login waited may have changed the account: it
    // logs in as the account is now, if its token is still the one proved.
    const auto now = ctx_.find_user(u->name);
    if (now == nullptr || now->token != u->token) {
      c.fail(errc::auth_failed, "the server's configuration changed during the login: " + account_change(*u, now.get()),
             id);
      return;
    }
    welcome(c, now, id, server_proof);
    auto held = std::move(held_);
    held_.clear();
    held_bytes_ = 0;
    for (auto& f : held) {
      if (c.closing()) break;
      on_frame(c, std::move(f));
    }
  });
}

void session::welcome(net::connection& c, std::shared_ptr<const user_account> u, std::optional<std::uint64_t> id,
                      const std::string& proof) {
  welcome_pending_ = false;
  user_ = std::move(u);
  c.set_authenticated();
  spdlog::info("authenticated {} as {}", c.peer(), user_->name);
  json w = {{"type", proto::type::welcome},
            {"user", user_->name},
            {"permissions", user_->permissions.names()},
            {"proof", proof}};
  if (id) w["id"] = *id;
  c.send(w);
}

namespace {

// A request that starts something new (not the next frame of a transfer in
// flight, such as put.data or get.ranges): refused while shutting down.
bool starts_work(std::string_view type) {
  return type == "put" || type == "get" || type.starts_with("fs.") || type == proto::type::exec;
}

}  // namespace

void session::on_shutdown(net::connection& c, std::chrono::milliseconds grace) {
  auto* files = scope_.find<service::files_session>("files");
  if (files == nullptr || !files->busy()) return frame_handler::on_shutdown(c, grace);
  draining_ = true;
  spdlog::info("{} user={}: shutting down; its transfers have {} ms to finish", c.peer(), user_ ? user_->name : "",
               grace.count());
  wait_for_transfers(c, std::chrono::steady_clock::now() + grace);
}

void session::wait_for_transfers(net::connection& c, std::chrono::steady_clock::time_point until) {
  auto* files = scope_.find<service::files_session>("files");
  const auto now = std::chrono::steady_clock::now();
  if (files == nullptr || !files->busy()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - now);
    return frame_handler::on_shutdown(c, std::max(left, std::chrono::milliseconds(100)));
  }
  // The end of the grace is the server's to call (end_grace): polling
  // stops there, as the connection closes.
  c.run_after(std::chrono::milliseconds(20), [this, &c, until] { wait_for_transfers(c, until); });
}

void session::on_grace_over(net::connection& c) {
  if (auto* files = scope_.find<service::files_session>("files"); files != nullptr && files->busy()) {
    spdlog::info("{} user={}: grace period over with a transfer in flight; it can be resumed", c.peer(),
                 user_ ? user_->name : "");
    files->abandon_transfers(
        "the server shut down before the transfer finished; run the same command again to resume it");
    c.send({{"type", "bye"}, {"code", "shutting_down"}, {"message", "server is shutting down"}});
    c.close_after_flush("server shutdown (grace period over)", std::chrono::milliseconds(500));
    return;
  }
  frame_handler::on_grace_over(c);
}

bool session::still_valid(net::connection& c, const user_account& u) {
  const auto now = ctx_.find_user(u.name);
  const std::string why = account_change(u, now.get());
  if (why.empty()) return true;
  const bool credentials = now == nullptr || now->token != u.token;
  spdlog::warn("{} user={}: closed after the configuration was reloaded: {}", c.peer(), u.name, why);
  c.fail(credentials ? errc::auth_failed : errc::permission_denied,
         "the server's configuration changed: " + why + "; this session is closed");
  return false;
}

void session::on_reload(net::connection& c) {
  if (user_) still_valid(c, *user_);
}

void session::dispatch(net::connection& c, proto::frame&& f) {
  ++requests_;
  const std::string_view type = f.type();
  const auto id = f.id();
  if (draining_ && starts_work(type)) {
    c.send(proto::make_error(errc::shutting_down,
                             "the server is shutting down; run the command again when it is back to go on", id));
    return;
  }
  if (type == proto::type::ping) {
    json pong = {{"type", proto::type::pong}};
    if (id) pong["id"] = *id;
    c.send(pong, f.body);
    return;
  }
  if (type == proto::type::pong) return;  // answer to a ping of ours
  const auto* route = ctx_.registry.find(type);
  if (!route) {
    c.send(proto::make_error(errc::unknown_type, fmt::format("unknown request type '{}'", type), id));
    return;
  }
  if (!id) {
    c.send(proto::make_error(errc::bad_request, fmt::format("request '{}' needs an integer \"id\"", type)));
    return;
  }
  if (route->needs && !user_->permissions.has(*route->needs)) {
    spdlog::info("{} user={}: '{}' refused, needs permission {}", c.peer(), user_->name, type,
                 proto::to_wire(*route->needs));
    c.send(proto::make_error(errc::permission_denied,
                             fmt::format("user '{0}' lacks the '{1}' permission needed for '{2}'; the server's "
                                         "administrator grants it with: cskit user set {0} --perm +{1} (then a "
                                         "reload; sessions opened after it have it)",
                                         user_->name, proto::to_wire(*route->needs), type),
                             id));
    return;
  }
  request r{c, scope_, *user_, *id, std::move(f)};
  try {
    route->handler(r);
  } catch (const json::exception& e) {
    // A field of the wrong JSON type, caught by the library's checked access.
    c.send(proto::make_error(errc::bad_request, fmt::format("'{}': a field has the wrong type ({})", type, e.what()),
                             id));
  }
}

namespace {

// What protects this connection, as the server sees it (info.reply).
json transport_info(const net::connection& c) {
  const std::string tls = c.tls_description();
  if (tls.empty()) return {{"tls", false}};
  return {{"tls", true},
          {"protocol", tls},
          {"kernel_tls_send", c.ktls_send()},
          {"kernel_offers_tls", net::tls::kernel_offers_ktls()}};
}

}  // namespace

void register_core_service(server_context& ctx) {
  ctx.registry.add(std::string(proto::type::info), "core", std::nullopt, [&ctx](request& r) {
    r.reply({{"type", proto::type::info_reply},
             {"server", proto::server_software},
             {"version", cskit_version},
             {"proto", proto::protocol_version},
             {"name", ctx.name},
             {"services", ctx.registry.services()},
             {"user", r.user.name},
             {"permissions", r.user.permissions.names()},
             {"limits", {{"max_header", proto::max_header_size}, {"max_body", proto::max_body_size}}},
             {"transport", transport_info(r.conn)}});
  });
}

}  // namespace cskit::server
