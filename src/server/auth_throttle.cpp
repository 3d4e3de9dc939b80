#include "server/auth_throttle.hpp"

#include <algorithm>
#include <vector>

namespace cskit::server {

std::chrono::milliseconds auth_throttle::on_failure(const std::string& address, clock::time_point now) {
  std::lock_guard lock(mutex_);
  auto it = records_.find(address);
  if (it == records_.end()) {
    if (records_.size() >= policy_.max_entries) prune(now);
    it = records_.emplace(address, record{}).first;
  } else if (now - it->second.last > policy_.window) {
    it->second.failures = 0;
  }
  record& r = it->second;
  r.failures++;
  r.last = now;
  int excess = r.failures - policy_.free_failures;
  if (excess <= 0) return std::chrono::milliseconds(0);
  auto delay = policy_.base_delay;
  for (int i = 1; i < excess && delay < policy_.max_delay; ++i) delay *= 2;
  return std::min(delay, policy_.max_delay);
}

void auth_throttle::on_success(const std::string& address) {
  std::lock_guard lock(mutex_);
  records_.erase(address);
}

int auth_throttle::failures(const std::string& address, clock::time_point now) const {
  std::lock_guard lock(mutex_);
  auto it = records_.find(address);
  if (it == records_.end() || now - it->second.last > policy_.window) return 0;
  return it->second.failures;
}

void auth_throttle::prune(clock::time_point now) {
  std::erase_if(records_, [&](const auto& kv) { return now - kv.second.last > policy_.window; });
  if (records_.size() < policy_.max_entries) return;
  std::vector<clock::time_point> times;
  times.reserve(records_.size());
  for (const auto& [k, r] : records_) times.push_back(r.last);
  auto mid = times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2);
  std::nth_element(times.begin(), mid, times.end());
  const auto cutoff = *mid;
  std::erase_if(records_, [&](const auto& kv) { return kv.second.last <= cutoff; });
}

}  // namespace cskit::server
