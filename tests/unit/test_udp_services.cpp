// Datagram services and the UDP ping bookkeeping, without sockets.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "client/clock_adjust.hpp"
#include "client/udp_ping.hpp"
#include "proto/ntp.hpp"
#include "service/echo.hpp"
#include "service/rate_limiter.hpp"
#include "service/time.hpp"
#include "util/clock.hpp"

using namespace cskit;

namespace {
constexpr std::int64_t ms = 1'000'000;

net::udp_source v4(std::uint8_t last, std::uint16_t port = 40000) {
  net::udp_source s;
  s.is_v4 = true;
  s.address[10] = s.address[11] = 0xff;
  s.address[12] = 10;
  s.address[15] = last;
  s.port = port;
  return s;
}

net::datagram make(std::vector<std::uint8_t>& bytes, net::udp_source src) {
  net::datagram d;
  d.data = bytes;
  d.wire_size = bytes.size();
  d.source = src;
  d.rx_time_ns = util::realtime_ns();
  return d;
}
}  // namespace

TEST(rate_limiter, bucket_refills_at_its_rate) {
  service::source_rate_limiter l({10, 5}, {});
  const auto a = v4(1).address;
  int allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += l.charge(a, true, 100, 0) == service::source_rate_limiter::verdict::allow;
  EXPECT_EQ(allowed, 5);  // the burst
  // 10 per second: after 300 ms, 3 more.
  allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += l.charge(a, true, 100, 300 * ms) == service::source_rate_limiter::verdict::allow;
  EXPECT_EQ(allowed, 3);
  // Another source has its own bucket.
  EXPECT_EQ(l.charge(v4(2).address, true, 100, 300 * ms), service::source_rate_limiter::verdict::allow);
}

TEST(rate_limiter, bytes_limit_and_ipv6_prefix) {
  service::source_rate_limiter l({}, {1000, 1500});
  std::array<std::uint8_t, 16> a{0x20, 0x01, 0x0d, 0xb8};
  EXPECT_EQ(l.charge(a, false, 1000, 0), service::source_rate_limiter::verdict::allow);
  a[15] = 7;  // same /64: same bucket
  EXPECT_EQ(l.charge(a, false, 1000, 0), service::source_rate_limiter::verdict::limit);
  a[7] = 1;  // another /64
  EXPECT_EQ(l.charge(a, false, 1000, 0), service::source_rate_limiter::verdict::allow);
}

TEST(rate_limiter, table_is_bounded_and_forgets_the_oldest) {
  service::source_rate_limiter l({1, 1}, {}, 16);
  // Far more sources than entries: every new one still gets its burst.
  for (int i = 0; i < 1000; ++i) {
    auto src = v4(static_cast<std::uint8_t>(i), 1);
    src.address[13] = static_cast<std::uint8_t>(i >> 8);
    EXPECT_EQ(l.charge(src.address, true, 1, i), service::source_rate_limiter::verdict::allow);
  }
  EXPECT_TRUE(l.may_notify(v4(1).address, true, 0, 1000 * ms));
  EXPECT_FALSE(l.may_notify(v4(1).address, true, 500 * ms, 1000 * ms));
  EXPECT_TRUE(l.may_notify(v4(1).address, true, 1000 * ms, 1000 * ms));
}

TEST(echo_service, echoes_whole_datagrams_only) {
  service::echo_options o;
  service::echo_service e(o);
  std::vector<std::uint8_t> b{1, 2, 3};
  auto d = make(b, v4(1));
  EXPECT_EQ(e.on_datagram(d), 3u);
  d.truncated = true;
  EXPECT_EQ(e.on_datagram(d), net::datagram_handler::no_reply);
  auto p = make(b, v4(1, 19));  // chargen's port: never answered
  EXPECT_EQ(e.on_datagram(p), net::datagram_handler::no_reply);
  auto m = make(b, v4(1, 11211));  // memcached's: a reflector above 1024
  EXPECT_EQ(e.on_datagram(m), net::datagram_handler::no_reply);
  std::vector<std::uint8_t> empty;
  auto z = make(empty, v4(1));
  EXPECT_EQ(e.on_datagram(z), 0u);  // an empty datagram gets an empty reply
  EXPECT_EQ(e.stats().echoed, 2u);
  EXPECT_EQ(e.stats().truncated, 1u);
  EXPECT_EQ(e.stats().service_port, 2u);
}

TEST(own_endpoints, a_forged_source_of_ours_is_recognised) {
  net::own_endpoints own;
  own.ports = {7007, 12300};
  std::array<std::uint8_t, 16> ten{};  // 10.0.0.5, one of the host's addresses
  ten[10] = ten[11] = 0xff;
  ten[12] = 10, ten[15] = 5;
  own.addresses.push_back(ten);
  auto dst = v4(2).address;  // the address it was sent to (192.0.2.2 here)
  net::udp_source s = v4(2, 7007);
  EXPECT_TRUE(own.contains(s, dst));       // from the very address it was sent to, our port
  s = v4(2, 12300);
  EXPECT_TRUE(own.contains(s, dst));       // from our other service
  s = v4(9, 7007);
  EXPECT_FALSE(own.contains(s, dst));      // our port, but another host
  net::udp_source lo;
  lo.is_v4 = true;
  lo.address[10] = lo.address[11] = 0xff;
  lo.address[12] = 127, lo.address[15] = 1;
  lo.port = 7007;
  EXPECT_TRUE(own.contains(lo, dst));      // loopback is always us
  net::udp_source t;
  t.address = ten;
  t.port = 12300;
  EXPECT_TRUE(own.contains(t, dst));       // another address of ours
  t.port = 40000;
  EXPECT_FALSE(own.contains(t, dst));      // not one of our ports
}

TEST(time_service, answers_requests_and_kisses_when_limited) {
  service::time_options o;
  o.requests = {1, 2};
  service::time_service t(o);
  auto req = proto::ntp::make_request(4, 77);
  int answered = 0, kisses = 0, dropped = 0;
  for (int i = 0; i < 6; ++i) {
    std::vector<std::uint8_t> b(req.begin(), req.end());
    auto d = make(b, v4(9, 123));  // NTP clients may use port 123
    auto n = t.on_datagram(d);
    if (n == net::datagram_handler::no_reply) {
      ++dropped;
      continue;
    }
    t.before_send(std::span(b.data(), n));
    auto p = proto::ntp::parse(b);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->origin.raw(), 77u);
    if (p->stratum == 0) {
      ++kisses;
      EXPECT_EQ(p->reference_id, proto::ntp::ascii_id("RATE"));
    } else {
      ++answered;
      EXPECT_EQ(p->stratum, 10);
      EXPECT_GE(p->transmit.raw(), p->receive.raw());
    }
  }
  EXPECT_EQ(answered, 2);  // the burst
  EXPECT_EQ(kisses, 1);    // one kiss per second
  EXPECT_EQ(dropped, 3);
  std::vector<std::uint8_t> mode6(48, 0);
  mode6[0] = 0x26;
  auto d = make(mode6, v4(3));
  EXPECT_EQ(t.on_datagram(d), net::datagram_handler::no_reply);
  EXPECT_EQ(t.stats().not_requests, 1u);
}

TEST(time_service, reference_ids_from_config) {
  std::uint32_t id = 0;
  EXPECT_TRUE(service::parse_reference_id("GPS", id));
  EXPECT_EQ(id, 0x47505300u);
  EXPECT_TRUE(service::parse_reference_id("192.168.1.2", id));
  EXPECT_EQ(id, 0xC0A80102u);
  EXPECT_FALSE(service::parse_reference_id("TOOLONG", id));
  EXPECT_FALSE(service::parse_reference_id("a b", id));
  EXPECT_FALSE(service::parse_reference_id("", id));
}

TEST(udp_probes, replies_duplicates_reordering_and_corruption) {
  client::udp_probes p(0xabcdef01, 56);
  auto one = p.make(1, 1000, 10);
  auto two = p.make(2, 2000, 20);
  auto three = p.make(3, 3000, 30);
  EXPECT_EQ(one.size(), 56u);
  EXPECT_EQ(std::memcmp(one.data(), "CSKP", 4), 0);
  using k = client::udp_probes::kind;
  auto r = p.classify(two);
  EXPECT_EQ(r.what, k::reply);
  EXPECT_EQ(r.seq, 2u);
  EXPECT_EQ(r.send_real_ns, 2000);
  r = p.classify(one);  // answered after a later probe
  EXPECT_EQ(r.what, k::reply);
  EXPECT_TRUE(r.out_of_order);
  EXPECT_EQ(p.classify(one).what, k::duplicate);
  three[40] ^= 0xff;
  EXPECT_EQ(p.classify(three).what, k::corrupt);
  three[40] ^= 0xff;
  EXPECT_EQ(p.classify(std::span(three.data(), 55)).what, k::corrupt);  // cut short
  EXPECT_EQ(p.classify(three).what, k::reply);
  client::udp_probes other(0x12345678, 56);
  EXPECT_EQ(other.classify(three).what, k::stray);  // another run's probe
  std::vector<std::uint8_t> junk(56, 'x');
  EXPECT_EQ(p.classify(junk).what, k::stray);
  EXPECT_EQ(p.duplicates(), 1u);
  EXPECT_EQ(p.reordered(), 1u);
  EXPECT_EQ(p.corrupted(), 2u);
  EXPECT_TRUE(p.answered(3));
}

TEST(udp_probes, rtt_summary_like_ping) {
  auto s = client::rtt_summary::of({1.0, 2.0, 3.0});
  EXPECT_DOUBLE_EQ(s.min, 1.0);
  EXPECT_DOUBLE_EQ(s.avg, 2.0);
  EXPECT_DOUBLE_EQ(s.max, 3.0);
  EXPECT_NEAR(s.mdev, 0.8165, 1e-4);
}

TEST(clock_adjust, slew_small_offsets_step_large_ones) {
  using client::clock_method;
  EXPECT_EQ(client::choose_clock_method(0.2, {}), clock_method::slew);
  EXPECT_EQ(client::choose_clock_method(-0.49, {}), clock_method::slew);
  EXPECT_EQ(client::choose_clock_method(0.5, {}), clock_method::step);
  EXPECT_EQ(client::choose_clock_method(-3, {}), clock_method::step);
  EXPECT_EQ(client::choose_clock_method(-3, clock_method::slew), clock_method::slew);
  EXPECT_EQ(client::choose_clock_method(0.001, clock_method::step), clock_method::step);
}
