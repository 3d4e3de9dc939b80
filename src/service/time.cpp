#include "service/time.hpp"

#include <arpa/inet.h>

#include <spdlog/spdlog.h>

#include "util/clock.hpp"

namespace cskit::service {

namespace ntp = proto::ntp;

bool parse_reference_id(const std::string& text, std::uint32_t& out) {
  in_addr a{};
  if (::inet_pton(AF_INET, text.c_str(), &a) == 1) {
    out = ntohl(a.s_addr);
    return true;
  }
  if (text.empty() || text.size() > 4) return false;
  for (char c : text) {
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  out = ntp::ascii_id(text);
  return true;
}

time_service::time_service(const time_options& o)
    : options_(o), limiter_(o.requests, bucket_limit{}) {
  clock_.stratum = o.stratum;
  clock_.reference_id = o.reference_id;
  clock_.root_delay = ntp::seconds_to_short(o.root_delay);
  clock_.root_dispersion = ntp::seconds_to_short(o.root_dispersion);
  clock_.precision = static_cast<std::int8_t>(util::clock_precision_log2());
}

time_service::~time_service() {
  spdlog::info("time: {} requests answered, {} kiss-o'-death; dropped {} over the rate limit, {} malformed, "
               "{} not client requests, {} truncated",
               stats_.answered, stats_.kissed, stats_.rate_limited, stats_.malformed, stats_.not_requests,
               stats_.truncated);
}

std::size_t time_service::on_datagram(net::datagram& d) {
  if (d.truncated) {
    ++stats_.truncated;
    return no_reply;
  }
  switch (ntp::check_request(d.data)) {
    case ntp::request_check::ok:
      break;
    case ntp::request_check::not_client_mode:
      ++stats_.not_requests;  // modes 6 and 7 included: never answered
      return no_reply;
    default:
      ++stats_.malformed;
      return no_reply;
  }
  if (d.source.port == 0) {
    ++stats_.malformed;
    return no_reply;
  }
  if (limiter_.enabled()) {
    const std::int64_t now = util::monotonic_ns();
    if (limiter_.charge(d.source.address, d.source.is_v4, d.data.size(), now) !=
        source_rate_limiter::verdict::allow) {
      // At most one kiss per source per second; the rest are dropped.
      if (options_.kiss_of_death && limiter_.may_notify(d.source.address, d.source.is_v4, now, 1'000'000'000)) {
        ++stats_.kissed;
        return ntp::make_kiss_in_place(d.data, "RATE");
      }
      ++stats_.rate_limited;
      return no_reply;
    }
  }
  const ntp::timestamp rx = ntp::from_unix(d.rx_time_ns);
  // Reference time: when the clock was last known good. The host's clock is
  // disciplined continuously (if at all) by something else, so: the start
  // of the current second, which is never after the receive time.
  const ntp::timestamp ref = ntp::from_unix(d.rx_time_ns - d.rx_time_ns % 1'000'000'000);
  proto::ntp::server_clock c = clock_;
  c.li = static_cast<ntp::leap>(util::kernel_leap_pending());
  ++stats_.answered;
  return ntp::make_reply_in_place(d.data, c, rx, ref);
}

void time_service::before_send(std::span<std::uint8_t> reply) {
  if (reply.size() < ntp::header_size || reply[1] == 0) return;  // a kiss carries no time
  ntp::stamp_transmit(reply, ntp::from_unix(util::realtime_ns()));
}

}  // namespace cskit::service
