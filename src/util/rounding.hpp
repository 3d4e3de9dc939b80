#pragma once
// Rounding without libm. The release binary once loaded libm for these
// alone (docs/architecture.md "Start-up cost"; it is now a static PIE),
// and std::round and std::llround are calls into libm wherever GCC chooses not
// to expand them inline (in code it deems cold, for one). These do the same
// with the CPU's truncating conversion and exact arithmetic.

#include <cstdint>
#include <limits>

namespace cskit::util {

/// std::round: the nearest integer, halfway cases away from zero. NaN,
/// infinities and magnitudes of 2^52 or more (integers already) come back
/// unchanged; a result of zero has no sign.
constexpr double round_half_away(double x) noexcept {
  if (!(x > -0x1p52 && x < 0x1p52)) return x;
  const double t = static_cast<double>(static_cast<std::int64_t>(x));  // toward zero, exact here
  const double fraction = x - t;                                        // exact: x's own low bits
  if (fraction >= 0.5) return t + 1.0;
  if (fraction <= -0.5) return t - 1.0;
  return t;
}

/// std::llround, saturating: values beyond the range of int64 give its
/// limits, NaN gives 0 (std::llround leaves both unspecified).
constexpr std::int64_t round_to_int64(double x) noexcept {
  if (x != x) return 0;
  if (x >= 0x1p63) return std::numeric_limits<std::int64_t>::max();
  if (x < -0x1p63) return std::numeric_limits<std::int64_t>::min();
  return static_cast<std::int64_t>(round_half_away(x));
}

/// `x` rounded to `places` decimal places (0 to 9), as printed in --json
/// output: 1.23456 with 3 places is 1.235.
constexpr double round_to_places(double x, int places) noexcept {
  double scale = 1.0;
  for (int i = 0; i < places && i < 9; ++i) scale *= 10.0;
  return round_half_away(x * scale) / scale;
}

}  // namespace cskit::util
