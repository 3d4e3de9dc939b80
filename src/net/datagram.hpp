#pragma once
// Datagram services (UDP echo, NTP) see received datagrams through this
// header only: no sockets, no Asio. The network layer receives in batches,
// hands each datagram to a handler, and sends the replies the handler built.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cskit::net {

/// Where a datagram came from. IPv4 addresses are stored IPv4-mapped
/// (::ffff:a.b.c.d) so that one 16-byte key covers both families.
struct udp_source {
  std::array<std::uint8_t, 16> address{};
  std::uint16_t port = 0;
  bool is_v4 = false;

  /// "127.0.0.1:5000" or "[::1]:5000".
  std::string to_string() const;
};

/// The server's own UDP endpoints: a datagram that claims to come from one
/// of them is never answered (a forged source would make the server talk
/// to itself, or two of its services to each other, forever). Ports of
/// every UDP listener, and the addresses they are reachable at: the bound
/// address, or, for a wildcard bind, every address of the host.
struct own_endpoints {
  std::vector<std::uint16_t> ports;
  std::vector<std::array<std::uint8_t, 16>> addresses;  // IPv4-mapped like udp_source
  /// True when `source` is one of them. `destination`: the address the
  /// datagram was sent to (always one of ours).
  bool contains(const udp_source& source, const std::array<std::uint8_t, 16>& destination) const noexcept;
};

struct datagram {
  /// The received bytes. Mutable: a reply is built in place, which is how
  /// the rule "a reply is never larger than its request" is enforced.
  std::span<std::uint8_t> data;
  /// Size on the wire. Larger than data.size() when the datagram did not
  /// fit the receive buffer (then `truncated` is set).
  std::size_t wire_size = 0;
  bool truncated = false;
  udp_source source;
  /// The local address it was sent to (port: the listener's).
  udp_source destination;
  /// Receive time, CLOCK_REALTIME in ns since 1970: the kernel's timestamp
  /// (SO_TIMESTAMPNS) when available, else read right after the receive.
  std::int64_t rx_time_ns = 0;
  bool rx_time_from_kernel = false;
};

class datagram_handler {
 public:
  /// on_datagram's answer for "send nothing" (0 is an empty reply, which
  /// echo sends for an empty datagram).
  static constexpr std::size_t no_reply = static_cast<std::size_t>(-1);

  virtual ~datagram_handler() = default;
  /// Decides what to answer. Builds the reply in place in `d.data` and
  /// returns its size, at most d.data.size(), or no_reply.
  virtual std::size_t on_datagram(datagram& d) = 0;
  /// Called for each reply immediately before the batch of replies is
  /// handed to the kernel (NTP stamps its transmit time here).
  virtual void before_send(std::span<std::uint8_t> reply) { (void)reply; }
};

struct udp_options {
  /// Receive buffer per datagram; bigger datagrams are reported truncated.
  /// 65,536 holds any UDP payload over IPv4 (at most 65,507 bytes).
  std::size_t max_datagram = 65536;
  /// Datagrams taken per recvmmsg()/sent per sendmmsg().
  unsigned batch = 32;
  /// Ask the kernel for receive timestamps (SO_TIMESTAMPNS).
  bool kernel_timestamps = false;
};

struct tcp_echo_options {
  std::size_t max_connections = 64;
  /// A connection with no progress either way for this long is closed.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};
};

}  // namespace cskit::net
