#pragma once
// The TCP listener and its event loops. One io_context per thread ("one loop
// per thread"): each accepted connection is handed to one loop and lives on
// it, so connection code needs no locks. Asio stays behind this header.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "net/connection.hpp"
#include "net/datagram.hpp"

namespace cskit::net {

struct server_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  unsigned threads = 1;
  std::size_t max_connections = 10000;
  /// Connections not logged in yet (TLS handshake and login in progress):
  /// at most this many in all, and at most max_unauthenticated_per_source
  /// from one source (an IPv4 address, an IPv6 /64).
  std::size_t max_unauthenticated = 4096;
  std::size_t max_unauthenticated_per_source = 128;
  connection_limits limits;
  /// TLS for every connection; null serves cleartext (explicit opt-in only).
  std::shared_ptr<const tls::context> tls;
  /// After SIGINT/SIGTERM: time connections get to finish before being closed.
  std::chrono::milliseconds grace{std::chrono::seconds(5)};
  /// After the TLS handshake, the handler for the protocol agreed on (ALPN),
  /// in place of the factory's (connection::set_protocol_router). Null: the
  /// factory's handler always.
  connection::protocol_router protocol_router;
  /// SIGHUP: re-read the configuration. Runs on the first event loop; the
  /// loops go on serving meanwhile. Null: SIGHUP is logged and ignored.
  std::function<void()> on_reload;
};

/// What a configuration reload may change while the server runs.
struct reloadable_limits {
  std::size_t max_connections = 10000;
  std::size_t max_unauthenticated = 4096;
  std::size_t max_unauthenticated_per_source = 128;
  connection_limits limits;  ///< every connection's deadlines, at once
  std::chrono::milliseconds grace{std::chrono::seconds(5)};
};

class tcp_server {
 public:
  using handler_factory = std::function<std::unique_ptr<frame_handler>()>;
  /// The bytes a listener sends to a connection it refuses (too many
  /// connections), given the reason; null: a cskit `error` frame.
  using refusal_encoder = std::function<std::string(const std::string& reason)>;

  tcp_server(server_options options, handler_factory factory);
  ~tcp_server();
  tcp_server(const tcp_server&) = delete;
  tcp_server& operator=(const tcp_server&) = delete;

  /// Binds and listens. Throws std::system_error with a clear message.
  void listen();
  /// The bound address, e.g. "127.0.0.1:7701" (valid after listen()).
  std::string local_address() const;
  std::uint16_t local_port() const;

  /// Another listening socket, served by the same event loops, limits and
  /// admission as the primary one, whose connections get handlers from
  /// `factory` and TLS from `tls` (null: cleartext). Call before run().
  /// Returns the bound address. Throws std::system_error.
  std::string add_listener(const std::string& host, std::uint16_t port, handler_factory factory,
                           std::shared_ptr<const tls::context> tls, refusal_encoder refusal);

  /// Serves datagrams on HOST:PORT (port 0: any free port) with `handler`,
  /// on one of the event loops, until shutdown. Call before run(). Returns
  /// the bound address. Throws std::system_error.
  std::string add_udp(const std::string& host, std::uint16_t port, const udp_options& options,
                      std::shared_ptr<datagram_handler> handler);
  /// RFC 862 echo: datagrams on UDP via `handler`, raw bytes on TCP, both on
  /// HOST:PORT (port 0: one free port that works for both). Returns the
  /// bound address.
  std::string add_echo(const std::string& host, std::uint16_t port, const udp_options& options,
                       std::shared_ptr<datagram_handler> handler, const tcp_echo_options& tcp_options);

  /// Serves until SIGINT/SIGTERM or stop(), then shuts down gracefully:
  /// stop accepting, ask every session to finish (on_shutdown), wait up to
  /// `grace`, close what is left. Returns when every loop has stopped.
  void run();
  /// Begins graceful shutdown. Safe to call from any thread.
  void stop();

  /// New limits (a configuration reload). Safe to call from any thread.
  void set_limits(const reloadable_limits& l);
  /// Asks every open connection to re-check itself against a configuration
  /// just re-read (frame_handler::on_reload), each on its own loop. Safe to
  /// call from any thread.
  void reload_sessions();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace cskit::net
