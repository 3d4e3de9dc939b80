#include "server/auth_throttle.hpp"

#include <algorithm>
#include <iterator>
#include <vector>

namespace cskit::server {

auth_throttle::record& auth_throttle::get(table& t, const std::string& key, clock::time_point now) {
  auto it = t.find(key);
  if (it == t.end()) {
    if (t.size() >= policy_.max_entries) prune(t, now);
    it = t.emplace(key, record{0, now, now, 0, now, now}).first;
    return it->second;
  }
  record& r = it->second;
  if (r.failures > 0 && now - r.last > policy_.window) r.failures = 0;  // forgotten
  // No attempt stays in flight for a window: one that was never settled
  // (a bug) must not hold slots forever.
  if (r.pending > 0 && now - r.admitted > policy_.window) r.pending = 0;
  return r;
}

std::chrono::milliseconds auth_throttle::penalty(int failures) const {
  const int excess = failures - policy_.free_failures;
  if (excess <= 0) return std::chrono::milliseconds(0);
  auto delay = policy_.base_delay;
  for (int i = 1; i < excess && delay < policy_.max_delay; ++i) delay *= 2;
  return std::min(delay, policy_.max_delay);
}

auth_throttle::clock::time_point auth_throttle::slot(const table& t, const std::string& key,
                                                     clock::time_point now) const {
  auto it = t.find(key);
  if (it == t.end()) return now;
  const record& r = it->second;
  const auto from = std::max(now, r.next);
  const bool forgotten = now - r.last > policy_.window;
  const bool in_flight = r.pending > 0 && now - r.admitted <= policy_.window;
  if (!in_flight) return from;
  // Attempts admitted but not yet settled are counted as failures to
  // come: this one is queued after the latest of them and waits for the
  // penalty it would then owe, as if they had all failed one after another.
  return std::max(from, r.reserved) + penalty((forgotten ? 0 : r.failures) + r.pending + 1);
}

bool auth_throttle::known_source(const std::string& user, const std::string& source) const {
  auto it = known_.find(user);
  return it != known_.end() && std::find(it->second.begin(), it->second.end(), source) != it->second.end();
}

std::optional<auth_throttle::clock::time_point> auth_throttle::admit(const std::string& source, const std::string& user,
                                                                     std::chrono::milliseconds max_wait,
                                                                     clock::time_point now) {
  std::lock_guard lock(mutex_);
  // A source the user logged in from before is not held up by the user's
  // record: failures from elsewhere cannot lock the user out of the
  // places they log in from.
  const bool known = known_source(user, source);
  const auto when = std::max(slot(sources_, source, now), known ? now : slot(users_, user, now));
  if (when - now > max_wait) return std::nullopt;  // refused untried: nothing recorded
  for (auto* t : {&sources_, &users_}) {
    record& r = get(*t, t == &sources_ ? source : user, now);
    r.reserved = r.pending == 0 ? when : std::max(r.reserved, when);  // none in flight: no older slot holds
    ++r.pending;
    r.admitted = now;
  }
  return when;
}

void auth_throttle::settle(table& t, const std::string& key) {
  auto it = t.find(key);
  if (it != t.end() && it->second.pending > 0) --it->second.pending;
}

void auth_throttle::abandon(const std::string& source, const std::string& user) {
  std::lock_guard lock(mutex_);
  settle(sources_, source);
  settle(users_, user);
}

void auth_throttle::on_failure(const std::string& source, const std::string& user, clock::time_point at) {
  std::lock_guard lock(mutex_);
  for (auto* t : {&sources_, &users_}) {
    const std::string& key = t == &sources_ ? source : user;
    settle(*t, key);
    record& r = get(*t, key, at);
    ++r.failures;
    r.last = at;
    // The next attempt pays for this failure: the 4th waits base_delay,
    // the 5th twice that, and so on.
    r.next = std::max(r.next, at) + penalty(r.failures + 1);
  }
}

void auth_throttle::on_success(const std::string& source, const std::string& user, clock::time_point at) {
  std::lock_guard lock(mutex_);
  settle(sources_, source);
  settle(users_, user);
  if (auto it = users_.find(user); it != users_.end()) {
    it->second.failures = 0;  // the user's own record only: the source keeps what it failed
    it->second.next = std::min(it->second.next, at);
  }
  auto& known = known_[user];
  std::erase(known, source);
  if (known.size() >= max_known_sources) known.erase(known.begin());
  known.push_back(source);
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
  // Never a record with an attempt in flight: its slot is still owed.
  const auto idle = [&](const record& r) { return r.pending == 0 || now - r.admitted > policy_.window; };
  // Expired: no failure within the window, and no slot still ahead.
  std::erase_if(t, [&](const auto& kv) {
    return idle(kv.second) && now - kv.second.last > policy_.window && kv.second.next <= now;
  });
  if (t.size() < policy_.max_entries) return;
  // Then those that hold nothing: no failure, no slot ahead.
  std::erase_if(t, [&](const auto& kv) { return idle(kv.second) && kv.second.failures == 0 && kv.second.next <= now; });
  if (t.size() < policy_.max_entries) return;
  std::vector<clock::time_point> times;
  times.reserve(t.size());
  for (const auto& [k, r] : t) times.push_back(r.last);
  auto mid = times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2);
  std::nth_element(times.begin(), mid, times.end());
  const auto cutoff = *mid;
  // The older half; records as old as the median go only as far as half.
  std::erase_if(t, [&](const auto& kv) { return idle(kv.second) && kv.second.last < cutoff; });
  const std::size_t half = policy_.max_entries / 2;
  for (auto it = t.begin(); it != t.end() && t.size() > half;) {
    it = idle(it->second) && it->second.last == cutoff ? t.erase(it) : std::next(it);
  }
}

}  // namespace cskit::server
