#pragma once
// RFC 862 echo over UDP: each datagram comes back byte for byte. Truncated
// datagrams are never echoed cut; sources are rate limited; datagrams from
// privileged ports and from the well-known reflecting services above them
// are ignored, so that two echo (or chargen, daytime, memcached, ...)
// services can never be made to bounce traffic off each other forever. (A
// datagram forged to come from this server's own endpoints never gets here:
// net::udp_endpoint drops it.)

#include <cstdint>
#include <memory>
#include <string>

#include "net/datagram.hpp"
#include "service/rate_limiter.hpp"

namespace cskit::service {

inline constexpr std::uint16_t echo_default_port = 7;

struct echo_options {
  std::string listen;              ///< ADDR[:PORT]; empty: echo is off
  bucket_limit packets{1000, 2000};                 ///< datagrams/s per source
  bucket_limit bytes{8 << 20, 8 << 20};             ///< bytes/s per source
  std::size_t max_tcp_connections = 64;
  /// Largest datagram echoed; bigger ones arrive truncated and are dropped.
  /// 65,507 is the largest UDP payload over IPv4.
  std::size_t max_datagram = 65507;
  bool operator==(const echo_options&) const = default;
};

struct echo_stats {
  std::uint64_t echoed = 0, truncated = 0, rate_limited = 0, service_port = 0;
};

class echo_service final : public net::datagram_handler {
 public:
  explicit echo_service(const echo_options& o);
  ~echo_service() override;
  std::size_t on_datagram(net::datagram& d) override;
  const echo_stats& stats() const noexcept { return stats_; }

 private:
  source_rate_limiter limiter_;
  echo_stats stats_;
};

}  // namespace cskit::service
