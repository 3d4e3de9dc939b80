#pragma once
// Slows down repeated authentication failures from one address.
//
// Policy: the first `free_failures` failures within `window` cost nothing;
// each further one delays the error reply by base_delay * 2^(k-1), capped at
// max_delay. An address's record is forgotten `window` after its last
// failure, or on a successful login. At most max_entries addresses are
// tracked: when full, expired records are purged, then the oldest half.
// Thread-safe.

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>

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

  /// Records a failure; returns how long to hold back the error reply.
  std::chrono::milliseconds on_failure(const std::string& address, clock::time_point now = clock::now());
  void on_success(const std::string& address);
  /// Recent failures recorded for `address` (for tests and logs).
  int failures(const std::string& address, clock::time_point now = clock::now()) const;

 private:
  struct record {
    int failures = 0;
    clock::time_point last;
  };
  void prune(clock::time_point now);

  policy policy_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, record> records_;
};

}  // namespace cskit::server
