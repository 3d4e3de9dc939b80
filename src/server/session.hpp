#pragma once
// The per-connection protocol state machine: hello, mutual authentication,
// then request dispatch through the registry (docs/protocol.md).

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "net/connection.hpp"
#include "proto/auth.hpp"
#include "server/accounts.hpp"
#include "server/auth_throttle.hpp"
#include "server/config.hpp"
#include "server/registry.hpp"

namespace cskit::server {

/// Everything sessions share; immutable once the server runs, apart from
/// the (thread-safe) throttle and the accounts, which a reload replaces.
struct server_context {
  server_context() = default;
  explicit server_context(auth_throttle::policy throttle_policy) : throttle(throttle_policy) {}

  std::string name;
  request_registry registry;
  mutable auth_throttle throttle;  // thread-safe

  /// The account named `name` now; null when there is none.
  std::shared_ptr<const user_account> find_user(std::string_view name) const;
  std::shared_ptr<const account_table> accounts() const;
  /// Replaces the accounts (start-up, reload); sessions already logged in
  /// keep theirs until they check (on_reload). Thread-safe.
  void set_accounts(std::shared_ptr<const account_table> table);

 private:
  mutable std::mutex accounts_mutex_;
  std::shared_ptr<const account_table> accounts_;
};

class session final : public net::frame_handler {
 public:
  explicit session(const server_context& ctx) : ctx_(ctx) {}

  void on_open(net::connection& c) override;
  void on_frame(net::connection& c, proto::frame&& f) override;
  bool on_header(net::connection& c, const proto::json& header) override;
  void on_body_part(net::connection& c, std::string_view part) override;
  void on_close(net::connection& c, std::string_view reason) override;
  /// Transfers in flight finish within the grace period (new requests are
  /// refused); then `bye`. At its end, what is still in flight is told it
  /// can be resumed.
  void on_shutdown(net::connection& c, std::chrono::milliseconds grace) override;
  void on_grace_over(net::connection& c) override;
  /// The accounts were re-read: a session whose account is gone, has a new
  /// token or lost a permission is told why and closed.
  void on_reload(net::connection& c) override;

 private:
  void wait_for_transfers(net::connection& c, std::chrono::steady_clock::time_point until);
  // What a well-formed `auth` asks: who, the proof, and what it is bound to.
  struct auth_request {
    std::string user;
    std::array<std::uint8_t, 32> proof{};
    proto::binding_kind kind{};
    std::string binding;
  };
  /// Checks the first frame; answers and returns nullopt when it is not a
  /// well-formed `auth`.
  std::optional<auth_request> parse_auth(net::connection& c, const proto::frame& f) const;
  void authenticate(net::connection& c, proto::frame& f);
  void welcome(net::connection& c, std::shared_ptr<const user_account> u, std::optional<std::uint64_t> id,
               const std::string& proof);
  /// False (and the connection failed) when the account changed since the
  /// session logged in as `u`.
  bool still_valid(net::connection& c, const user_account& u);
  void dispatch(net::connection& c, proto::frame&& f);

  const server_context& ctx_;
  proto::nonce server_nonce_{};  // cleartext only
  std::string binding_;          // TLS: the connection's exporter value
  // A login that succeeded but waits for its slot (auth_throttle): the
  // frames pipelined behind it are held, and handled after `welcome`.
  bool welcome_pending_ = false;
  std::vector<proto::frame> held_;
  std::size_t held_bytes_ = 0;
  std::shared_ptr<const user_account> user_;  // as it was at login
  std::uint64_t requests_ = 0;
  bool draining_ = false;  // shutting down: only what is in flight goes on
  connection_scope scope_;
  // The request whose body is being streamed to its route.
  std::optional<request> streaming_;
  const request_registry::route* streaming_route_ = nullptr;
};

/// Registers the requests every server answers (`info`).
void register_core_service(server_context& ctx);

}  // namespace cskit::server
