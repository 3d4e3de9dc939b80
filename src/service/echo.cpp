#include "service/echo.hpp"

#include <spdlog/spdlog.h>

#include "util/clock.hpp"

#include <algorithm>
#include <iterator>

namespace cskit::service {

namespace {

// Ports of well-known UDP services at or above 1024 that answer what they
// are sent (the reflection and amplification vectors of that range: OpenVPN,
// MS-SQL browser, SSDP, Apple Remote Desktop, STUN, WS-Discovery, SIP,
// NAT-PMP, mDNS, CoAP, BitTorrent DHT, Ubiquiti discovery, memcached,
// Steam): a datagram "from" one of them is never echoed. Below 1024 every
// port is a service's, and refused anyway.
constexpr std::uint16_t reflector_ports[] = {1194, 1434, 1900, 3283, 3478, 3702, 5060,
                                             5351, 5353, 5683, 6881, 10001, 11211, 27015};

bool from_a_service_port(std::uint16_t port) {
  return port < 1024 || std::find(std::begin(reflector_ports), std::end(reflector_ports), port) != std::end(reflector_ports);
}

}  // namespace

echo_service::echo_service(const echo_options& o) : limiter_(o.packets, o.bytes) {}

echo_service::~echo_service() {
  spdlog::info("echo: {} datagrams echoed; dropped {} truncated, {} over the rate limit, {} from service ports",
               stats_.echoed, stats_.truncated, stats_.rate_limited, stats_.service_port);
}

std::size_t echo_service::on_datagram(net::datagram& d) {
  if (d.truncated) {
    ++stats_.truncated;
    spdlog::debug("echo: dropped a truncated datagram of {} bytes from {}", d.wire_size, d.source.to_string());
    return no_reply;
  }
  if (from_a_service_port(d.source.port)) {
    ++stats_.service_port;
    return no_reply;
  }
  if (limiter_.charge(d.source.address, d.source.is_v4, d.data.size(), util::monotonic_ns()) !=
      source_rate_limiter::verdict::allow) {
    ++stats_.rate_limited;
    return no_reply;
  }
  ++stats_.echoed;
  return d.data.size();  // the datagram itself is the reply
}

}  // namespace cskit::service
