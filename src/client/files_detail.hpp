#pragma once
// What client/files.cpp (put, remote operations) and client/download.cpp
// (get) share: how a local error is reported, path joining, the time a
// transfer took. Internal to the client library.

#include <chrono>
#include <cstdint>
#include <string>

#include "client/files.hpp"
#include "proto/errc.hpp"

namespace cskit::client::detail {

/// Files up to this size travel in one frame (the server's inline_file_max).
inline constexpr std::uint64_t inline_max = 256 * 1024;
/// Delta transfer: the most chunks of the smallest size a server may
/// describe (docs/protocol.md); past that, a file goes whole.
inline constexpr std::uint64_t max_delta_chunks = 1u << 20;

/// The error code a local errno is reported as.
proto::errc local_errc(int err);
/// "WHAT: why", in words a user reads.
std::string local_message(int err, const std::string& what);
/// "a/b" from "a" and "b" (either may be empty).
std::string join(const std::string& a, const std::string& b);
/// The last component of a path ("dir/" gives "dir").
std::string base_name(std::string p);

/// Sets r.seconds when the transfer is over, however it ends.
struct clock_guard {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  transfer_result& r;
  ~clock_guard() { r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
};

}  // namespace cskit::client::detail
