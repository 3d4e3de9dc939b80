#pragma once
// The IRC front end's connections (docs/irc.md): capability negotiation
// (CAP LS 302), login (SASL PLAIN, or PASS for old clients) against the
// server's accounts with the same throttle as the cskit protocol, and
// registration; then every chat command goes to service::irc_chat.

#include <memory>
#include <optional>
#include <string>

#include "net/connection.hpp"
#include "server/session.hpp"
#include "service/irc_chat.hpp"

namespace cskit::server {

/// What every IRC connection shares; lives as long as the server.
struct irc_front {
  irc_front(const server_context& ctx, service::chat_hub& hub, service::irc_settings settings);
  const server_context& ctx;
  service::chat_hub& hub;
  const service::irc_settings settings;
  const service::irc_codec codec;
  const std::string created;                ///< when the server started (RPL_CREATED)
  const std::vector<std::string> isupport;  ///< RPL_ISUPPORT tokens
  /// "ERROR :Closing link: <reason>" with CR LF.
  static std::string closing(std::string_view reason);
};

class irc_session final : public net::frame_handler {
 public:
  /// Replies waiting for one client beyond which it is closed (the
  /// connection's send_queue_high).
  static constexpr std::size_t max_pending_replies = 4u << 20;

  explicit irc_session(const irc_front& front) : front_(front) {}
  ~irc_session() override;

  std::size_t line_limit() const override;
  void on_open(net::connection& c) override;
  void on_frame(net::connection& c, proto::frame&& f) override;
  void on_line(net::connection& c, std::string_view line) override;
  void on_line_too_long(net::connection& c) override;
  void encode_failure(std::string& out, const proto::json& error) override;
  void send_ping(net::connection& c) override;
  void on_shutdown(net::connection& c, std::chrono::milliseconds grace) override;
  /// The accounts were re-read: closed when its account is gone, has a new
  /// token or may no longer chat (other permissions are not IRC's).
  void on_reload(net::connection& c) override;
  void on_close(net::connection& c, std::string_view reason) override;

 private:
  void handle(net::connection& c, const proto::irc::message& m);
  void on_cap(net::connection& c, const proto::irc::message& m);
  void on_authenticate(net::connection& c, const proto::irc::message& m);
  void on_pass(net::connection& c, const proto::irc::message& m);
  void on_quit(net::connection& c, const proto::irc::message& m);
  /// Checks `user`'s token (throttled like the cskit login); `sasl`:
  /// answers with the SASL numerics, else (PASS) closes on failure.
  void log_in(net::connection& c, const std::string& user, const std::string& token, bool sasl);
  void logged_in(net::connection& c, std::shared_ptr<const user_account> u, bool sasl);
  /// Registers once NICK, USER and the login are there and CAP is done.
  void try_register(net::connection& c);
  void welcome(net::connection& c);
  void numeric(net::connection& c, std::string_view what, std::initializer_list<std::string_view> params);
  void close(net::connection& c, std::string_view reason);
  /// Lines to the client: directly before registration, then in the hub's order.
  void send(net::connection& c, std::string lines);
  /// The nickname replies are addressed to ("*" before there is one).
  std::string current_nick() const;

  const irc_front& front_;
  std::unique_ptr<service::irc_chat> chat_;  ///< once registered
  unsigned caps_ = 0;
  bool cap_negotiating_ = false;
  bool cap_302_ = false;
  std::string nick_;
  bool got_user_ = false;
  std::shared_ptr<const user_account> account_;  // as it was at login
  bool login_pending_ = false;
  std::optional<std::string> pass_;  ///< PASS, checked at registration
  bool sasl_started_ = false;
  std::string sasl_buffer_;
  int sasl_failures_ = 0;
  bool quit_given_ = false;
};

}  // namespace cskit::server
