#include "service/chat.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/container/small_vector.hpp>
#include <spdlog/spdlog.h>

#include "net/connection.hpp"
#include "proto/utf8.hpp"
#include "service/chat_history.hpp"
#include "util/clock.hpp"

namespace cskit::service {

using proto::errc;

namespace {

std::int64_t now_ms() { return util::realtime_ns() / 1'000'000; }

bool name_chars(const std::string& s, std::size_t from) {
  for (std::size_t i = from; i < s.size(); ++i) {
    const char c = s[i];
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

chat_refusal refusal(errc code, std::string message) {
  chat_refusal r;
  r.code = code;
  r.message = std::move(message);
  return r;
}

const char* const room_rule = "a room name is 1-64 letters, digits, '-', '_' or '.', optionally after '#'";

}  // namespace

bool valid_nick(const std::string& n) { return !n.empty() && n.size() <= 32 && name_chars(n, 0); }

bool valid_room(const std::string& r) {
  const std::size_t from = !r.empty() && r[0] == '#' ? 1 : 0;
  return r.size() > from && r.size() - from <= 64 && name_chars(r, from);
}

std::string room_key(std::string room) {
  if (!room.empty() && room[0] == '#') room.erase(0, 1);
  return lower(room);
}

// ------------------------------------------------------------------ delivery

namespace {
// Queues one encoded event to one receiver, on the receiver's loop.
void send_to(const chat_receiver& r, const std::shared_ptr<const std::string>& bytes, std::size_t limit) {
  auto c = r.conn.lock();
  if (!c || c->closing()) return;
  if (c->queued_bytes() + bytes->size() > limit) {
    spdlog::warn("chat: {} is not reading (over {} bytes queued); disconnecting", c->peer(), limit);
    c->close_now("too slow: chat send queue full");
    return;
  }
  c->send_shared(bytes);
}

// An event's encodings on one loop: one per (codec, variant, own), made
// when the first receiver of that kind needs it.
class encodings {
 public:
  explicit encodings(const chat_event& e) : e_(e) {}
  const std::shared_ptr<const std::string>* get(const chat_receiver& r) {
    const bool own = r.member == e_.sender;
    for (const auto& x : made_) {
      if (x.codec == r.codec && x.variant == r.variant && x.own == own) return x.bytes ? &x.bytes : nullptr;
    }
    auto& x = made_.emplace_back(entry{r.codec, r.variant, own, r.codec->encode(e_, r.variant, own)});
    return x.bytes ? &x.bytes : nullptr;
  }

 private:
  struct entry {
    const chat_codec* codec;
    unsigned variant;
    bool own;
    std::shared_ptr<const std::string> bytes;
  };
  const chat_event& e_;
  // Most events take one or two encodings on a loop: no allocation per
  // event on the fan-out path.
  boost::container::small_vector<entry, 4> made_;
};
}  // namespace

struct receivers_by_loop {
  std::vector<std::pair<chat_mailbox*, std::vector<std::shared_ptr<const chat_receiver>>>> loops;
};

// One per event loop. Deliveries are appended under the hub's mutex, so
// every loop sees them in the one order the hub decided, and the loop
// drains them with one task. (Posting each delivery as its own task would
// not keep that order: Asio runs a task posted from a loop's own thread
// after tasks other threads post meanwhile, so receivers on different
// loops could see two senders' messages interleaved differently.)
class chat_mailbox : public std::enable_shared_from_this<chat_mailbox> {
 public:
  chat_mailbox(boost::asio::any_io_executor ex, std::size_t limit) : executor(std::move(ex)), limit_(limit) {}
  const boost::asio::any_io_executor executor;

  /// `e` to the receivers `list->loops[index]` (a room), or to `one`; or
  /// `raw` bytes to `one`.
  void push(std::shared_ptr<const receivers_by_loop> list, std::uint32_t index,
            std::shared_ptr<const chat_receiver> one, std::shared_ptr<const chat_event> e,
            std::shared_ptr<const std::string> raw = nullptr) {
    std::lock_guard lock(m_);
    if (raw) one->replies_queued += raw->size();
    items_.push_back({std::move(list), index, std::move(one), std::move(e), std::move(raw)});
    if (posted_) return;
    posted_ = true;
    boost::asio::post(executor, [self = shared_from_this()] { self->drain(); });
  }

 private:
  struct item {
    std::shared_ptr<const receivers_by_loop> list;
    std::uint32_t index;
    std::shared_ptr<const chat_receiver> one;
    std::shared_ptr<const chat_event> event;
    std::shared_ptr<const std::string> raw;
  };
  void send(encodings& enc, const chat_receiver& r) {
    if (const auto* bytes = enc.get(r)) send_to(r, *bytes, limit_);
  }
  void drain() {
    {
      std::lock_guard lock(m_);
      draining_.swap(items_);
      posted_ = false;
    }
    // Cleared even if a send throws (out of memory), so that nothing is
    // delivered twice by the next drain.
    struct clear_on_exit {
      std::vector<item>& v;
      ~clear_on_exit() { v.clear(); }
    } guard{draining_};
    for (const auto& it : draining_) {
      if (it.raw) {
        // A reply the client asked for: bounded by the connection's own
        // send queue, not by max_queue, which is for what others send it.
        it.one->replies_queued -= it.raw->size();
        if (auto c = it.one->conn.lock(); c && !c->closing()) c->send_shared(it.raw);
        continue;
      }
      encodings enc(*it.event);
      if (it.list) {
        for (const auto& r : it.list->loops[it.index].second) send(enc, *r);
      } else {
        send(enc, *it.one);
      }
    }
  }
  std::mutex m_;
  std::vector<item> items_;     // under m_
  bool posted_ = false;         // under m_: a drain task is queued
  std::vector<item> draining_;  // only on the loop's thread
  const std::size_t limit_;
};

// ------------------------------------------------------------------ hub

chat_hub::chat_hub(chat_options o) : chat_hub(o, nullptr) {}

chat_hub::chat_hub(chat_options o, std::unique_ptr<chat_history> history)
    : options_(std::move(o)),
      store_(history ? std::move(history)
                     : make_memory_history({options_.history_keep,
                                            std::chrono::duration_cast<std::chrono::milliseconds>(
                                                options_.history_max_age)
                                                .count()})),
      next_event_(std::max(static_cast<std::uint64_t>(util::realtime_ns() / 1000), store_->last_id())) {}
chat_hub::~chat_hub() = default;

chat_mailbox& chat_hub::mailbox_for(const boost::asio::any_io_executor& ex) {
  for (auto& b : mailboxes_) {
    if (b->executor == ex) return *b;
  }
  return *mailboxes_.emplace_back(std::make_shared<chat_mailbox>(ex, options_.max_queue));
}

void chat_hub::deliver(chat_member& m, const std::shared_ptr<const chat_event>& e) {
  m.mailbox->push(nullptr, 0, m.receiver, e);
}

namespace {
std::shared_ptr<const receivers_by_loop> group_by_loop(const std::set<chat_member*>& members) {
  auto by_loop = std::make_shared<receivers_by_loop>();
  auto& loops = by_loop->loops;
  for (auto* m : members) {
    auto it = std::find_if(loops.begin(), loops.end(), [&](const auto& p) { return p.first == m->mailbox; });
    if (it == loops.end()) it = loops.emplace(loops.end(), m->mailbox, std::vector<std::shared_ptr<const chat_receiver>>{});
    it->second.push_back(m->receiver);
  }
  return by_loop;
}
}  // namespace

void chat_hub::post_to_loops(const std::shared_ptr<const receivers_by_loop>& receivers,
                             const std::shared_ptr<const chat_event>& e) {
  // One mailbox entry per event loop, not per receiver, carrying a
  // reference to that loop's receivers: a message to a room of a thousand
  // costs each loop one entry, and a thousand clients leaving at once do
  // not queue a million.
  for (std::size_t i = 0; i < receivers->loops.size(); ++i) {
    receivers->loops[i].first->push(receivers, static_cast<std::uint32_t>(i), nullptr, e);
  }
}

void chat_hub::broadcast(const room& r, const std::shared_ptr<const chat_event>& e) {
  if (!r.receivers) r.receivers = group_by_loop(r.members);
  post_to_loops(r.receivers, e);
}

void chat_hub::fan_out(const std::set<chat_member*>& members, const std::shared_ptr<const chat_event>& e) {
  post_to_loops(group_by_loop(members), e);
}

std::set<chat_member*> chat_hub::neighbours(const chat_member& m) {
  std::set<chat_member*> told{const_cast<chat_member*>(&m)};
  for (const auto& key : m.rooms) {
    auto it = rooms_.find(key);
    if (it != rooms_.end()) told.insert(it->second.members.begin(), it->second.members.end());
  }
  return told;
}

std::shared_ptr<chat_event> chat_hub::make_event(chat_event::kind what, const chat_member& m, std::string room) {
  auto e = std::make_shared<chat_event>();
  e->what = what;
  e->room = std::move(room);
  e->nick = m.nick;
  e->account = m.account;
  e->ts_ms = now_ms();
  e->id = ++next_event_;
  e->sender = m.id;
  return e;
}

// ------------------------------------------------------------------ names

std::string nick_skeleton(std::string_view nick) {
  // Nicknames compare without case, so the skeleton is of the lower-case
  // form; then "aIice" is "aiice", which must still meet "alice": i, l and
  // 1 are one letter (and I and L with them).
  std::string out;
  out.reserve(nick.size() + 4);
  for (const char ch : nick) {
    switch (std::tolower(static_cast<unsigned char>(ch))) {
      case 'i': case 'l': case '1': out += 'l'; break;
      case 'o': case '0': out += 'o'; break;
      case 'm': out += "rn"; break;
      case 'w': out += "vv"; break;
      case 'd': out += "cl"; break;
      default: out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    }
  }
  return out;
}

void chat_hub::set_accounts(const std::vector<std::string>& names) {
  std::lock_guard lock(m_);
  accounts_.clear();
  for (const auto& n : names) {
    if (valid_nick(n)) accounts_.push_back({n, lower(n), nick_skeleton(n)});
  }
}

namespace {
// Names IRC users trust to be the network's services: a client set up to
// identify to NickServ would send its password to whoever held it.
bool service_name(const std::string& key) {
  static const char* const names[] = {"nickserv", "chanserv", "memoserv", "operserv", "hostserv",
                                      "botserv",  "saslserv", "global",   "cskit",    "server"};
  return std::any_of(std::begin(names), std::end(names), [&](const char* n) { return key == n; });
}
}  // namespace

std::string chat_hub::nick_refusal(const std::string& nick, const chat_member& self) const {
  const std::string key = lower(nick), skeleton = nick_skeleton(nick);
  if (service_name(key)) return "nickname '" + nick + "' is reserved for the server's services";
  if (auto it = nicks_.find(key); it != nicks_.end() && it->second != &self) {
    return "nickname '" + nick + "' is taken";
  }
  const std::string own = lower(self.account);
  for (const auto& a : accounts_) {
    if (a.key == own) continue;  // one's own account name, and names like it, are one's own
    if (a.key == key) return "nickname '" + nick + "' is reserved for the account '" + a.name + "'";
    if (a.skeleton == skeleton) return "nickname '" + nick + "' looks like '" + a.name + "', an account's name";
  }
  for (auto [it, end] = by_skeleton_.equal_range(skeleton); it != end; ++it) {
    const chat_member* other = it->second;
    if (other != &self && lower(other->account) != own) {
      return "nickname '" + nick + "' looks like '" + other->nick + "', which is in use";
    }
  }
  return {};
}

std::string chat_hub::suggest_nick(const std::string& nick, const chat_member& self) const {
  const std::string base = nick.substr(0, 28);
  for (int i = 2; i < 10000; ++i) {
    std::string candidate = base + std::to_string(i);
    if (nick_refusal(candidate, self).empty()) return candidate;
  }
  // Every numbered one is refused (an account or a nickname like each):
  // the account's own name, which is reserved for it, if free.
  return valid_nick(self.account) && nick_refusal(self.account, self).empty() ? self.account : base + "_";
}

chat_refusal chat_hub::refuse_nick(const std::string& nick, const chat_member& self) const {
  if (!valid_nick(nick)) return refusal(errc::bad_request, "a nickname is 1-32 letters, digits, '-', '_' or '.'");
  std::string why = nick_refusal(nick, self);
  if (why.empty()) return {};
  chat_refusal r = refusal(errc::conflict, std::move(why));
  r.suggestion = suggest_nick(nick, self);
  r.message += "; try '" + r.suggestion + "'";
  return r;
}

std::string chat_hub::free_nick(const chat_member& m, const std::string& nick) {
  std::lock_guard lock(m_);
  if (valid_nick(nick) && nick_refusal(nick, m).empty()) return nick;
  return suggest_nick(valid_nick(nick) ? nick : std::string("guest"), m);
}

std::string chat_hub::nick_problem(const chat_member& m, const std::string& nick) {
  std::lock_guard lock(m_);
  return refuse_nick(nick, m).message;
}

void chat_hub::name(chat_member& m, const std::string& nick) {
  m.nick = nick;
  m.skeleton = nick_skeleton(nick);
  nicks_[lower(nick)] = &m;
  by_skeleton_.emplace(m.skeleton, &m);
}

void chat_hub::unname(chat_member& m) {
  nicks_.erase(lower(m.nick));
  for (auto [it, end] = by_skeleton_.equal_range(m.skeleton); it != end; ++it) {
    if (it->second == &m) {
      by_skeleton_.erase(it);
      break;
    }
  }
}

// ------------------------------------------------------------------ rules

chat_refusal chat_hub::charge(chat_member& m) {
  // Token bucket for everything that makes other people's screens change.
  const auto& o = options_;
  const std::int64_t now = util::monotonic_ns();
  m.tokens = std::min(o.burst, m.tokens + o.rate * static_cast<double>(now - m.refilled_ns) * 1e-9);
  m.refilled_ns = now;
  if (o.rate <= 0 || m.tokens >= 1.0) {
    m.tokens -= 1.0;
    return {};
  }
  const double retry = (1.0 - m.tokens) / o.rate;
  chat_refusal r = refusal(errc::rate_limited, "slow down: at most " + std::to_string(static_cast<int>(o.rate)) +
                                                   " messages per second; retry in " +
                                                   std::to_string(static_cast<int>(retry * 1000)) + " ms");
  r.retry_after = retry;
  return r;
}

chat_refusal chat_hub::charge_move(chat_member& m) {
  // Joins and parts: their own bucket, twice the burst (a client joins its
  // rooms at once on connecting), so that moving about never costs
  // messages and a join/part flood is still bounded.
  const auto& o = options_;
  const double burst = std::max(20.0, 2 * o.burst);
  const std::int64_t now = util::monotonic_ns();
  m.moves = std::min(burst, m.moves + o.rate * static_cast<double>(now - m.moves_refilled_ns) * 1e-9);
  m.moves_refilled_ns = now;
  if (o.rate <= 0 || m.moves >= 1.0) {
    m.moves -= 1.0;
    return {};
  }
  chat_refusal r = refusal(errc::rate_limited, "slow down: too many joins and parts");
  r.retry_after = (1.0 - m.moves) / o.rate;
  return r;
}

chat_refusal chat_hub::check_text(const std::string& text) const {
  const auto max = options_.max_message;
  if (text.empty()) return refusal(errc::bad_request, "empty message");
  if (text.size() > max) {
    chat_refusal r = refusal(errc::too_large, "message is " + std::to_string(text.size()) +
                                                  " bytes; the limit is " + std::to_string(max));
    r.limit = max;
    return r;
  }
  if (!proto::is_valid_utf8(text)) return refusal(errc::bad_request, "message is not valid UTF-8");
  return {};
}

chat_hub::room* chat_hub::my_room(const chat_member& m, const std::string& name, std::string& key,
                                  chat_refusal& why) {
  if (!valid_room(name)) {
    why = refusal(errc::bad_request, room_rule);
    return nullptr;
  }
  key = room_key(name);
  auto it = rooms_.find(key);
  if (it == rooms_.end() || !m.rooms.count(key)) {
    why = refusal(errc::not_found, "you are not in #" + key);
    return nullptr;
  }
  return &it->second;
}

// ------------------------------------------------------------------ requests

std::shared_ptr<chat_member> chat_hub::enter(std::shared_ptr<chat_receiver> receiver,
                                             const boost::asio::any_io_executor& ex, std::string account,
                                             std::string peer) {
  auto m = std::make_shared<chat_member>();
  m->receiver = std::move(receiver);
  m->account = std::move(account);
  m->peer = std::move(peer);
  m->tokens = options_.burst;
  m->moves = std::max(20.0, 2 * options_.burst);  // charge_move's burst
  m->refilled_ns = m->moves_refilled_ns = util::monotonic_ns();
  m->signon_ms = m->last_said_ms = now_ms();
  std::lock_guard lock(m_);
  m->id = next_member_++;
  m->receiver->member = m->id;
  m->mailbox = &mailbox_for(ex);
  return m;
}

void chat_hub::leave(chat_member& m, const std::string& reason) {
  std::lock_guard lock(m_);
  if (m.nick.empty()) return;
  auto quit = make_event(chat_event::kind::quit, m);
  quit->text = reason;
  std::set<chat_member*> told;
  for (const auto& key : m.rooms) {
    auto it = rooms_.find(key);
    if (it == rooms_.end()) continue;
    it->second.members.erase(&m);
    it->second.receivers.reset();
    told.insert(it->second.members.begin(), it->second.members.end());
    forget_if_empty(key);
  }
  m.rooms.clear();
  fan_out(told, quit);
  unname(m);
  members_.erase(&m);
  spdlog::info("chat: {} ({}) quit: {}", m.nick, m.peer, reason);
  m.nick.clear();
}

chat_refusal chat_hub::hello(chat_member& m, const std::string& nick) {
  std::lock_guard lock(m_);
  if (!m.nick.empty()) return refusal(errc::bad_request, "already introduced as " + m.nick);
  if (auto r = refuse_nick(nick, m); !r.ok()) return r;
  name(m, nick);
  members_.insert(&m);
  spdlog::info("chat: {} is {} (account {})", m.peer, nick, m.account);
  return {};
}

chat_refusal chat_hub::join(chat_member& m, const std::string& name, const join_reply& reply) {
  if (!valid_room(name)) return refusal(errc::bad_request, room_rule);
  const std::string key = room_key(name);
  std::lock_guard lock(m_);
  if (m.rooms.count(key)) return refusal(errc::bad_request, "already in #" + key);
  if (!rooms_.count(key) && rooms_.size() >= options_.max_rooms) {
    return refusal(errc::busy, "the server has its maximum of " + std::to_string(options_.max_rooms) + " rooms");
  }
  if (auto c = charge_move(m); !c.ok()) return c;
  auto& r = rooms_[key];  // created on first join
  if (!r.loaded) {
    r.loaded = true;
    chat_history_query latest;
    latest.a.any = true;
    latest.limit = options_.history;
    for (auto& e : store_->query("#" + key, latest)) r.history.push_back(std::move(e));
  }
  r.members.insert(&m);
  r.receivers.reset();
  m.rooms.insert(key);
  chat_room_view out;
  out.room = "#" + key;
  out.topic = r.topic;
  out.topic_by = r.topic_by;
  out.topic_ms = r.topic_ms;
  for (auto* x : r.members) {
    out.members.emplace_back(x->nick, x->account);
    if (!x->away.empty()) out.away.push_back(x->nick);
  }
  std::sort(out.members.begin(), out.members.end());
  out.history.assign(r.history.begin(), r.history.end());
  m.mailbox->push(nullptr, 0, m.receiver, nullptr, std::make_shared<const std::string>(reply(out)));
  broadcast(r, make_event(chat_event::kind::join, m, "#" + key));
  return {};
}

void chat_hub::send_in_order(chat_member& m, std::string bytes) {
  if (bytes.empty()) return;
  m.mailbox->push(nullptr, 0, m.receiver, nullptr, std::make_shared<const std::string>(std::move(bytes)));
}

void chat_hub::set_invisible(chat_member& m, bool on) {
  std::lock_guard lock(m_);
  m.invisible = on;
}

void chat_hub::forget_if_empty(const std::string& key) {
  auto it = rooms_.find(key);
  if (it != rooms_.end() && it->second.members.empty() && it->second.topic.empty()) rooms_.erase(it);
}

chat_refusal chat_hub::part(chat_member& m, const std::string& name, const std::string& reason) {
  std::lock_guard lock(m_);
  std::string key;
  chat_refusal why;
  room* r = my_room(m, name, key, why);
  if (!r) return why;
  if (auto c = charge_move(m); !c.ok()) return c;
  auto e = make_event(chat_event::kind::part, m, "#" + key);
  e->text = reason.size() > options_.max_message || !proto::is_valid_utf8(reason) ? std::string() : reason;
  broadcast(*r, e);
  r->members.erase(&m);
  r->receivers.reset();
  m.rooms.erase(key);
  forget_if_empty(key);
  return {};
}

chat_refusal chat_hub::say(chat_member& m, const std::string& name, const std::string& text, chat_say how) {
  std::lock_guard lock(m_);
  std::string key;
  chat_refusal why;
  room* r = my_room(m, name, key, why);
  if (!r) return why;
  if (auto t = check_text(text); !t.ok()) return t;
  if (auto c = charge(m); !c.ok()) return c;
  auto e = make_event(chat_event::kind::message, m, "#" + key);
  e->text = text;
  e->action = how.action;
  e->notice = how.notice;
  m.last_said_ms = e->ts_ms;
  broadcast(*r, e);
  store_->add(e->room, e);
  if (const auto keep = options_.history; keep > 0) {
    r->history.push_back(std::move(e));
    while (r->history.size() > keep) r->history.pop_front();
  }
  return {};
}

chat_refusal chat_hub::msg(chat_member& m, const std::string& to, const std::string& text, chat_say how,
                           std::string* to_nick) {
  std::lock_guard lock(m_);
  auto it = nicks_.find(lower(to));
  if (it == nicks_.end()) return refusal(errc::not_found, "no one is called '" + to + "'");
  if (auto t = check_text(text); !t.ok()) return t;
  if (auto c = charge(m); !c.ok()) return c;
  chat_member& target = *it->second;
  auto e = make_event(chat_event::kind::message, m);
  e->is_private = true;
  e->target = target.nick;
  e->text = text;
  e->action = how.action;
  e->notice = how.notice;
  m.last_said_ms = e->ts_ms;
  if (to_nick) *to_nick = target.nick;
  if (&target == &m) e->sender = 0;  // to oneself: delivered once, as received
  deliver(target, e);
  if (&target != &m) deliver(m, e);  // the sender sees what was delivered
  store_->add(chat_history::pair_key(m.account, target.account), e);
  return {};
}

chat_refusal chat_hub::who(const std::string& name, chat_room_view& out) {
  if (!valid_room(name)) return refusal(errc::bad_request, room_rule);
  const std::string key = room_key(name);
  std::lock_guard lock(m_);
  auto it = rooms_.find(key);
  if (it == rooms_.end()) return refusal(errc::not_found, "no room #" + key);
  out.room = "#" + key;
  out.topic = it->second.topic;
  out.topic_by = it->second.topic_by;
  out.topic_ms = it->second.topic_ms;
  for (auto* x : it->second.members) {
    out.members.emplace_back(x->nick, x->account);
    if (!x->away.empty()) out.away.push_back(x->nick);
  }
  std::sort(out.members.begin(), out.members.end());
  return {};
}

std::vector<chat_room_summary> chat_hub::rooms() {
  std::lock_guard lock(m_);
  std::vector<chat_room_summary> list;
  for (const auto& [name, r] : rooms_) {
    if (!r.members.empty()) list.push_back({"#" + name, r.members.size(), r.topic});
  }
  return list;
}

chat_refusal chat_hub::topic(chat_member& m, const std::string& name, const std::string* topic,
                             chat_room_view& out) {
  std::lock_guard lock(m_);
  std::string key;
  chat_refusal why;
  room* r = my_room(m, name, key, why);
  if (!r) return why;
  out.room = "#" + key;
  if (topic) {
    const auto max = options_.max_message;
    if (topic->size() > max) {
      chat_refusal t = refusal(errc::too_large, "a topic is at most " + std::to_string(max) + " bytes");
      t.limit = max;
      return t;
    }
    if (!proto::is_valid_utf8(*topic)) return refusal(errc::bad_request, "the topic is not valid UTF-8");
    if (auto c = charge(m); !c.ok()) return c;
    auto e = make_event(chat_event::kind::topic, m, "#" + key);
    e->text = *topic;
    r->topic = *topic;
    r->topic_by = m.nick;
    r->topic_ms = e->ts_ms;
    broadcast(*r, e);
  }
  out.topic = r->topic;
  out.topic_by = r->topic_by;
  out.topic_ms = r->topic_ms;
  return {};
}

chat_refusal chat_hub::nick(chat_member& m, const std::string& nick) {
  std::lock_guard lock(m_);
  if (auto r = refuse_nick(nick, m); !r.ok()) return r;
  if (auto c = charge(m); !c.ok()) return c;
  auto e = make_event(chat_event::kind::nick, m);
  e->text = nick;
  fan_out(neighbours(m), e);
  unname(m);
  name(m, nick);
  return {};
}

chat_refusal chat_hub::away(chat_member& m, const std::string& text) {
  std::lock_guard lock(m_);
  if (text.size() > options_.max_message) {
    chat_refusal t = refusal(errc::too_large, "an away message is at most " + std::to_string(options_.max_message) +
                                                  " bytes");
    t.limit = options_.max_message;
    return t;
  }
  if (!text.empty() && !proto::is_valid_utf8(text)) return refusal(errc::bad_request, "not valid UTF-8");
  if (text == m.away) return {};
  if (auto c = charge(m); !c.ok()) return c;
  m.away = text;
  auto e = make_event(chat_event::kind::away, m);
  e->text = text;
  fan_out(neighbours(m), e);
  return {};
}

chat_refusal chat_hub::whois(const std::string& nick, chat_member_view& out) {
  std::lock_guard lock(m_);
  auto it = nicks_.find(lower(nick));
  if (it == nicks_.end()) return refusal(errc::not_found, "no one is called '" + nick + "'");
  const chat_member& x = *it->second;
  out.nick = x.nick;
  out.account = x.account;
  out.away = x.away;
  out.peer = x.peer;
  out.invisible = x.invisible;
  out.signon_ms = x.signon_ms;
  out.idle_ms = std::max<std::int64_t>(0, now_ms() - x.last_said_ms);
  for (const auto& k : x.rooms) out.rooms.push_back("#" + k);
  return {};
}

chat_refusal chat_hub::history(const chat_member& m, const std::string& target, const chat_history_query& q,
                              std::vector<std::shared_ptr<const chat_event>>& out) {
  std::string key;
  {
    std::lock_guard lock(m_);
    if (!target.empty() && target[0] == '#') {
      if (!valid_room(target) || !m.rooms.count(room_key(target))) {
        return refusal(errc::not_found, "you are not in " + target);
      }
      key = "#" + room_key(target);
    } else if (auto it = nicks_.find(lower(target)); it != nicks_.end()) {
      key = chat_history::pair_key(m.account, it->second->account);
    } else {
      auto a = std::find_if(accounts_.begin(), accounts_.end(), [&](const account& x) { return x.key == lower(target); });
      if (a == accounts_.end()) return refusal(errc::not_found, "no one is called '" + target + "'");
      key = chat_history::pair_key(m.account, a->name);
    }
  }
  out = store_->query(key, q);
  return {};
}

std::pair<std::size_t, std::size_t> chat_hub::counts() {
  std::lock_guard lock(m_);
  std::size_t rooms = 0;
  for (const auto& [name, r] : rooms_) rooms += r.members.empty() ? 0 : 1;
  return {members_.size(), rooms};
}

}  // namespace cskit::service
