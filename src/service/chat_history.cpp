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
      // Which way: where the two points fall among the messages (a msgid
      // and a timestamp compare that way too).
      const bool forward = q.a.by_id == q.b.by_id ? (q.a.by_id ? q.a.id <= q.b.id : q.a.ts_ms <= q.b.ts_ms)
                                                  : end_before(all, q.a) <= end_before(all, q.b);
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
    bytes_ += size_of(*e);
    ++live_;
    arrival_.emplace_back(&d, e);
    d.push_back(std::move(e));
    while (d.size() > retention_.count) drop_front(d);
    expire(d);
    // Over the budget: the oldest messages of the whole server go first
    // (each is the oldest of its conversation, or already gone).
    while (bytes_ > retention_.max_bytes && !arrival_.empty()) {
      auto [conv, oldest] = std::move(arrival_.front());
      arrival_.pop_front();
      if (!conv->empty() && conv->front() == oldest) drop_front(*conv);
    }
    if (arrival_.size() > 2 * live_ + 1024) compact();
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
  using conversation = std::deque<event_ptr>;
  /// What a message costs here, roughly: its strings and the bookkeeping.
  static std::size_t size_of(const chat_event& e) {
    return sizeof(chat_event) + e.text.size() + e.nick.size() + e.account.size() + e.room.size() + e.target.size() + 64;
  }
  void drop_front(conversation& d) {
    bytes_ -= size_of(*d.front());
    d.pop_front();
    --live_;
  }
  void expire(conversation& d) {
    if (retention_.max_age_ms <= 0) return;
    const std::int64_t oldest = util::realtime_ns() / 1'000'000 - retention_.max_age_ms;
    while (!d.empty() && d.front()->ts_ms < oldest) drop_front(d);
  }
  // Forgets arrival entries of messages that retention already dropped.
  void compact() {
    std::deque<std::pair<conversation*, event_ptr>> kept;
    std::map<conversation*, std::size_t> seen;  // how many of each conversation's messages are still there
    for (auto it = arrival_.rbegin(); it != arrival_.rend(); ++it) {
      auto& n = seen[it->first];
      if (n < it->first->size()) {
        ++n;
        kept.push_front(std::move(*it));
      }
    }
    arrival_.swap(kept);
  }

  chat_retention retention_;
  std::mutex m_;
  std::map<std::string, conversation> conversations_;
  std::deque<std::pair<conversation*, event_ptr>> arrival_;  ///< every message kept, oldest first (and some dropped)
  std::size_t bytes_ = 0;
  std::size_t live_ = 0;
};

}  // namespace

std::unique_ptr<chat_history> make_memory_history(chat_retention r) { return std::make_unique<memory_history>(r); }

}  // namespace cskit::service
