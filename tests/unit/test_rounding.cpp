#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "util/clock.hpp"
#include "util/rounding.hpp"

using namespace cskit::util;

TEST(Rounding, HalfwayCasesGoAwayFromZero) {
  EXPECT_EQ(round_half_away(0.5), 1.0);
  EXPECT_EQ(round_half_away(-0.5), -1.0);
  EXPECT_EQ(round_half_away(2.5), 3.0);
  EXPECT_EQ(round_half_away(-2.5), -3.0);
  EXPECT_EQ(round_half_away(1.4), 1.0);
  EXPECT_EQ(round_half_away(-1.6), -2.0);
  EXPECT_EQ(round_half_away(0.0), 0.0);
}

TEST(Rounding, NoErrorFromAddingAHalf) {
  // floor(x + 0.5) gets these wrong: the addition itself rounds.
  const double below_half = std::nextafter(0.5, 0.0);
  EXPECT_EQ(round_half_away(below_half), 0.0);
  EXPECT_EQ(round_half_away(-below_half), 0.0);
  const double big = 0x1p52 - 0.5;  // 4503599627370495.5
  EXPECT_EQ(round_half_away(big), 0x1p52);
  EXPECT_EQ(round_half_away(std::nextafter(1.5, 0.0)), 1.0);
}

TEST(Rounding, LargeAndSpecialValuesUnchanged) {
  EXPECT_EQ(round_half_away(0x1p52), 0x1p52);
  EXPECT_EQ(round_half_away(1e300), 1e300);
  EXPECT_EQ(round_half_away(-1e300), -1e300);
  EXPECT_EQ(round_half_away(std::numeric_limits<double>::infinity()), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(round_half_away(std::numeric_limits<double>::quiet_NaN())));
}

TEST(Rounding, AgreesWithStdRound) {
  std::mt19937_64 rng(12345);
  std::uniform_real_distribution<double> small(-1000.0, 1000.0);
  std::uniform_int_distribution<int> exponent(-20, 60);
  for (int i = 0; i < 200000; ++i) {
    const double x = i % 2 ? small(rng) : std::ldexp(small(rng), exponent(rng));
    ASSERT_EQ(round_half_away(x), std::round(x) + 0.0) << x;  // + 0.0: std::round keeps the sign of zero
  }
  for (double x = -10.0; x <= 10.0; x += 0.25) ASSERT_EQ(round_half_away(x), std::round(x) + 0.0) << x;
}

TEST(Rounding, ToInt64Saturates) {
  EXPECT_EQ(round_to_int64(2.5), 3);
  EXPECT_EQ(round_to_int64(-2.5), -3);
  EXPECT_EQ(round_to_int64(1e9 * 1.0000000005), 1000000001);
  EXPECT_EQ(round_to_int64(1e300), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(round_to_int64(-1e300), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(round_to_int64(0x1p63), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(round_to_int64(-0x1p63), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(round_to_int64(std::numeric_limits<double>::quiet_NaN()), 0);
  EXPECT_EQ(round_to_int64(0x1p62), std::int64_t{1} << 62);
}

TEST(Rounding, ToPlaces) {
  EXPECT_DOUBLE_EQ(round_to_places(1.23456, 3), 1.235);
  EXPECT_DOUBLE_EQ(round_to_places(-1.23449, 3), -1.234);
  EXPECT_DOUBLE_EQ(round_to_places(0.1234567, 6), 0.123457);
  EXPECT_EQ(round_to_places(7.0, 0), 7.0);
}

TEST(Rounding, PrecisionExponentIsCeilLog2Clamped) {
  EXPECT_EQ(cskit::util::precision_exponent(1e-9), -29);  // 2^-30 < 1 ns <= 2^-29
  EXPECT_EQ(cskit::util::precision_exponent(0x1p-20), -20);
  EXPECT_EQ(cskit::util::precision_exponent(std::nextafter(0x1p-20, 1.0)), -19);
  EXPECT_EQ(cskit::util::precision_exponent(1e-12), -30);
  EXPECT_EQ(cskit::util::precision_exponent(0.75), 0);
  EXPECT_EQ(cskit::util::precision_exponent(5.0), 0);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> exponent(-30.0, 0.0);
  for (int i = 0; i < 100000; ++i) {
    const double p = std::exp2(exponent(rng));
    ASSERT_EQ(cskit::util::precision_exponent(p), std::clamp(static_cast<int>(std::ceil(std::log2(p))), -30, 0)) << p;
  }
}
