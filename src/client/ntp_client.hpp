#pragma once
// SNTP client (RFC 4330 / RFC 5905): a few samples, each checked before it
// is trusted, the lowest-delay one kept. Works with any NTP server.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "client/udp.hpp"
#include "proto/ntp.hpp"

namespace cskit::client {

struct time_query_options {
  int samples = 4;
  std::chrono::milliseconds interval{250};  ///< between requests
  std::chrono::milliseconds timeout{1000};  ///< per request
  std::uint8_t version = 4;
  proto::ntp::reply_limits limits;
};

struct time_sample_report {
  int index = 0;
  bool valid = false;
  std::string problem;  ///< why it was rejected (or "no reply")
  proto::ntp::sample sample;
};

struct time_result {
  std::string server;
  std::vector<time_sample_report> samples;
  std::optional<proto::ntp::sample> best;  ///< lowest delay among the valid ones
  std::string kiss;                          ///< kiss code received ("RATE", "DENY", ...), if any
  int sent = 0;
  int valid = 0;
};

/// Queries the server behind `socket`. Never throws for bad replies: each
/// sample says what was wrong. Stops early on a Kiss-o'-Death (RATE, DENY,
/// RSTR) and on ICMP port unreachable (then `refused` is set).
time_result query_time(udp_socket& socket, const time_query_options& options, bool* refused = nullptr);

}  // namespace cskit::client
