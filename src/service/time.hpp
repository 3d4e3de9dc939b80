#pragma once
// SNTPv4 server (RFC 4330, RFC 5905): answers mode-3 requests with mode-4
// replies carrying the kernel's receive timestamp and a transmit timestamp
// taken just before the reply goes to the kernel. Everything else is
// dropped silently. Serves the host's system clock; it does not discipline it.

#include <cstdint>
#include <string>

#include "net/datagram.hpp"
#include "proto/ntp.hpp"
#include "service/rate_limiter.hpp"

namespace cskit::service {

struct time_options {
  std::string listen;  ///< ADDR[:PORT]; empty: the time service is off
  /// Stratum announced. 10 by default: "a local clock, not known to be
  /// synchronised to anything better", as chrony's `local stratum 10`.
  std::uint8_t stratum = 10;
  /// Reference ID: four ASCII characters ("GPS") or an IPv4 address.
  /// Default 127.127.1.1, the conventional ID of a local clock.
  std::uint32_t reference_id = 0x7F7F0101;
  double root_delay = 0;          ///< seconds
  double root_dispersion = 0.001; ///< seconds
  bucket_limit requests{16, 64};  ///< per source; rate 0: unlimited
  bool kiss_of_death = true;      ///< answer rate-limited sources with KoD RATE
  bool operator==(const time_options&) const = default;
};

/// Parses a reference ID as written in the config: "a.b.c.d" or 1-4 ASCII
/// letters/digits. Returns false when it is neither.
bool parse_reference_id(const std::string& text, std::uint32_t& out);

struct time_stats {
  std::uint64_t answered = 0, kissed = 0, rate_limited = 0, malformed = 0, not_requests = 0, truncated = 0;
};

class time_service final : public net::datagram_handler {
 public:
  explicit time_service(const time_options& o);
  ~time_service() override;
  std::size_t on_datagram(net::datagram& d) override;
  void before_send(std::span<std::uint8_t> reply) override;
  const time_stats& stats() const noexcept { return stats_; }

 private:
  time_options options_;
  proto::ntp::server_clock clock_;
  source_rate_limiter limiter_;
  time_stats stats_;
};

}  // namespace cskit::service
