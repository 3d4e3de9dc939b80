#pragma once
// Sockets that are not framed cskit connections: a batched UDP endpoint
// (echo, NTP) and a raw TCP echo listener. Both live on one event loop of
// the tcp_server and are closed when it shuts down. Internal to net/: the
// server sees them through tcp_server::add_udp / add_tcp_echo.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "net/datagram.hpp"

namespace cskit::net {

class udp_endpoint {
 public:
  udp_endpoint(boost::asio::io_context& ioc, udp_options options, std::shared_ptr<datagram_handler> handler);
  ~udp_endpoint();
  /// Throws std::system_error with a clear message.
  void bind(const std::string& host, std::uint16_t port);
  std::uint16_t local_port() const;
  std::string local_address() const;
  void start();
  /// Closes the socket; must run on the endpoint's loop.
  void stop();
  /// The server's UDP endpoints, all of them (set before start()).
  void set_own_endpoints(std::shared_ptr<const own_endpoints> own) { own_ = std::move(own); }
  /// The address it is bound to (IPv4-mapped), and whether it is a wildcard.
  std::array<std::uint8_t, 16> bound_address() const;
  bool wildcard() const noexcept { return wildcard_; }

 private:
  struct batch;
  boost::asio::awaitable<void> receive_loop();
  void serve_batch(unsigned n);
  /// False (and counted) for a datagram claiming to come from one of our own endpoints.
  bool from_outside(const datagram& d);

  boost::asio::ip::udp::socket socket_;
  udp_options options_;
  std::shared_ptr<datagram_handler> handler_;
  std::unique_ptr<batch> batch_;
  bool wildcard_ = false;  // bound to 0.0.0.0/::: replies need the request's destination address
  std::shared_ptr<const own_endpoints> own_;
  std::uint64_t from_self_ = 0;  // datagrams dropped: they claimed to come from us
  std::uint16_t local_port_ = 0;
  std::array<std::uint8_t, 16> bound_{};
  bool bound_valid_ = false;
};

/// Every address of this host (IPv4-mapped), loopback included (getifaddrs).
std::vector<std::array<std::uint8_t, 16>> host_addresses();

class tcp_echo_listener {
 public:
  tcp_echo_listener(boost::asio::io_context& ioc, tcp_echo_options options);
  ~tcp_echo_listener();
  void bind(const std::string& host, std::uint16_t port);
  std::uint16_t local_port() const;
  void start();
  void stop();

 private:
  struct shared;
  boost::asio::awaitable<void> accept_loop();
  static boost::asio::awaitable<void> serve(std::shared_ptr<shared> s, boost::asio::ip::tcp::socket sock);

  boost::asio::ip::tcp::acceptor acceptor_;
  std::shared_ptr<shared> shared_;
};

}  // namespace cskit::net
