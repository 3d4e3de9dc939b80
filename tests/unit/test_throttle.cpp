#include "server/auth_throttle.hpp"

#include <gtest/gtest.h>

using cskit::server::auth_throttle;
using namespace std::chrono_literals;

TEST(auth_throttle, free_failures_then_doubling_delay_with_cap) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  EXPECT_EQ(t.on_failure("10.0.0.1", now), 0ms);
  EXPECT_EQ(t.on_failure("10.0.0.1", now), 0ms);
  EXPECT_EQ(t.on_failure("10.0.0.1", now), 0ms);
  EXPECT_EQ(t.on_failure("10.0.0.1", now), 250ms);
  EXPECT_EQ(t.on_failure("10.0.0.1", now), 500ms);
  EXPECT_EQ(t.on_failure("10.0.0.1", now), 1000ms);
  for (int i = 0; i < 20; ++i) t.on_failure("10.0.0.1", now);
  EXPECT_EQ(t.on_failure("10.0.0.1", now), 8000ms);
  // Other addresses are unaffected.
  EXPECT_EQ(t.on_failure("10.0.0.2", now), 0ms);
}

TEST(auth_throttle, success_and_time_forget) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 5; ++i) t.on_failure("a", now);
  EXPECT_EQ(t.failures("a", now), 5);
  t.on_success("a");
  EXPECT_EQ(t.failures("a", now), 0);
  EXPECT_EQ(t.on_failure("a", now), 0ms);

  for (int i = 0; i < 5; ++i) t.on_failure("b", now);
  auto later = now + 601s;
  EXPECT_EQ(t.failures("b", later), 0);
  EXPECT_EQ(t.on_failure("b", later), 0ms);
}

TEST(auth_throttle, table_is_bounded) {
  auth_throttle::policy p;
  p.max_entries = 100;
  auth_throttle t(p);
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 1000; ++i) t.on_failure("addr" + std::to_string(i), now + std::chrono::milliseconds(i));
  // The most recent address is still tracked; the oldest were dropped.
  EXPECT_EQ(t.failures("addr999", now + 1s), 1);
  EXPECT_EQ(t.failures("addr0", now + 1s), 0);
}
