#include "client/ntp_client.hpp"

#include <sys/random.h>

#include <array>
#include <thread>

#include "util/clock.hpp"

namespace cskit::client {

namespace ntp = proto::ntp;

namespace {
std::uint64_t random_cookie() {
  std::uint64_t v = 0;
  while (v == 0) {
    if (::getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) {
      v = static_cast<std::uint64_t>(util::realtime_ns()) * 0x9E3779B97F4A7C15ULL;
    }
  }
  return v;
}
}  // namespace

time_result query_time(udp_socket& sock, const time_query_options& o, bool* refused) {
  time_result res;
  res.server = sock.peer();
  if (refused) *refused = false;
  std::array<std::uint8_t, 1024> buf{};
  for (int i = 0; i < o.samples; ++i) {
    if (i > 0) std::this_thread::sleep_for(o.interval);
    time_sample_report rep;
    rep.index = i + 1;
    rep.problem = "no reply";
    const std::uint64_t cookie = random_cookie();
    const auto request = ntp::make_request(o.version, cookie);
    ++res.sent;
    const std::int64_t t1 = util::realtime_ns();
    std::string err;
    if (!sock.send(request, &err)) {
      rep.problem = "send failed: " + err;
      res.samples.push_back(rep);
      if (refused) *refused = true;
      break;
    }
    const std::int64_t deadline = util::monotonic_ns() + std::chrono::nanoseconds(o.timeout).count();
    bool stop = false;
    while (auto got = sock.receive(buf, deadline)) {
      if (got->refused) {
        rep.problem = "port unreachable (nothing listens there)";
        if (refused) *refused = true;
        stop = true;
        break;
      }
      if (got->truncated) continue;  // far bigger than any reply we expect: not one
      ntp::sample s;
      auto check = ntp::check_reply(std::span(buf.data(), got->size), o.version, cookie, t1, got->rx_time_ns,
                                    o.limits, s);
      // A stale reply to an earlier request, or someone else's: keep waiting.
      if (check == ntp::reply_check::bogus_origin || check == ntp::reply_check::too_short) continue;
      rep.sample = s;
      if (check == ntp::reply_check::kiss) {
        res.kiss = ntp::format_reference_id(s.reply.reference_id, 0);
        rep.problem = "Kiss-o'-Death " + res.kiss;
        // RATE: slow down, i.e. send nothing more now. DENY/RSTR: go away.
        // Other codes: this sample is unusable, go on.
        stop = res.kiss == "RATE" || res.kiss == "DENY" || res.kiss == "RSTR";
      } else if (check != ntp::reply_check::ok) {
        rep.problem = ntp::to_string(check);
      } else {
        rep.valid = true;
        rep.problem.clear();
        ++res.valid;
        if (!res.best || s.delay() < res.best->delay()) res.best = s;
      }
      break;
    }
    res.samples.push_back(rep);
    if (stop) break;
  }
  return res;
}

}  // namespace cskit::client
