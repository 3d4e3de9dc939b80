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

 private:
  struct batch;
  boost::asio::awaitable<void> receive_loop();
  void serve_batch(unsigned n);

  boost::asio::ip::udp::socket socket_;
  udp_options options_;
  std::shared_ptr<datagram_handler> handler_;
  std::unique_ptr<batch> batch_;
  bool wildcard_ = false;  // bound to 0.0.0.0/::: replies need the request's destination address
};

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
