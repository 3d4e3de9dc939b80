#include "server/auth_throttle.hpp"

#include <gtest/gtest.h>

using cskit::server::auth_throttle;
using namespace std::chrono_literals;

namespace {
// "prefix" and a number (built by append: GCC 12 reports false array-bounds
// errors for `named("literal", n)`).
std::string named(const char* prefix, int n) {
  std::string s(prefix);
  s.append(std::to_string(n));
  return s;
}

constexpr auto forever = std::chrono::milliseconds(24h);

// One attempt at `now`; returns how long it waits, after failing.
std::chrono::milliseconds fail_once(auth_throttle& t, const std::string& source, const std::string& user,
                                    auth_throttle::clock::time_point now) {
  auto when = t.admit(source, user, forever, now);
  EXPECT_TRUE(when);
  t.on_failure(source, user, *when);
  return std::chrono::duration_cast<std::chrono::milliseconds>(*when - now);
}
}  // namespace

TEST(auth_throttle, free_failures_then_doubling_waits_with_cap) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  // Sequential attempts, each after the previous answer.
  std::vector<std::chrono::milliseconds> waits;
  for (int i = 0; i < 12; ++i) {
    auto w = fail_once(t, "10.0.0.1", named("u", i), now);  // a new user each time: the source decides
    waits.push_back(w);
    now += w;
  }
  EXPECT_EQ(waits[0], 0ms);
  EXPECT_EQ(waits[2], 0ms);
  EXPECT_EQ(waits[3], 250ms);
  EXPECT_EQ(waits[4], 500ms);
  EXPECT_EQ(waits[5], 1000ms);
  EXPECT_EQ(waits[11], 8000ms);
  // Other sources and users are unaffected.
  EXPECT_EQ(fail_once(t, "10.0.0.2", "v", now), 0ms);
}

TEST(auth_throttle, parallel_attempts_queue_up) {
  // 512 attempts arriving at once from one source: answered one after
  // another, so the guess rate is bounded whatever the parallelism.
  auth_throttle t;
  const auto now = auth_throttle::clock::now();
  auth_throttle::clock::time_point last = now;
  int within_10s = 0;
  for (int i = 0; i < 512; ++i) {
    auto when = t.admit("192.0.2.7", named("user", i % 7), forever, now);
    ASSERT_TRUE(when);
    EXPECT_GE(*when, last);
    last = *when;
    if (*when - now < 10s) ++within_10s;
    t.on_failure("192.0.2.7", named("user", i % 7), *when);
  }
  EXPECT_LE(within_10s, 10);  // a few guesses, not 512
}

TEST(auth_throttle, too_long_a_wait_is_refused_untried) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 8; ++i) fail_once(t, "s", "u", now);
  EXPECT_FALSE(t.admit("s", "other", 1s, now));  // the source's slot is far ahead
  EXPECT_TRUE(t.admit("s2", "other", 1s, now));
}

TEST(auth_throttle, a_valid_login_clears_only_its_user) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  // Three wrong guesses and one valid login, repeated: the source's record
  // keeps growing, so the guesses slow down all the same.
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 3; ++i) now += fail_once(t, "a", "victim", now);
    auto when = t.admit("a", "lowpriv", forever, now);
    ASSERT_TRUE(when);
    now = *when;
    t.on_success("a", "lowpriv", now);
  }
  EXPECT_EQ(t.source_failures("a", now), 12);
  // The next guess takes the slot the login left; the one after it waits
  // as long as if no one had logged in.
  EXPECT_EQ(fail_once(t, "a", "victim", now), 0ms);
  EXPECT_GE(fail_once(t, "a", "victim", now), 4000ms);
  // The user who logged in keeps no record; the victim does.
  EXPECT_EQ(t.user_failures("lowpriv", now), 0);
  EXPECT_EQ(t.user_failures("victim", now), 14);
  t.on_success("a", "victim", now);
  EXPECT_EQ(t.user_failures("victim", now), 0);
  EXPECT_EQ(t.source_failures("a", now), 14);
}

TEST(auth_throttle, one_user_guessed_from_many_sources) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  std::chrono::milliseconds total{0};
  for (int i = 0; i < 20; ++i) total += fail_once(t, named("10.0.0.", i), "admin", now);
  EXPECT_GE(total, 10000ms);  // the user's slot queues them up too
}

TEST(auth_throttle, records_are_forgotten) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 5; ++i) now += fail_once(t, "b", "u", now);
  EXPECT_EQ(t.source_failures("b", now), 5);
  auto later = now + 601s;
  EXPECT_EQ(t.source_failures("b", later), 0);
  EXPECT_EQ(fail_once(t, "b", "u", later), 0ms);
}

TEST(auth_throttle, table_is_bounded) {
  auth_throttle::policy p;
  p.max_entries = 100;
  auth_throttle t(p);
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 1000; ++i) {
    auto at = now + std::chrono::milliseconds(i);
    t.admit(named("addr", i), named("u", i), forever, at);
    t.on_failure(named("addr", i), named("u", i), at);
  }
  // The most recent source is still tracked; the oldest were dropped.
  EXPECT_EQ(t.source_failures("addr999", now + 1s), 1);
  EXPECT_EQ(t.source_failures("addr0", now + 1s), 0);
}

TEST(auth_throttle, failures_elsewhere_cannot_lock_a_user_out_of_a_known_source) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  auto when = t.admit("home", "admin", forever, now);
  ASSERT_TRUE(when);
  t.on_success("home", "admin", *when);
  for (int i = 0; i < 12; ++i) now += fail_once(t, "evil", "admin", now);  // the user's slot is far ahead now
  EXPECT_FALSE(t.admit("elsewhere", "admin", 1s, now));  // an unknown source waits for the user's slot
  when = t.admit("home", "admin", 1s, now);              // the admin at home does not
  ASSERT_TRUE(when);
  EXPECT_EQ(*when, now);
  t.on_success("home", "admin", now);
  EXPECT_FALSE(t.admit("evil", "admin", 1s, now));  // and the attacker's own source is still held back
}

TEST(auth_throttle, attempts_in_flight_do_not_share_a_slot) {
  // Several threads admit attempts of one source before any is settled:
  // each one after the first waits as if those before it had failed.
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 3; ++i) now += fail_once(t, "s", named("u", i), now);  // the free failures
  auto first = t.admit("s", "x", forever, now);
  auto second = t.admit("s", "y", forever, now);
  auto third = t.admit("s", "z", forever, now);
  ASSERT_TRUE(first && second && third);
  EXPECT_EQ(*first - now, 250ms);
  EXPECT_GE(*second - *first, 250ms);
  EXPECT_GT(*third, *second);
  for (const char* u : {"x", "y", "z"}) t.on_failure("s", u, now);
}

TEST(auth_throttle, attempts_in_flight_line_up_as_if_they_had_failed_in_turn) {
  // Past the cap, each attempt in flight waits the full penalty after the
  // one before it, not all for the same slot.
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 10; ++i) now += fail_once(t, "s", named("u", i), now);
  std::vector<auth_throttle::clock::time_point> slots;
  for (int i = 0; i < 4; ++i) {
    auto when = t.admit("s", named("v", i), forever, now);
    ASSERT_TRUE(when);
    slots.push_back(*when);
  }
  for (std::size_t i = 1; i < slots.size(); ++i) EXPECT_GE(slots[i] - slots[i - 1], 8000ms) << i;
  for (int i = 0; i < 4; ++i) t.on_failure("s", named("v", i), slots[static_cast<std::size_t>(i)]);
}

TEST(auth_throttle, an_abandoned_attempt_holds_no_slot) {
  auth_throttle t;
  const auto now = auth_throttle::clock::now();
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(t.admit("s", "victim", forever, now));
    t.abandon("s", "victim");
  }
  // Nothing failed and nothing is in flight: the next attempt, from
  // anywhere, is answered at once.
  auto when = t.admit("elsewhere", "victim", 1s, now);
  ASSERT_TRUE(when);
  EXPECT_EQ(*when, now);
  EXPECT_EQ(t.user_failures("victim", now), 0);
}

TEST(auth_throttle, an_attempt_never_settled_is_dropped_after_the_window) {
  auth_throttle t;
  auto now = auth_throttle::clock::now();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(t.admit(named("s", i), "victim", forever, now));
  auto queued = t.admit("other", "victim", forever, now);
  ASSERT_TRUE(queued);
  EXPECT_GT(*queued - now, 1s);  // twenty in flight: queued behind them
  now += 601s;
  auto when = t.admit("other", "victim", forever, now);
  ASSERT_TRUE(when);
  EXPECT_EQ(*when, now);
}

TEST(auth_throttle, refused_attempts_leave_no_record_and_floods_keep_known_sources) {
  auth_throttle::policy p;
  p.max_entries = 16;
  auth_throttle t(p);
  auto now = auth_throttle::clock::now();
  auto when = t.admit("home", "admin", forever, now);
  ASSERT_TRUE(when);
  t.on_success("home", "admin", *when);
  // The attacker's source is held far back; its refused attempts for
  // thousands of made-up names record nothing, so the records that matter
  // (the user it guessed) stay.
  for (int i = 0; i < 12; ++i) now += fail_once(t, "evil", "admin", now);
  for (int i = 0; i < 5000; ++i) EXPECT_FALSE(t.admit("evil", named("made-up", i), 1s, now));
  EXPECT_EQ(t.user_failures("admin", now), 12);
  EXPECT_EQ(t.source_failures("evil", now), 12);
  // Admitted failures from many sources for many names overflow both
  // tables again and again (the admin's record goes with them); then the
  // admin is guessed at again from elsewhere, so its user slot is far
  // ahead: other sources wait for it, its known place does not.
  for (int i = 0; i < 200; ++i) fail_once(t, named("10.1.0.", i), named("name", i), now);
  for (int i = 0; i < 12; ++i) now += fail_once(t, named("10.2.0.", i), "admin", now);
  EXPECT_FALSE(t.admit("elsewhere", "admin", 1s, now));
  when = t.admit("home", "admin", 1s, now);
  ASSERT_TRUE(when);
  EXPECT_EQ(*when, now);
  t.on_success("home", "admin", *when);
}
