#include "proto/ntp.hpp"

#include <algorithm>
#include "util/rounding.hpp"

#include <cmath>
#include <cstring>

namespace cskit::proto::ntp {
namespace {

constexpr std::int64_t ns_per_s = 1'000'000'000;

std::uint32_t get32(const std::uint8_t* p) noexcept {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}
void put32(std::uint8_t* p, std::uint32_t v) noexcept {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}
timestamp get_ts(const std::uint8_t* p) noexcept { return {get32(p), get32(p + 4)}; }
void put_ts(std::uint8_t* p, timestamp t) noexcept {
  put32(p, t.seconds);
  put32(p + 4, t.fraction);
}

// Byte offsets in the header.
constexpr std::size_t off_root_delay = 4, off_root_disp = 8, off_refid = 12, off_ref = 16, off_origin = 24,
                      off_receive = 32, off_transmit = 40;

std::uint8_t first_byte(leap li, unsigned version, mode m) noexcept {
  return static_cast<std::uint8_t>((static_cast<unsigned>(li) << 6) | ((version & 7u) << 3) |
                                   static_cast<unsigned>(m));
}

}  // namespace

timestamp from_unix(unix_ns t) noexcept {
  std::int64_t sec = t / ns_per_s;
  std::int64_t nsec = t % ns_per_s;
  if (nsec < 0) {
    nsec += ns_per_s;
    --sec;
  }
  timestamp ts;
  ts.seconds = static_cast<std::uint32_t>(static_cast<std::uint64_t>(sec + unix_epoch_offset));
  // Rounded: nsec <= 999,999,999 gives at most 4,294,967,292, so no carry.
  ts.fraction = static_cast<std::uint32_t>(((static_cast<std::uint64_t>(nsec) << 32) + ns_per_s / 2) / ns_per_s);
  return ts;
}

unix_ns to_unix(timestamp ts, unix_ns pivot) noexcept {
  std::int64_t pivot_sec = pivot / ns_per_s;
  if (pivot % ns_per_s < 0) --pivot_sec;
  const std::int64_t pivot_ntp = pivot_sec + unix_epoch_offset;
  // The signed 32-bit distance picks the era nearest the pivot.
  const auto diff = static_cast<std::int32_t>(ts.seconds - static_cast<std::uint32_t>(pivot_ntp));
  const std::int64_t ntp_sec = pivot_ntp + diff;
  const auto frac_ns = static_cast<std::int64_t>((std::uint64_t{ts.fraction} * ns_per_s + (1ULL << 31)) >> 32);
  return (ntp_sec - unix_epoch_offset) * ns_per_s + frac_ns;
}

double short_to_seconds(std::uint32_t v) noexcept { return v / 65536.0; }

std::uint32_t seconds_to_short(double s) noexcept {
  if (!(s > 0)) return 0;  // also NaN
  if (s >= 65536.0) return 0xffffffffu;
  const long long v = util::round_to_int64(s * 65536.0);
  return v > 0xffffffffLL ? 0xffffffffu : static_cast<std::uint32_t>(v);
}

std::optional<packet> parse(std::span<const std::uint8_t> b) noexcept {
  if (b.size() < header_size) return std::nullopt;
  packet p;
  p.li = static_cast<leap>(b[0] >> 6);
  p.version = (b[0] >> 3) & 7;
  p.mode_ = static_cast<mode>(b[0] & 7);
  p.stratum = b[1];
  p.poll = static_cast<std::int8_t>(b[2]);
  p.precision = static_cast<std::int8_t>(b[3]);
  p.root_delay = get32(&b[off_root_delay]);
  p.root_dispersion = get32(&b[off_root_disp]);
  p.reference_id = get32(&b[off_refid]);
  p.reference = get_ts(&b[off_ref]);
  p.origin = get_ts(&b[off_origin]);
  p.receive = get_ts(&b[off_receive]);
  p.transmit = get_ts(&b[off_transmit]);
  return p;
}

void serialize(const packet& p, std::span<std::uint8_t, header_size> o) noexcept {
  o[0] = first_byte(p.li, p.version, p.mode_);
  o[1] = p.stratum;
  o[2] = static_cast<std::uint8_t>(p.poll);
  o[3] = static_cast<std::uint8_t>(p.precision);
  put32(&o[off_root_delay], p.root_delay);
  put32(&o[off_root_disp], p.root_dispersion);
  put32(&o[off_refid], p.reference_id);
  put_ts(&o[off_ref], p.reference);
  put_ts(&o[off_origin], p.origin);
  put_ts(&o[off_receive], p.receive);
  put_ts(&o[off_transmit], p.transmit);
}

std::array<std::uint8_t, header_size> serialize(const packet& p) noexcept {
  std::array<std::uint8_t, header_size> a{};
  serialize(p, std::span<std::uint8_t, header_size>(a));
  return a;
}

std::uint32_t ascii_id(std::string_view code) noexcept {
  std::uint8_t b[4] = {};
  for (std::size_t i = 0; i < 4 && i < code.size(); ++i) b[i] = static_cast<std::uint8_t>(code[i]);
  return get32(b);
}

std::string format_reference_id(std::uint32_t id, std::uint8_t stratum) {
  std::uint8_t b[4];
  put32(b, id);
  if (stratum <= 1) {
    std::string s;
    bool printable = true;
    for (auto c : b) {
      if (c == 0) break;
      if (c < 0x20 || c > 0x7e) printable = false;
      s.push_back(static_cast<char>(c));
    }
    if (printable) return s;
  }
  return std::to_string(b[0]) + "." + std::to_string(b[1]) + "." + std::to_string(b[2]) + "." +
         std::to_string(b[3]);
}

request_check check_request(std::span<const std::uint8_t> d) noexcept {
  if (d.size() < header_size) return request_check::too_short;
  if (d.size() % 4 != 0) return request_check::bad_length;
  const unsigned vn = (d[0] >> 3) & 7;
  if (vn == 0 || vn > max_version) return request_check::bad_version;
  if (static_cast<mode>(d[0] & 7) != mode::client) return request_check::not_client_mode;
  return request_check::ok;
}

const char* to_string(request_check c) noexcept {
  switch (c) {
    case request_check::ok: return "ok";
    case request_check::too_short: return "shorter than 48 bytes";
    case request_check::bad_length: return "length not a multiple of 4";
    case request_check::bad_version: return "unsupported version";
    case request_check::not_client_mode: return "not a client (mode 3) request";
  }
  return "?";
}

std::size_t make_reply_in_place(std::span<std::uint8_t> d, const server_clock& c, timestamp rx,
                                timestamp ref) noexcept {
  const unsigned vn = (d[0] >> 3) & 7;
  const std::uint8_t poll = d[2];
  std::uint8_t transmit[8];
  std::memcpy(transmit, &d[off_transmit], 8);
  d[0] = first_byte(c.li, vn, mode::server);
  d[1] = c.stratum;
  d[2] = poll;
  d[3] = static_cast<std::uint8_t>(c.precision);
  put32(&d[off_root_delay], c.root_delay);
  put32(&d[off_root_disp], c.root_dispersion);
  put32(&d[off_refid], c.reference_id);
  put_ts(&d[off_ref], ref);
  std::memcpy(&d[off_origin], transmit, 8);
  put_ts(&d[off_receive], rx);
  put_ts(&d[off_transmit], rx);  // placeholder until stamp_transmit()
  return header_size;
}

std::size_t make_kiss_in_place(std::span<std::uint8_t> d, std::string_view code) noexcept {
  const unsigned vn = (d[0] >> 3) & 7;
  const std::uint8_t poll = d[2];
  std::uint8_t transmit[8];
  std::memcpy(transmit, &d[off_transmit], 8);
  std::memset(d.data(), 0, header_size);
  d[0] = first_byte(leap::unsynchronised, vn, mode::server);
  d[1] = 0;
  d[2] = poll;
  put32(&d[off_refid], ascii_id(code));
  std::memcpy(&d[off_origin], transmit, 8);
  std::memcpy(&d[off_receive], transmit, 8);
  std::memcpy(&d[off_transmit], transmit, 8);
  return header_size;
}

void stamp_transmit(std::span<std::uint8_t> reply, timestamp tx) noexcept { put_ts(&reply[off_transmit], tx); }

std::array<std::uint8_t, header_size> make_request(std::uint8_t version, std::uint64_t cookie) noexcept {
  packet p;
  p.li = leap::none;
  p.version = version;
  p.mode_ = mode::client;
  p.transmit = timestamp::from_raw(cookie);
  return serialize(p);
}

double sample::offset() const noexcept { return static_cast<double>((t2 - t1) + (t3 - t4)) / 2e9; }

double sample::delay() const noexcept { return static_cast<double>((t4 - t1) - (t3 - t2)) / 1e9; }

double sample::root_distance() const noexcept {
  return short_to_seconds(reply.root_delay) / 2 + short_to_seconds(reply.root_dispersion) + delay() / 2;
}

const char* to_string(reply_check c) noexcept {
  switch (c) {
    case reply_check::ok: return "ok";
    case reply_check::too_short: return "reply shorter than 48 bytes";
    case reply_check::wrong_mode: return "reply is not in server mode (4)";
    case reply_check::wrong_version: return "reply version differs from the request's";
    case reply_check::bogus_origin: return "origin timestamp does not match the request (not an answer to us)";
    case reply_check::kiss: return "Kiss-o'-Death";
    case reply_check::unsynchronised: return "server clock is not synchronised (leap indicator 3)";
    case reply_check::bad_stratum: return "server stratum is 16 or more (unsynchronised)";
    case reply_check::zero_timestamp: return "server receive or transmit timestamp is zero";
    case reply_check::server_time_reversed: return "server transmit time is before its receive time";
    case reply_check::excessive_distance: return "root distance too large";
    case reply_check::excessive_delay: return "round-trip delay negative or too large";
  }
  return "?";
}

reply_check check_reply(std::span<const std::uint8_t> d, std::uint8_t version, std::uint64_t cookie, unix_ns t1,
                        unix_ns t4, const reply_limits& limits, sample& out) noexcept {
  auto p = parse(d);
  if (!p) return reply_check::too_short;
  out = sample{};
  out.reply = *p;
  if (p->mode_ != mode::server) return reply_check::wrong_mode;
  if (p->version != version) return reply_check::wrong_version;
  if (p->origin.raw() != cookie) return reply_check::bogus_origin;
  if (p->stratum == 0) return reply_check::kiss;
  if (p->li == leap::unsynchronised) return reply_check::unsynchronised;
  if (p->stratum >= 16) return reply_check::bad_stratum;
  if (p->receive.is_zero() || p->transmit.is_zero()) return reply_check::zero_timestamp;
  out.t1 = t1;
  out.t4 = t4;
  out.t2 = to_unix(p->receive, t1);
  out.t3 = to_unix(p->transmit, t1);
  if (out.t3 < out.t2) return reply_check::server_time_reversed;
  const double delay = out.delay();
  if (delay < 0 || delay > limits.max_delay) return reply_check::excessive_delay;
  if (out.root_distance() > limits.max_root_distance) return reply_check::excessive_distance;
  return reply_check::ok;
}

selection select_truechimers(const std::vector<interval>& servers) {
  selection out;
  const int n = static_cast<int>(servers.size());
  out.truechimers.assign(servers.size(), false);
  if (n == 0) return out;
  // Endpoints: -1 opens an interval, +1 closes it, 0 is a midpoint.
  struct point {
    double value;
    int type;
  };
  std::vector<point> points;
  for (const auto& s : servers) {
    points.push_back({s.low(), -1});
    points.push_back({s.offset, 0});
    points.push_back({s.high(), +1});
  }
  std::sort(points.begin(), points.end(), [](const point& a, const point& b) {
    return a.value < b.value || (a.value == b.value && a.type < b.type);
  });
  // Allow f falsetickers, f from 0 up to (but not including) half.
  for (int f = 0; 2 * f < n; ++f) {
    int found = 0, chime = 0;
    double low = 0, high = 0;
    bool have_low = false, have_high = false;
    for (const auto& p : points) {
      chime -= p.type;
      if (chime >= n - f) {
        low = p.value;
        have_low = true;
        break;
      }
      if (p.type == 0) ++found;
    }
    chime = 0;
    for (auto it = points.rbegin(); it != points.rend(); ++it) {
      chime += it->type;
      if (chime >= n - f) {
        high = it->value;
        have_high = true;
        break;
      }
      if (it->type == 0) ++found;
    }
    if (found > f || !have_low || !have_high || low > high) continue;
    out.found = true;
    out.low = low;
    out.high = high;
    for (int i = 0; i < n; ++i) {
      const auto& s = servers[static_cast<std::size_t>(i)];
      out.truechimers[static_cast<std::size_t>(i)] = s.low() <= high && s.high() >= low;
      out.agreeing += out.truechimers[static_cast<std::size_t>(i)];
    }
    return out;
  }
  return out;
}

double combined_offset(const std::vector<interval>& servers, const selection& s) noexcept {
  double weights = 0, sum = 0;
  for (std::size_t i = 0; i < servers.size(); ++i) {
    if (!s.truechimers[i]) continue;
    const double w = 1.0 / std::max(servers[i].distance, 1e-9);
    weights += w;
    sum += w * servers[i].offset;
  }
  return weights > 0 ? sum / weights : 0.0;
}

}  // namespace cskit::proto::ntp
