#pragma once
// Client-side UDP: a connected socket (the kernel drops datagrams from any
// other source), kernel receive timestamps, truncation reported, every wait
// bounded. Used by `cskit ping --udp`, `cskit time` and `cskit sync`.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "net/endpoint.hpp"

namespace cskit::client {

class udp_socket {
 public:
  /// Resolves `where` and connects a UDP socket to it. Throws
  /// client_error(connect) when the name does not resolve.
  static udp_socket open(const net::host_port& where);

  udp_socket(udp_socket&& o) noexcept;
  udp_socket& operator=(udp_socket&& o) noexcept;
  ~udp_socket();

  /// The resolved peer, e.g. "127.0.0.1:123".
  const std::string& peer() const noexcept { return peer_; }

  /// Sends one datagram. Returns false (and sets `error`) when the kernel
  /// refuses, e.g. ICMP port unreachable reported for an earlier datagram.
  bool send(std::span<const std::uint8_t> data, std::string* error = nullptr);

  struct received {
    std::size_t size = 0;       ///< bytes placed in the buffer
    std::size_t wire_size = 0;  ///< size the datagram had (> size: truncated)
    bool truncated = false;
    std::int64_t rx_time_ns = 0;  ///< CLOCK_REALTIME, from the kernel when it can
    bool refused = false;         ///< ICMP port unreachable: nothing listens there
  };
  /// Waits until `deadline_mono_ns` (CLOCK_MONOTONIC) for one datagram.
  /// nullopt on timeout.
  std::optional<received> receive(std::span<std::uint8_t> buffer, std::int64_t deadline_mono_ns);

 private:
  udp_socket(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
  int fd_ = -1;
  std::string peer_;
};

}  // namespace cskit::client
