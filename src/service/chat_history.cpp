#include "service/chat_history.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <mutex>

#include "util/clock.hpp"

namespace cskit::service {

namespace {
std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
}  // namespace

std::string chat_history::pair_key(const std::string& account_a, const std::string& account_b) {
  std::string a = lower(account_a), b = lower(account_b);
  if (b < a) std::swap(a, b);
  return "@" + a + " " + b;
}

std::string chat_history::key_of(const chat_event& e, const std::string& target_account) {
  return e.is_private ? pair_key(e.account, target_account) : e.room;
}

namespace {

using event_ptr = std::shared_ptr<const chat_event>;

// Whether `e` comes before the reference point `r` (a message id or a time).
bool before(const chat_event& e, const chat_history_query::ref& r) {
  return r.by_id ? e.id < r.id : e.ts_ms < r.ts_ms;
}
bool after(const chat_event& e, const chat_history_query::ref& r) {
  return r.by_id ? e.id > r.id : e.ts_ms > r.ts_ms;
}

// [first, last) of `all` before `r` / after `r`.
std::size_t first_after(const std::vector<event_ptr>& all, const chat_history_query::ref& r) {
  std::size_t i = 0;
  while (i < all.size() && !after(*all[i], r)) ++i;
  return i;
}
std::size_t end_before(const std::vector<event_ptr>& all, const chat_history_query::ref& r) {
  std::size_t i = 0;
  while (i < all.size() && before(*all[i], r)) ++i;
  return i;
}

std::vector<event_ptr> last_n(const std::vector<event_ptr>& all, std::size_t from, std::size_t to, std::size_t n) {
  if (to < from) to = from;
  const std::size_t begin = to - std::min(n, to - from);
  return {all.begin() + static_cast<std::ptrdiff_t>(begin), all.begin() + static_cast<std::ptrdiff_t>(to)};
}
std::vector<event_ptr> first_n(const std::vector<event_ptr>& all, std::size_t from, std::size_t to, std::size_t n) {
  if (to < from) to = from;
  const std::size_t end = from + std::min(n, to - from);
  return {all.begin() + static_cast<std::ptrdiff_t>(from), all.begin() + static_cast<std::ptrdiff_t>(end)};
}

}  // namespace

std::vector<event_ptr> select_history(const std::vector<event_ptr>& all, const chat_history_query& q) {
  using m = chat_history_query::mode;
  const std::size_t n = q.limit;
  switch (q.what) {
    case m::latest:
      return q.a.any ? last_n(all, 0, all.size(), n) : last_n(all, first_after(all, q.a), all.size(), n);
    case m::before: return last_n(all, 0, end_before(all, q.a), n);
    case m::after: return first_n(all, first_after(all, q.a), all.size(), n);
    case m::around: {
      // Half before the point, the rest from it on.
      const std::size_t pivot = end_before(all, q.a);
      const std::size_t take_before = std::min(pivot, n / 2);
      return first_n(all, pivot - take_before, all.size(), n);
    }
    case m::between: {
      const bool forward = q.a.by_id == q.b.by_id ? (q.a.by_id ? q.a.id <= q.b.id : q.a.ts_ms <= q.b.ts_ms) : true;
      const auto& lo = forward ? q.a : q.b;
      const auto& hi = forward ? q.b : q.a;
      const std::size_t from = first_after(all, lo), to = end_before(all, hi);
      return forward ? first_n(all, from, to, n) : last_n(all, from, to, n);
    }
  }
  return {};
}

namespace {

class memory_history final : public chat_history {
 public:
  explicit memory_history(chat_retention r) : retention_(r) {}

  void add(const std::string& key, event_ptr e) override {
    if (retention_.count == 0) return;
    std::lock_guard lock(m_);
    auto& d = conversations_[key];
    d.push_back(std::move(e));
    while (d.size() > retention_.count) d.pop_front();
    expire(d);
  }

  std::vector<event_ptr> query(const std::string& key, const chat_history_query& q) override {
    std::vector<event_ptr> all;
    {
      std::lock_guard lock(m_);
      auto it = conversations_.find(key);
      if (it == conversations_.end()) return {};
      expire(it->second);
      all.assign(it->second.begin(), it->second.end());
    }
    return select_history(all, q);
  }

 private:
  void expire(std::deque<event_ptr>& d) const {
    if (retention_.max_age_ms <= 0) return;
    const std::int64_t oldest = util::realtime_ns() / 1'000'000 - retention_.max_age_ms;
    while (!d.empty() && d.front()->ts_ms < oldest) d.pop_front();
  }
  chat_retention retention_;
  std::mutex m_;
  std::map<std::string, std::deque<event_ptr>> conversations_;
};

}  // namespace

std::unique_ptr<chat_history> make_memory_history(chat_retention r) { return std::make_unique<memory_history>(r); }

}  // namespace cskit::service
