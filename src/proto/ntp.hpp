#pragma once
// NTP packets (RFC 5905, SNTPv4 per RFC 4330): the 48-byte header, the
// 64-bit timestamp format with its 1900 epoch and eras, and the rules a
// server uses to accept a request and a client uses to trust a reply.
// Pure code: no sockets, no clocks (times are passed in).

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>
#include <string>

namespace cskit::proto::ntp {

inline constexpr std::size_t header_size = 48;
inline constexpr std::uint16_t default_port = 123;
/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix epoch).
inline constexpr std::int64_t unix_epoch_offset = 2208988800LL;
/// Largest version this code understands; requests with VN 1..4 are answered.
inline constexpr int max_version = 4;

enum class mode : std::uint8_t {
  reserved = 0,
  symmetric_active = 1,
  symmetric_passive = 2,
  client = 3,
  server = 4,
  broadcast = 5,
  control = 6,
  private_use = 7,
};

/// Leap indicator; 3 means "clock not synchronised".
enum class leap : std::uint8_t { none = 0, add_second = 1, delete_second = 2, unsynchronised = 3 };

/// The 64-bit NTP timestamp: seconds since the start of the current era
/// (era 0 began 1900-01-01) and a binary fraction of a second. Zero means
/// "unknown". Era 0 ends on 2036-02-07T06:28:16Z, when `seconds` wraps.
struct timestamp {
  std::uint32_t seconds = 0;
  std::uint32_t fraction = 0;

  std::uint64_t raw() const noexcept { return (std::uint64_t{seconds} << 32) | fraction; }
  static timestamp from_raw(std::uint64_t v) noexcept {
    return {static_cast<std::uint32_t>(v >> 32), static_cast<std::uint32_t>(v)};
  }
  bool is_zero() const noexcept { return seconds == 0 && fraction == 0; }
  friend bool operator==(const timestamp&, const timestamp&) = default;
};

/// A Unix time in nanoseconds (covers 1678-2262, both sides of 2036).
using unix_ns = std::int64_t;

/// Unix time -> NTP timestamp. The era number is dropped, as on the wire;
/// the fraction is rounded to the nearest 2^-32 s.
timestamp from_unix(unix_ns t) noexcept;
/// NTP timestamp -> Unix time, choosing the era that puts the result within
/// 68 years of `pivot` (normally the reader's own clock). This is how a
/// timestamp from after the 2036 rollover is read correctly.
unix_ns to_unix(timestamp ts, unix_ns pivot) noexcept;

/// NTP short format (16.16 seconds), used for root delay and dispersion.
double short_to_seconds(std::uint32_t v) noexcept;
/// Saturates at 0 and 65535.99998 s.
std::uint32_t seconds_to_short(double seconds) noexcept;

struct packet {
  leap li = leap::none;
  std::uint8_t version = 4;
  mode mode_ = mode::client;
  std::uint8_t stratum = 0;
  std::int8_t poll = 0;
  std::int8_t precision = 0;
  std::uint32_t root_delay = 0;       ///< short format
  std::uint32_t root_dispersion = 0;  ///< short format
  std::uint32_t reference_id = 0;     ///< in network order when read as 4 bytes
  timestamp reference, origin, receive, transmit;
};

/// Reads the 48-byte header; nullopt if fewer than 48 bytes.
std::optional<packet> parse(std::span<const std::uint8_t> bytes) noexcept;
/// Writes the 48-byte header.
void serialize(const packet& p, std::span<std::uint8_t, header_size> out) noexcept;
std::array<std::uint8_t, header_size> serialize(const packet& p) noexcept;

/// A 4-character ASCII reference ID or kiss code ("LOCL", "RATE") as the
/// 32-bit value whose big-endian bytes are those characters (short strings
/// are padded with NULs).
std::uint32_t ascii_id(std::string_view code) noexcept;
/// Reference ID as a person reads it: ASCII for stratum 0/1 ("GPS", "RATE"),
/// a dotted IPv4 address for stratum 2 and up (or a hex value when it is
/// an IPv6 hash and not printable).
std::string format_reference_id(std::uint32_t id, std::uint8_t stratum);

// ---------------------------------------------------------------- server

/// What the server says about its own clock in every reply.
struct server_clock {
  leap li = leap::none;
  std::uint8_t stratum = 10;  ///< 1..15
  std::int8_t precision = -20;
  std::uint32_t root_delay = 0;        ///< short format
  std::uint32_t root_dispersion = 0;   ///< short format
  std::uint32_t reference_id = 0;
};

/// Why a datagram is not answered. Every one of these is dropped silently.
enum class request_check {
  ok,
  too_short,          ///< fewer than 48 bytes
  bad_length,         ///< not a multiple of 4 (RFC 7822 extension fields are)
  bad_version,        ///< VN 0 or 5..7
  not_client_mode,    ///< anything but mode 3 (control and private modes included)
};
request_check check_request(std::span<const std::uint8_t> datagram) noexcept;
const char* to_string(request_check c) noexcept;

/// Turns a checked request, in place, into the mode-4 reply: VN echoed,
/// poll echoed, origin = the request's transmit timestamp byte for byte,
/// receive = `rx`, reference = `ref`. The transmit timestamp is left for
/// stamp_transmit() just before the reply is sent. Returns the reply size
/// (always 48, never more than the request).
std::size_t make_reply_in_place(std::span<std::uint8_t> datagram, const server_clock& clock, timestamp rx,
                                timestamp ref) noexcept;
/// Kiss-o'-Death reply (RFC 5905 section 7.4): stratum 0, LI 3, the kiss
/// code as reference ID, origin copied, receive and transmit copied from the
/// request so the reply carries no time at all. In place; returns 48.
std::size_t make_kiss_in_place(std::span<std::uint8_t> datagram, std::string_view code) noexcept;
/// Writes the transmit timestamp (bytes 40..47) of a reply.
void stamp_transmit(std::span<std::uint8_t> reply, timestamp tx) noexcept;

// ---------------------------------------------------------------- client

/// A client request: mode 3, the given version, and `cookie` as transmit
/// timestamp (random, so that replies can be matched and the client's clock
/// is not disclosed, as RFC 9109 and chrony do). Everything else zero.
std::array<std::uint8_t, header_size> make_request(std::uint8_t version, std::uint64_t cookie) noexcept;

/// Client-side sanity limits (RFC 5905 section 8 and appendix A.5.1.1).
struct reply_limits {
  double max_root_distance = 1.5;  ///< seconds; MAXDIST in RFC 5905 is 1.5
  double max_delay = 3.0;          ///< seconds of round-trip delay
};

enum class reply_check {
  ok,
  too_short,
  wrong_mode,          ///< not mode 4
  wrong_version,       ///< VN differs from the request's
  bogus_origin,        ///< origin does not match our cookie: not an answer to us
  kiss,                ///< stratum 0: a Kiss-o'-Death, see kiss_code
  unsynchronised,      ///< LI 3 (and not a KoD)
  bad_stratum,         ///< stratum 16 and up
  zero_timestamp,      ///< receive or transmit timestamp is zero
  server_time_reversed,///< transmit earlier than receive
  excessive_distance,  ///< root delay/2 + root dispersion too large
  excessive_delay,     ///< round trip too large (or negative)
};
const char* to_string(reply_check c) noexcept;

/// One measurement, times in Unix nanoseconds.
struct sample {
  packet reply;
  unix_ns t1 = 0;  ///< client transmit (local clock)
  unix_ns t2 = 0;  ///< server receive
  unix_ns t3 = 0;  ///< server transmit
  unix_ns t4 = 0;  ///< client receive (local clock)
  /// ((t2 - t1) + (t3 - t4)) / 2: how far the server's clock is ahead.
  double offset() const noexcept;
  /// (t4 - t1) - (t3 - t2): network round trip.
  double delay() const noexcept;
  /// root delay / 2 + root dispersion + delay / 2 (RFC 5905 root distance).
  double root_distance() const noexcept;
};

/// Checks a reply to a request with `version` and `cookie`, sent at local
/// time t1 and received at t4. On ok, `out` holds the measurement; on kiss,
/// `out.reply.reference_id` holds the kiss code.
reply_check check_reply(std::span<const std::uint8_t> datagram, std::uint8_t version, std::uint64_t cookie,
                        unix_ns t1, unix_ns t4, const reply_limits& limits, sample& out) noexcept;

/// A server's correctness interval: its offset, give or take its root
/// distance. The true offset lies within it if the server tells the truth.
struct interval {
  double offset = 0;
  double distance = 0;
  double low() const noexcept { return offset - distance; }
  double high() const noexcept { return offset + distance; }
};

/// RFC 5905's selection (section 11.2.1, Marzullo's intersection): the
/// largest set of servers whose intervals have a common part, provided it
/// is a majority. `truechimers[i]` tells whether server i is in it; the
/// others are falsetickers. `found` is false when no majority agrees.
struct selection {
  bool found = false;
  double low = 0, high = 0;  ///< the intersection the truechimers share
  std::vector<bool> truechimers;
  int agreeing = 0;
};
selection select_truechimers(const std::vector<interval>& servers);

/// The offset the truechimers of `s` give together: their offsets weighted
/// by the inverse of their root distance (RFC 5905's combine, simplified).
double combined_offset(const std::vector<interval>& servers, const selection& s) noexcept;

}  // namespace cskit::proto::ntp
