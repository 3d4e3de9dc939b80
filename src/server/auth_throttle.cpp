#include "server/auth_throttle.hpp"

#include <algorithm>
#include <vector>

namespace cskit::server {

auth_throttle::record& auth_throttle::get(table& t, const std::string& key, clock::time_point now) {
  auto it = t.find(key);
  if (it == t.end()) {
    if (t.size() >= policy_.max_entries) prune(t, now);
    it = t.emplace(key, record{0, now, now}).first;
  } else if (it->second.failures > 0 && now - it->second.last > policy_.window) {
    it->second.failures = 0;  // forgotten
  }
  return it->second;
}

std::chrono::milliseconds auth_throttle::penalty(int failures) const {
  const int excess = failures - policy_.free_failures;
  if (excess <= 0) return std::chrono::milliseconds(0);
  auto delay = policy_.base_delay;
  for (int i = 1; i < excess && delay < policy_.max_delay; ++i) delay *= 2;
  return std::min(delay, policy_.max_delay);
}

auth_throttle::clock::time_point auth_throttle::slot(const record& r, clock::time_point now) const {
  // Attempts admitted but not yet settled are counted as failures to
  // come: one more waits for the penalty it would then owe, so attempts
  // on several threads at once cannot share a slot.
  const auto from = std::max(now, r.next);
  return r.pending > 0 ? from + penalty(r.failures + r.pending + 1) : from;
}

std::optional<auth_throttle::clock::time_point> auth_throttle::admit(const std::string& source, const std::string& user,
                                                                     std::chrono::milliseconds max_wait,
                                                                     clock::time_point now) {
  std::lock_guard lock(mutex_);
  record& s = get(sources_, source, now);
  record& u = get(users_, user, now);
  // A source the user logged in from before is not held up by the user's
  // record: failures from elsewhere cannot lock the user out of the
  // places they log in from.
  const bool known = std::find(u.good_sources.begin(), u.good_sources.end(), source) != u.good_sources.end();
  const auto when = std::max(slot(s, now), known ? now : slot(u, now));
  if (when - now > max_wait) return std::nullopt;
  ++s.pending;
  ++u.pending;
  return when;
}

void auth_throttle::on_failure(const std::string& source, const std::string& user, clock::time_point at) {
  std::lock_guard lock(mutex_);
  for (auto* t : {&sources_, &users_}) {
    record& r = get(*t, t == &sources_ ? source : user, at);
    if (r.pending > 0) --r.pending;
    ++r.failures;
    r.last = at;
    // The next attempt pays for this failure: the 4th waits base_delay,
    // the 5th twice that, and so on.
    r.next = std::max(r.next, at) + penalty(r.failures + 1);
  }
}

void auth_throttle::on_success(const std::string& source, const std::string& user, clock::time_point at) {
  std::lock_guard lock(mutex_);
  record& s = get(sources_, source, at);
  if (s.pending > 0) --s.pending;
  record& u = get(users_, user, at);
  if (u.pending > 0) --u.pending;
  u.failures = 0;  // the user's own record only: the source keeps what it failed
  u.next = at;
  if (std::find(u.good_sources.begin(), u.good_sources.end(), source) == u.good_sources.end()) {
    if (u.good_sources.size() >= max_good_sources) u.good_sources.erase(u.good_sources.begin());
    u.good_sources.push_back(source);
  }
}

int auth_throttle::failures(const table& t, const std::string& key, clock::time_point now) const {
  auto it = t.find(key);
  if (it == t.end() || now - it->second.last > policy_.window) return 0;
  return it->second.failures;
}

int auth_throttle::source_failures(const std::string& source, clock::time_point now) const {
  std::lock_guard lock(mutex_);
  return failures(sources_, source, now);
}

int auth_throttle::user_failures(const std::string& user, clock::time_point now) const {
  std::lock_guard lock(mutex_);
  return failures(users_, user, now);
}

void auth_throttle::prune(table& t, clock::time_point now) {
  // Expired: no failure within the window, and no slot still ahead.
  std::erase_if(t, [&](const auto& kv) { return now - kv.second.last > policy_.window && kv.second.next <= now; });
  if (t.size() < policy_.max_entries) return;
  std::vector<clock::time_point> times;
  times.reserve(t.size());
  for (const auto& [k, r] : t) times.push_back(r.last);
  auto mid = times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2);
  std::nth_element(times.begin(), mid, times.end());
  const auto cutoff = *mid;
  std::erase_if(t, [&](const auto& kv) { return kv.second.last <= cutoff; });
}

}  // namespace cskit::server
