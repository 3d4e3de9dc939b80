#include "proto/ntp.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace ntp = cskit::proto::ntp;
using ntp::timestamp;

namespace {
constexpr std::int64_t s = 1'000'000'000;

std::vector<std::uint8_t> request(std::uint8_t first_byte, std::uint64_t transmit, std::size_t size = 48) {
  std::vector<std::uint8_t> d(size, 0);
  d[0] = first_byte;
  if (size > 2) d[2] = 6;  // poll
  for (std::size_t i = 0; i < 8 && 40 + i < size; ++i) d[40 + i] = static_cast<std::uint8_t>(transmit >> (56 - 8 * i));
  return d;
}
}  // namespace

TEST(ntp_time, unix_epoch_and_fraction) {
  // 1970-01-01 is 2,208,988,800 s after 1900-01-01.
  EXPECT_EQ(ntp::from_unix(0), (timestamp{2208988800u, 0}));
  // Half a second is 0x80000000; 1 ns rounds to 4 (4.29...).
  EXPECT_EQ(ntp::from_unix(s / 2).fraction, 0x80000000u);
  EXPECT_EQ(ntp::from_unix(1).fraction, 4u);
  EXPECT_EQ(ntp::from_unix(s - 1).fraction, 4294967292u);  // no carry into seconds
  // RFC 5905 figure: 2000-01-01 is 3,155,673,600 in era 0.
  EXPECT_EQ(ntp::from_unix(946684800LL * s).seconds, 3155673600u);
}

TEST(ntp_time, era_rollover_2036) {
  // 2036-02-07T06:28:16Z: the seconds field wraps to 0 (era 1 begins).
  const std::int64_t rollover = (4294967296LL - 2208988800LL) * s;
  EXPECT_EQ(ntp::from_unix(rollover - s).seconds, 0xffffffffu);
  EXPECT_EQ(ntp::from_unix(rollover), (timestamp{0, 0}));
  EXPECT_EQ(ntp::from_unix(rollover + 5 * s + s / 4), (timestamp{5, 0x40000000u}));
  // Read back with a pivot on either side of the rollover.
  for (std::int64_t pivot : {rollover - 1000 * s, rollover + 1000 * s, rollover}) {
    EXPECT_EQ(ntp::to_unix(ntp::from_unix(rollover + 5 * s), pivot), rollover + 5 * s);
    EXPECT_EQ(ntp::to_unix(ntp::from_unix(rollover - 5 * s), pivot), rollover - 5 * s);
  }
}

TEST(ntp_time, round_trip_is_within_a_nanosecond) {
  const std::int64_t now = 1795546900LL * s + 123456789;
  for (std::int64_t t : {now, now + 999999999, std::int64_t{0}, std::int64_t{2'500'000'000LL * s + 7}}) {
    const auto back = ntp::to_unix(ntp::from_unix(t), now);
    EXPECT_LE(std::llabs(back - t), 1) << t;
  }
}

TEST(ntp_short, conversion_and_saturation) {
  EXPECT_EQ(ntp::seconds_to_short(1.5), 0x00018000u);
  EXPECT_DOUBLE_EQ(ntp::short_to_seconds(0x00018000u), 1.5);
  EXPECT_EQ(ntp::seconds_to_short(-1), 0u);
  EXPECT_EQ(ntp::seconds_to_short(1e9), 0xffffffffu);
}

TEST(ntp_ids, ascii_and_dotted) {
  EXPECT_EQ(ntp::ascii_id("RATE"), 0x52415445u);
  EXPECT_EQ(ntp::ascii_id("GPS"), 0x47505300u);
  EXPECT_EQ(ntp::format_reference_id(0x47505300u, 1), "GPS");
  EXPECT_EQ(ntp::format_reference_id(0x7F7F0101u, 10), "127.127.1.1");
  EXPECT_EQ(ntp::format_reference_id(0x01020304u, 1), "1.2.3.4");  // not printable: dotted
}

TEST(ntp_server, request_checks) {
  EXPECT_EQ(ntp::check_request(request(0x23, 1)), ntp::request_check::ok);  // LI 0, VN 4, mode 3
  EXPECT_EQ(ntp::check_request(request(0x1b, 1)), ntp::request_check::ok);  // VN 3
  EXPECT_EQ(ntp::check_request(request(0x13, 1)), ntp::request_check::ok);  // VN 2
  EXPECT_EQ(ntp::check_request(request(0x23, 1, 47)), ntp::request_check::too_short);
  EXPECT_EQ(ntp::check_request(request(0x23, 1, 50)), ntp::request_check::bad_length);
  EXPECT_EQ(ntp::check_request(request(0x23, 1, 68)), ntp::request_check::ok);  // an extension field
  EXPECT_EQ(ntp::check_request(request(0x03, 1)), ntp::request_check::bad_version);  // VN 0
  for (std::uint8_t vn = 5; vn <= 7; ++vn) {
    EXPECT_EQ(ntp::check_request(request(static_cast<std::uint8_t>(vn << 3 | 3), 1)), ntp::request_check::bad_version);
  }
  for (std::uint8_t m : {0, 1, 2, 4, 5, 6, 7}) {
    EXPECT_EQ(ntp::check_request(request(static_cast<std::uint8_t>(0x20 | m), 1)), ntp::request_check::not_client_mode)
        << int(m);
  }
}

TEST(ntp_server, reply_copies_origin_and_echoes_version) {
  const std::uint64_t cookie = 0x0123456789abcdefULL;
  auto d = request(0x1b, cookie, 68);  // VN 3 with 20 bytes of extension
  ntp::server_clock c;
  c.stratum = 2;
  c.precision = -23;
  c.reference_id = 0x0a000001;
  c.root_delay = ntp::seconds_to_short(0.25);
  c.root_dispersion = ntp::seconds_to_short(0.5);
  const auto rx = ntp::from_unix(1795546900LL * s + 1000);
  const auto ref = ntp::from_unix(1795546900LL * s);
  const auto n = ntp::make_reply_in_place(d, c, rx, ref);
  ASSERT_EQ(n, 48u);  // never larger than the request
  ntp::stamp_transmit(d, ntp::from_unix(1795546900LL * s + 2000));
  auto p = ntp::parse(std::span(d.data(), n));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->version, 3);
  EXPECT_EQ(p->mode_, ntp::mode::server);
  EXPECT_EQ(p->li, ntp::leap::none);
  EXPECT_EQ(p->stratum, 2);
  EXPECT_EQ(p->poll, 6);
  EXPECT_EQ(p->precision, -23);
  EXPECT_EQ(p->reference_id, 0x0a000001u);
  EXPECT_EQ(p->origin.raw(), cookie);
  EXPECT_EQ(p->receive, rx);
  EXPECT_EQ(p->reference, ref);
  EXPECT_EQ(p->transmit, ntp::from_unix(1795546900LL * s + 2000));
  EXPECT_DOUBLE_EQ(ntp::short_to_seconds(p->root_delay), 0.25);
}

TEST(ntp_server, kiss_of_death_carries_no_time) {
  auto d = request(0x23, 42);
  ASSERT_EQ(ntp::make_kiss_in_place(d, "RATE"), 48u);
  auto p = ntp::parse(d);
  EXPECT_EQ(p->stratum, 0);
  EXPECT_EQ(p->li, ntp::leap::unsynchronised);
  EXPECT_EQ(p->reference_id, ntp::ascii_id("RATE"));
  EXPECT_EQ(p->origin.raw(), 42u);
  EXPECT_EQ(p->version, 4);
}

class ntp_client_checks : public ::testing::Test {
 protected:
  static constexpr std::uint64_t cookie = 0xfeedfacecafebeefULL;
  const std::int64_t t1 = 1795546900LL * s;
  const std::int64_t t4 = t1 + 100'000;  // 100 us later
  std::vector<std::uint8_t> reply;
  void SetUp() override {
    reply = request(0x23, cookie);
    ntp::server_clock c;
    // Server 1 ms ahead; it receives 40 us after t1 and answers 20 us later.
    ntp::make_reply_in_place(reply, c, ntp::from_unix(t1 + 1'040'000), ntp::from_unix(t1));
    ntp::stamp_transmit(reply, ntp::from_unix(t1 + 1'060'000));
  }
  ntp::reply_check check(std::uint8_t version = 4) {
    return ntp::check_reply(reply, version, cookie, t1, t4, {}, out);
  }
  ntp::sample out;
};

TEST_F(ntp_client_checks, offset_and_delay) {
  ASSERT_EQ(check(), ntp::reply_check::ok);
  EXPECT_NEAR(out.offset(), 0.001, 1e-9);  // ((40+1000) + (1060-100)) / 2 us
  EXPECT_NEAR(out.delay(), 80e-6, 1e-9);   // 100 - 20 us
}

TEST_F(ntp_client_checks, rejects_what_cannot_be_trusted) {
  EXPECT_EQ(check(3), ntp::reply_check::wrong_version);
  auto bad = reply;
  bad[24] ^= 1;  // origin
  std::swap(bad, reply);
  EXPECT_EQ(check(), ntp::reply_check::bogus_origin);
  std::swap(bad, reply);
  reply[0] = (reply[0] & 0xf8) | 5;  // broadcast mode
  EXPECT_EQ(check(), ntp::reply_check::wrong_mode);
  reply[0] = (reply[0] & 0xf8) | 4;
  reply[0] |= 0xc0;  // LI 3
  EXPECT_EQ(check(), ntp::reply_check::unsynchronised);
  reply[0] &= 0x3f;
  reply[1] = 16;
  EXPECT_EQ(check(), ntp::reply_check::bad_stratum);
  reply[1] = 0;
  EXPECT_EQ(check(), ntp::reply_check::kiss);
  reply[1] = 10;
  ntp::stamp_transmit(reply, {});
  EXPECT_EQ(check(), ntp::reply_check::zero_timestamp);
  ntp::stamp_transmit(reply, ntp::from_unix(t1 + 1'000'000));  // before its receive time
  EXPECT_EQ(check(), ntp::reply_check::server_time_reversed);
  ntp::stamp_transmit(reply, ntp::from_unix(t1 + 1'060'000));
  // Root distance: dispersion of 2 s is beyond the 1.5 s limit.
  reply[8] = 0, reply[9] = 2, reply[10] = 0, reply[11] = 0;
  EXPECT_EQ(check(), ntp::reply_check::excessive_distance);
  EXPECT_EQ(ntp::check_reply(std::span(reply.data(), 47), 4, cookie, t1, t4, {}, out), ntp::reply_check::too_short);
}

TEST(ntp_client, request_layout) {
  auto r = ntp::make_request(4, 0x1122334455667788ULL);
  EXPECT_EQ(r[0], 0x23);
  EXPECT_EQ(ntp::check_request(r), ntp::request_check::ok);
  EXPECT_EQ(ntp::parse(r)->transmit.raw(), 0x1122334455667788ULL);
  for (int i = 1; i < 40; ++i) EXPECT_EQ(r[i], 0) << i;
}

TEST(ntp_selection, truechimers_and_falsetickers) {
  using ntp::interval;
  // Three honest servers around +0.010 s, one 63 years off.
  std::vector<interval> servers = {{0.010, 0.005}, {0.012, 0.004}, {0.009, 0.006}, {1.99e9, 0.005}};
  auto s = ntp::select_truechimers(servers);
  ASSERT_TRUE(s.found);
  EXPECT_EQ(s.truechimers, (std::vector<bool>{true, true, true, false}));
  EXPECT_EQ(s.agreeing, 3);
  EXPECT_LE(s.low, s.high);
  const double c = ntp::combined_offset(servers, s);
  EXPECT_GT(c, 0.009);
  EXPECT_LT(c, 0.012);
}

TEST(ntp_selection, one_server_is_its_own_majority) {
  auto s = ntp::select_truechimers({{5.0, 0.1}});
  ASSERT_TRUE(s.found);
  EXPECT_EQ(s.truechimers, (std::vector<bool>{true}));
  EXPECT_DOUBLE_EQ(ntp::combined_offset({{5.0, 0.1}}, s), 5.0);
}

TEST(ntp_selection, no_majority_no_selection) {
  // Two servers that disagree: neither can be trusted over the other.
  EXPECT_FALSE(ntp::select_truechimers({{0.0, 0.01}, {100.0, 0.01}}).found);
  // Three that all disagree.
  EXPECT_FALSE(ntp::select_truechimers({{0.0, 0.01}, {10.0, 0.01}, {20.0, 0.01}}).found);
  // Two of three agree: a majority.
  auto s = ntp::select_truechimers({{0.0, 0.01}, {0.005, 0.01}, {20.0, 0.01}});
  ASSERT_TRUE(s.found);
  EXPECT_EQ(s.truechimers, (std::vector<bool>{true, true, false}));
  EXPECT_TRUE(ntp::select_truechimers({}).truechimers.empty());
}
