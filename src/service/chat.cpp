#include "service/chat.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "net/connection.hpp"
#include "proto/messages.hpp"
#include "proto/utf8.hpp"
#include "util/clock.hpp"

namespace cskit::service {

using proto::errc;
using proto::json;

struct chat_member {
  std::weak_ptr<net::connection> conn;
  chat_mailbox* mailbox = nullptr;  ///< its event loop's; owned by the hub
  std::string peer;
  std::string nick;  ///< empty until chat.hello
  std::string skeleton;  ///< nick_skeleton(nick)
  std::string account;   ///< the account it logged in as
  std::set<std::string> rooms;
  double tokens = 0;
  std::int64_t refilled_ns = 0;
};

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

std::string room_key(std::string room) {
  if (!room.empty() && room[0] == '#') room.erase(0, 1);
  return lower(room);
}

std::shared_ptr<const std::string> encode(const json& header, std::string_view body = {}) {
  auto s = std::make_shared<std::string>();
  proto::encode_frame(*s, header, body);
  return s;
}

}  // namespace

bool valid_nick(const std::string& n) { return !n.empty() && n.size() <= 32 && name_chars(n, 0); }

bool valid_room(const std::string& r) {
  const std::size_t from = !r.empty() && r[0] == '#' ? 1 : 0;
  return r.size() > from && r.size() - from <= 64 && name_chars(r, from);
}

// ------------------------------------------------------------------ hub

chat_hub::chat_hub(chat_options o) : options_(std::move(o)) {}
chat_hub::~chat_hub() = default;

namespace {
// Queues one encoded frame to one receiver, on the receiver's loop.
void send_to(const std::weak_ptr<net::connection>& w, const std::shared_ptr<const std::string>& frame,
             std::size_t limit) {
  auto c = w.lock();
  if (!c || c->closing()) return;
  if (c->queued_bytes() + frame->size() > limit) {
    spdlog::warn("chat: {} is not reading (over {} bytes queued); disconnecting", c->peer(), limit);
    c->close_now("too slow: chat send queue full");
    return;
  }
  c->send_shared(frame);
}
}  // namespace

struct receivers_by_loop {
  std::vector<std::pair<chat_mailbox*, std::vector<std::weak_ptr<net::connection>>>> loops;
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

  /// `frame` to the receivers `list->loops[index]` (a room), or to `one`.
  void push(std::shared_ptr<const receivers_by_loop> list, std::uint32_t index, std::weak_ptr<net::connection> one,
            std::shared_ptr<const std::string> frame) {
    std::lock_guard lock(m_);
    items_.push_back({std::move(list), index, std::move(one), std::move(frame)});
    if (posted_) return;
    posted_ = true;
    boost::asio::post(executor, [self = shared_from_this()] { self->drain(); });
  }

 private:
  struct item {
    std::shared_ptr<const receivers_by_loop> list;
    std::uint32_t index;
    std::weak_ptr<net::connection> one;
    std::shared_ptr<const std::string> frame;
  };
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
      if (it.list) {
        for (const auto& w : it.list->loops[it.index].second) send_to(w, it.frame, limit_);
      } else {
        send_to(it.one, it.frame, limit_);
      }
    }
  }
  std::mutex m_;
  std::vector<item> items_;     // under m_
  bool posted_ = false;         // under m_: a drain task is queued
  std::vector<item> draining_;  // only on the loop's thread
  const std::size_t limit_;
};

chat_mailbox& chat_hub::mailbox_for(const boost::asio::any_io_executor& ex) {
  for (auto& b : mailboxes_) {
    if (b->executor == ex) return *b;
  }
  return *mailboxes_.emplace_back(std::make_shared<chat_mailbox>(ex, options_.max_queue));
}

void chat_hub::deliver(chat_member& m, const std::shared_ptr<const std::string>& frame) {
  m.mailbox->push(nullptr, 0, m.conn, frame);
}

namespace {
std::shared_ptr<const receivers_by_loop> group_by_loop(const std::set<chat_member*>& members) {
  auto by_loop = std::make_shared<receivers_by_loop>();
  auto& loops = by_loop->loops;
  for (auto* m : members) {
    auto it = std::find_if(loops.begin(), loops.end(), [&](const auto& p) { return p.first == m->mailbox; });
    if (it == loops.end()) it = loops.emplace(loops.end(), m->mailbox, std::vector<std::weak_ptr<net::connection>>{});
    it->second.push_back(m->conn);
  }
  return by_loop;
}
}  // namespace

void chat_hub::post_to_loops(const std::shared_ptr<const receivers_by_loop>& receivers,
                             const std::shared_ptr<const std::string>& frame) {
  // One mailbox entry per event loop, not per receiver, carrying a
  // reference to that loop's receivers: a message to a room of a thousand
  // costs each loop one entry, and a thousand clients leaving at once do
  // not queue a million.
  for (std::size_t i = 0; i < receivers->loops.size(); ++i) {
    receivers->loops[i].first->push(receivers, static_cast<std::uint32_t>(i), {}, frame);
  }
}

void chat_hub::broadcast(const room& r, const std::shared_ptr<const std::string>& frame) {
  if (!r.receivers) r.receivers = group_by_loop(r.members);
  post_to_loops(r.receivers, frame);
}

void chat_hub::fan_out(const std::set<chat_member*>& members, const std::shared_ptr<const std::string>& frame) {
  post_to_loops(group_by_loop(members), frame);
}

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

std::string chat_hub::nick_refusal(const std::string& nick, const chat_member& self) const {
  const std::string key = lower(nick), skeleton = nick_skeleton(nick);
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

// ------------------------------------------------------------------ client

chat_client::chat_client(chat_hub& hub, net::connection& conn, std::string account)
    : hub_(hub), conn_(conn), member_(std::make_shared<chat_member>()) {
  member_->conn = conn.shared_from_this();
  member_->account = std::move(account);
  {
    std::lock_guard lock(hub.m_);
    member_->mailbox = &hub.mailbox_for(conn.executor());
  }
  member_->peer = conn.peer();
  member_->tokens = hub.options().burst;
  member_->refilled_ns = util::monotonic_ns();
  // Dead and half-open connections: a client silent for ping_interval is
  // pinged, one silent for ping_timeout is dropped (the connection's own
  // deadline timer does both).
  conn.set_keepalive(hub.options().ping_interval, hub.options().ping_timeout);
}

chat_client::~chat_client() {
  std::lock_guard lock(hub_.m_);
  auto& m = *member_;
  if (!m.nick.empty()) {
    auto quit = encode({{"type", "chat.event"}, {"event", "quit"}, {"nick", m.nick}, {"reason", close_reason_},
                        {"ts", now_ms()}});
    std::set<chat_member*> told;
    for (const auto& name : m.rooms) {
      auto it = hub_.rooms_.find(name);
      if (it == hub_.rooms_.end()) continue;
      it->second.members.erase(&m);
      it->second.receivers.reset();
      told.insert(it->second.members.begin(), it->second.members.end());
    }
    hub_.fan_out(told, quit);
    hub_.unname(m);
    spdlog::info("chat: {} ({}) quit: {}", m.nick, m.peer, close_reason_);
  }
  hub_.members_.erase(&m);
}

// ------------------------------------------------------------------ requests

void chat_client::handle(std::uint64_t id, std::string_view type, const json& h, const std::string& body) {
  std::lock_guard lock(hub_.m_);
  const call c{id, h, body};
  if (type == "chat.hello") return on_hello(c);
  if (member_->nick.empty()) return error(id, errc::bad_request, "send chat.hello with a nickname first");
  using handler = void (chat_client::*)(const call&);
  static constexpr std::pair<std::string_view, handler> handlers[] = {
      {"chat.join", &chat_client::on_join},   {"chat.part", &chat_client::on_part},
      {"chat.say", &chat_client::on_say},     {"chat.msg", &chat_client::on_msg},
      {"chat.who", &chat_client::on_who},     {"chat.rooms", &chat_client::on_rooms},
      {"chat.topic", &chat_client::on_topic}, {"chat.nick", &chat_client::on_nick},
      {"chat.quit", &chat_client::on_quit},
  };
  for (const auto& [name, fn] : handlers) {
    if (type == name) return (this->*fn)(c);
  }
  error(id, errc::unknown_type, "unknown chat request '" + std::string(type) + "'");
}

void chat_client::error(std::uint64_t id, errc code, const std::string& message, json extra) {
  json e = proto::make_error(code, message, id);
  for (auto& [k, v] : extra.items()) e[k] = v;
  conn_.send(e);
}

void chat_client::ok(std::uint64_t id, json extra) {
  json r = {{"type", "chat.ok"}, {"id", id}};
  for (auto& [k, v] : extra.items()) r[k] = v;
  conn_.send(r);
}

bool chat_client::room_arg(const call& c, std::string& key) {
  const std::string shown = c.h.value("room", std::string());
  if (!valid_room(shown)) {
    error(c.id, errc::bad_request, "a room name is 1-64 letters, digits, '-', '_' or '.', optionally after '#'");
    return false;
  }
  key = room_key(shown);
  return true;
}

// A room the member is in, or nullptr (answered).
chat_hub::room* chat_client::my_room(const call& c, std::string& key) {
  if (!room_arg(c, key)) return nullptr;
  auto it = hub_.rooms_.find(key);
  if (it == hub_.rooms_.end() || !member_->rooms.count(key)) {
    error(c.id, errc::not_found, "you are not in #" + key);
    return nullptr;
  }
  return &it->second;
}

bool chat_client::charge(std::uint64_t id) {
  // Token bucket for everything that makes other people's screens change.
  const auto& o = hub_.options();
  auto& m = *member_;
  const std::int64_t now = util::monotonic_ns();
  m.tokens = std::min(o.burst, m.tokens + o.rate * static_cast<double>(now - m.refilled_ns) * 1e-9);
  m.refilled_ns = now;
  if (o.rate <= 0 || m.tokens >= 1.0) {
    m.tokens -= 1.0;
    return true;
  }
  const double retry = (1.0 - m.tokens) / o.rate;
  error(id, errc::rate_limited,
        "slow down: at most " + std::to_string(static_cast<int>(o.rate)) + " messages per second; retry in " +
            std::to_string(static_cast<int>(retry * 1000)) + " ms",
        {{"retry_after", retry}});
  return false;
}

bool chat_client::text_ok(const call& c) {
  const auto max = hub_.options().max_message;
  if (c.body.empty()) {
    error(c.id, errc::bad_request, "empty message");
    return false;
  }
  if (c.body.size() > max) {
    error(c.id, errc::too_large,
          "message is " + std::to_string(c.body.size()) + " bytes; the limit is " + std::to_string(max),
          {{"limit", max}});
    return false;
  }
  if (!proto::is_valid_utf8(c.body)) {
    error(c.id, errc::bad_request, "message is not valid UTF-8");
    return false;
  }
  return true;
}

// A nickname this member cannot take: answered with the reason and a
// suggestion. False when `nick` is free for it.
bool chat_client::nick_refused(std::uint64_t id, const std::string& nick) {
  if (!valid_nick(nick)) {
    error(id, errc::bad_request, "a nickname is 1-32 letters, digits, '-', '_' or '.'");
    return true;
  }
  const std::string why = hub_.nick_refusal(nick, *member_);
  if (why.empty()) return false;
  const std::string alt = hub_.suggest_nick(nick, *member_);
  error(id, errc::conflict, why + "; try '" + alt + "'", {{"suggestion", alt}});
  return true;
}

void chat_client::on_hello(const call& c) {
  auto& m = *member_;
  if (!m.nick.empty()) return error(c.id, errc::bad_request, "already introduced as " + m.nick);
  const std::string nick = c.h.value("nick", std::string());
  if (nick_refused(c.id, nick)) return;
  hub_.name(m, nick);
  hub_.members_.insert(&m);
  spdlog::info("chat: {} is {} (account {})", m.peer, nick, m.account);
  const auto& o = hub_.options();
  conn_.send({{"type", "chat.welcome"},
              {"id", c.id},
              {"nick", nick},
              {"account", m.account},
              {"default_room", o.default_room},
              {"max_message", o.max_message},
              {"history", o.history},
              {"ts", now_ms()}});
}

void chat_client::on_join(const call& c) {
  std::string key;
  if (!room_arg(c, key)) return;
  auto& m = *member_;
  const auto& o = hub_.options();
  if (m.rooms.count(key)) return error(c.id, errc::bad_request, "already in #" + key);
  if (!hub_.rooms_.count(key) && hub_.rooms_.size() >= o.max_rooms) {
    return error(c.id, errc::busy, "the server has its maximum of " + std::to_string(o.max_rooms) + " rooms");
  }
  auto& r = hub_.rooms_[key];  // created on first join
  std::vector<std::string> names;
  for (auto* x : r.members) names.push_back(x->nick);
  r.members.insert(&m);
  r.receivers.reset();
  m.rooms.insert(key);
  conn_.send({{"type", "chat.joined"}, {"id", c.id}, {"room", "#" + key}, {"topic", r.topic}, {"members", names}});
  for (const auto& past : r.history) hub_.deliver(m, past);  // replay, in order, marked history
  hub_.broadcast(r, encode({{"type", "chat.event"}, {"event", "join"}, {"room", "#" + key}, {"nick", m.nick},
                            {"account", m.account}, {"ts", now_ms()}}));
}

void chat_client::on_part(const call& c) {
  std::string key;
  auto* r = my_room(c, key);
  if (!r) return;
  auto& m = *member_;
  hub_.broadcast(*r, encode({{"type", "chat.event"}, {"event", "part"}, {"room", "#" + key}, {"nick", m.nick},
                             {"reason", c.h.value("reason", std::string())}, {"ts", now_ms()}}));
  r->members.erase(&m);
  r->receivers.reset();
  m.rooms.erase(key);
  ok(c.id);
}

void chat_client::on_say(const call& c) {
  std::string key;
  auto* r = my_room(c, key);
  if (!r || !text_ok(c) || !charge(c.id)) return;
  json msg = {{"type", "chat.message"}, {"room", "#" + key}, {"from", member_->nick}, {"ts", now_ms()},
              {"action", c.h.value("action", false)}};
  hub_.broadcast(*r, encode(msg, c.body));
  if (const auto keep = hub_.options().history; keep > 0) {
    msg["history"] = true;
    r->history.push_back(encode(msg, c.body));
    while (r->history.size() > keep) r->history.pop_front();
  }
  ok(c.id);
}

void chat_client::on_msg(const call& c) {
  const std::string to = c.h.value("to", std::string());
  auto it = hub_.nicks_.find(lower(to));
  if (it == hub_.nicks_.end()) return error(c.id, errc::not_found, "no one is called '" + to + "'");
  if (!text_ok(c) || !charge(c.id)) return;
  auto& m = *member_;
  auto frame = encode({{"type", "chat.message"}, {"to", it->second->nick}, {"from", m.nick}, {"private", true},
                       {"ts", now_ms()}, {"action", c.h.value("action", false)}},
                      c.body);
  hub_.deliver(*it->second, frame);
  if (it->second != &m) hub_.deliver(m, frame);  // the sender sees what was delivered
  ok(c.id);
}

void chat_client::on_who(const call& c) {
  std::string key;
  if (!room_arg(c, key)) return;
  auto it = hub_.rooms_.find(key);
  if (it == hub_.rooms_.end()) return error(c.id, errc::not_found, "no room #" + key);
  std::vector<std::pair<std::string, std::string>> who;
  for (auto* x : it->second.members) who.emplace_back(x->nick, x->account);
  std::sort(who.begin(), who.end());
  json names = json::array(), accounts = json::object();
  for (const auto& [nick, account] : who) {
    names.push_back(nick);
    accounts[nick] = account;
  }
  ok(c.id, {{"room", "#" + key}, {"members", names}, {"accounts", accounts}, {"topic", it->second.topic}});
}

void chat_client::on_rooms(const call& c) {
  json list = json::array();
  for (const auto& [name, r] : hub_.rooms_) {
    if (!r.members.empty()) list.push_back({{"room", "#" + name}, {"members", r.members.size()}, {"topic", r.topic}});
  }
  ok(c.id, {{"rooms", list}});
}

void chat_client::on_topic(const call& c) {
  std::string key;
  auto* r = my_room(c, key);
  if (!r) return;
  auto t = c.h.find("topic");
  if (t == c.h.end()) return ok(c.id, {{"room", "#" + key}, {"topic", r->topic}, {"by", r->topic_by}});
  const auto max = hub_.options().max_message;
  if (!t->is_string()) return error(c.id, errc::bad_request, "'topic' must be a string");
  if (t->get_ref<const std::string&>().size() > max) {
    return error(c.id, errc::too_large, "a topic is at most " + std::to_string(max) + " bytes", {{"limit", max}});
  }
  if (!charge(c.id)) return;
  r->topic = t->get<std::string>();
  r->topic_by = member_->nick;
  hub_.broadcast(*r, encode({{"type", "chat.event"}, {"event", "topic"}, {"room", "#" + key},
                             {"nick", member_->nick}, {"topic", r->topic}, {"ts", now_ms()}}));
  ok(c.id);
}

void chat_client::on_nick(const call& c) {
  const std::string nick = c.h.value("nick", std::string());
  if (nick_refused(c.id, nick) || !charge(c.id)) return;
  auto& m = *member_;
  auto frame = encode({{"type", "chat.event"}, {"event", "nick"}, {"nick", m.nick}, {"new_nick", nick},
                       {"ts", now_ms()}});
  std::set<chat_member*> told{&m};
  for (const auto& name : m.rooms) {
    const auto& members = hub_.rooms_[name].members;
    told.insert(members.begin(), members.end());
  }
  hub_.fan_out(told, frame);
  hub_.unname(m);
  hub_.name(m, nick);
  ok(c.id, {{"nick", nick}});
}

void chat_client::on_quit(const call& c) {
  std::string reason = c.h.value("reason", std::string("quit"));
  if (reason.size() > hub_.options().max_message) reason = "quit";
  set_close_reason(reason.empty() ? "quit" : reason, true);
  ok(c.id);
  conn_.close_after_flush("chat quit");
}

}  // namespace cskit::service
