#pragma once
// Clock readings shared by the time server and the time client.

#include <cstdint>

namespace cskit::util {

/// CLOCK_REALTIME in nanoseconds since 1970-01-01 UTC.
std::int64_t realtime_ns() noexcept;
/// CLOCK_MONOTONIC in nanoseconds (for rate limits and intervals).
std::int64_t monotonic_ns() noexcept;

/// The precision of the system clock as NTP reports it: log2 of the larger of
/// the clock's resolution and the time it takes to read it, rounded up
/// (-20 is about a microsecond). Measured once, on the first call.
int clock_precision_log2() noexcept;

/// ceil(log2(seconds)) clamped to [-30, 0], the exponent of the smallest
/// power of two not below `seconds`; -30 for anything not above 2^-30.
int precision_exponent(double seconds) noexcept;

/// Leap second the kernel has been told about (adjtimex STA_INS/STA_DEL):
/// 1 for an inserted second, 2 for a deleted one, 0 for none. Read at most
/// once a second.
int kernel_leap_pending() noexcept;

}  // namespace cskit::util
