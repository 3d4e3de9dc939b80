#pragma once
// Bounds how fast anyone can guess tokens (docs/protocol.md, "Failure
// slow-down").
//
// Every login attempt is answered no earlier than the next free slot of its
// source (an address, or an IPv6 /64) and of the user name it names. A
// failure moves both slots on: the first `free_failures` within `window`
// by nothing, then base_delay doubling up to max_delay. Attempts from many
// connections of one source therefore queue up one after another instead of
// being answered in parallel, so the guess rate is bounded whatever the
// parallelism (the 4th attempt within `window` waits base_delay, each one
// after it twice as long as the one before, up to max_delay), and an
// attempt that would have to wait longer than the caller
// allows is refused at once, without being tried (and leaves no record).
// Attempts admitted but not settled yet count as failures to come, each
// queued after the one before it, so attempts on several threads cannot
// share a slot; every admitted attempt is settled by on_failure,
// on_success or abandon. A success clears the user's own record only: a
// valid login by one account never clears what the source has failed. A
// source the user has logged in from (the latest few, kept apart from the
// records and never purged: only real accounts log in) is not held up by
// the user's record, only by its own, so failures from elsewhere cannot
// lock a user out of the places they log in from. A record is forgotten
// `window` after its last failure. At most max_entries records are kept
// per table: when full, expired records are purged, then those without a
// failure, then the oldest half; a record with an attempt in flight is
// never purged. Thread-safe.

#include <chrono>
#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace cskit::server {

class auth_throttle {
 public:
  using clock = std::chrono::steady_clock;

  struct policy {
    int free_failures = 3;
    std::chrono::milliseconds base_delay{250};
    std::chrono::milliseconds max_delay{8000};
    std::chrono::seconds window{600};
    std::size_t max_entries = 65536;
  };

  auth_throttle() = default;
  explicit auth_throttle(policy p) : policy_(p) {}

  /// The time the attempt of `user` from `source` may be answered (now,
  /// or later), or nullopt when that is more than `max_wait` away: refuse
  /// the attempt without trying it. Call on_failure or on_success with the
  /// result.
  std::optional<clock::time_point> admit(const std::string& source, const std::string& user,
                                         std::chrono::milliseconds max_wait, clock::time_point now = clock::now());
  /// The attempt admitted for `at` failed: later attempts of that source
  /// and that user wait for the penalty.
  void on_failure(const std::string& source, const std::string& user, clock::time_point at);
  /// The attempt succeeded: the user's record is cleared (not the
  /// source's), and the source is remembered as one the user logs in from.
  void on_success(const std::string& source, const std::string& user, clock::time_point at = clock::now());
  /// The attempt was admitted but never tried (its connection ended, or
  /// the request turned out malformed): it no longer holds a slot.
  void abandon(const std::string& source, const std::string& user);

  /// Recent failures recorded for a source (for tests and logs).
  int source_failures(const std::string& source, clock::time_point now = clock::now()) const;
  int user_failures(const std::string& user, clock::time_point now = clock::now()) const;

 private:
  struct record {
    int failures = 0;
    clock::time_point last;      // the last failure (or the record's creation)
    clock::time_point next;      // no attempt is answered before
    int pending = 0;             // admitted, not settled yet
    clock::time_point reserved;  // the slot of the latest attempt admitted
    clock::time_point admitted;  // when that attempt was admitted
  };
  static constexpr std::size_t max_known_sources = 8;
  using table = std::unordered_map<std::string, record>;
  clock::time_point slot(const table& t, const std::string& key, clock::time_point now) const;
  bool known_source(const std::string& user, const std::string& source) const;
  record& get(table& t, const std::string& key, clock::time_point now);
  void settle(table& t, const std::string& key);
  std::chrono::milliseconds penalty(int failures) const;
  void prune(table& t, clock::time_point now);
  int failures(const table& t, const std::string& key, clock::time_point now) const;

  policy policy_;
  mutable std::mutex mutex_;
  table sources_;
  table users_;
  std::unordered_map<std::string, std::vector<std::string>> known_;  // user: where it logged in from, latest last
};

}  // namespace cskit::server
