#include "util/clock.hpp"

#include <sys/timex.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cmath>

namespace cskit::util {
namespace {
std::int64_t read(clockid_t id) noexcept {
  timespec ts{};
  ::clock_gettime(id, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}
}  // namespace

std::int64_t realtime_ns() noexcept { return read(CLOCK_REALTIME); }
std::int64_t monotonic_ns() noexcept { return read(CLOCK_MONOTONIC); }

int clock_precision_log2() noexcept {
  static const int precision = [] {
    timespec res{};
    ::clock_getres(CLOCK_REALTIME, &res);
    const double resolution = static_cast<double>(res.tv_sec) + res.tv_nsec * 1e-9;
    // The cheapest of several rounds, so that one preemption does not count.
    double read_cost = 1.0;
    for (int round = 0; round < 5; ++round) {
      constexpr int n = 200;
      const std::int64_t start = read(CLOCK_REALTIME);
      for (int i = 0; i < n - 1; ++i) read(CLOCK_REALTIME);
      const std::int64_t end = read(CLOCK_REALTIME);
      read_cost = std::min(read_cost, static_cast<double>(end - start) * 1e-9 / n);
    }
    return precision_exponent(std::max({resolution, read_cost, 1e-9}));
  }();
  return precision;
}

int precision_exponent(double seconds) noexcept {
  // Counted up exactly (powers of two are exact doubles) instead of with
  // log2(), which would pull libm's code into the binary (docs/architecture.md,
  // "Start-up cost").
  int k = -30;
  for (double power = 0x1p-30; k < 0 && power < seconds; power *= 2) ++k;
  return k;
}

int kernel_leap_pending() noexcept {
  static std::atomic<std::int64_t> checked_at{-1'000'000'000'000};
  static std::atomic<int> cached{0};
  const std::int64_t now = monotonic_ns();
  if (now - checked_at.load(std::memory_order_relaxed) >= 1'000'000'000) {
    checked_at.store(now, std::memory_order_relaxed);
    timex tx{};  // modes 0: read only, needs no privilege
    int state = ::adjtimex(&tx);
    int leap = 0;
    if (state >= 0) {
      if (tx.status & STA_INS) leap = 1;
      else if (tx.status & STA_DEL) leap = 2;
    }
    cached.store(leap, std::memory_order_relaxed);
  }
  return cached.load(std::memory_order_relaxed);
}

}  // namespace cskit::util
