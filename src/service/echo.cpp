#include "service/echo.hpp"

#include <spdlog/spdlog.h>

#include "util/clock.hpp"

namespace cskit::service {

echo_service::echo_service(const echo_options& o) : limiter_(o.packets, o.bytes) {}

echo_service::~echo_service() {
  spdlog::info("echo: {} datagrams echoed; dropped {} truncated, {} over the rate limit, {} from privileged ports",
               stats_.echoed, stats_.truncated, stats_.rate_limited, stats_.privileged_port);
}

std::size_t echo_service::on_datagram(net::datagram& d) {
  if (d.truncated) {
    ++stats_.truncated;
    spdlog::debug("echo: dropped a truncated datagram of {} bytes from {}", d.wire_size, d.source.to_string());
    return no_reply;
  }
  if (d.source.port < 1024) {
    ++stats_.privileged_port;
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
