// libFuzzer target for the NTP packet parsers (make fuzz): the server's
// check of a request and the replies built in place from it, and the
// client's checks of a reply. Invariants: a reply is never larger than its
// request and parses as a server-mode packet; a reply the client accepts
// has a delay and root distance within its limits and a finite offset.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "proto/ntp.hpp"

using namespace cskit::proto::ntp;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

constexpr unix_ns t1 = 1'800'000'000'000'000'000LL;

void as_server(const std::vector<std::uint8_t>& request) {
  if (check_request(request) != request_check::ok) return;
  std::vector<std::uint8_t> reply = request;
  const server_clock clock;
  const std::size_t n = make_reply_in_place(reply, clock, from_unix(t1), from_unix(t1 - 1'000'000'000));
  check(n == header_size && n <= request.size());
  stamp_transmit(std::span<std::uint8_t>(reply.data(), n), from_unix(t1 + 1000));
  auto p = parse(std::span<const std::uint8_t>(reply.data(), n));
  check(p.has_value() && p->mode_ == mode::server);
  std::vector<std::uint8_t> kiss = request;
  check(make_kiss_in_place(kiss, "RATE") == header_size);
  check(parse(std::span<const std::uint8_t>(kiss.data(), header_size))->stratum == 0);
}

void as_client(const std::vector<std::uint8_t>& reply) {
  if (reply.size() < header_size) return;
  // The cookie the reply's origin carries, so that the later checks are reached.
  std::uint64_t cookie = 0;
  for (int i = 24; i < 32; ++i) cookie = cookie << 8 | reply[static_cast<std::size_t>(i)];
  const reply_limits limits;
  for (std::uint8_t version = 2; version <= 4; ++version) {
    sample s;
    if (check_reply(reply, version, cookie, t1, t1 + 1'000'000, limits, s) != reply_check::ok) continue;
    check(s.delay() >= 0 && s.delay() <= limits.max_delay);
    check(s.root_distance() <= limits.max_root_distance);
    check(std::isfinite(s.offset()));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::vector<std::uint8_t> d(data, data + size);
  (void)parse(d);
  as_server(d);
  as_client(d);
  return 0;
}
