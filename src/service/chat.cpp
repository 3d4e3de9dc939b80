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

std::string chat_hub::suggest_nick(const std::string& nick) const {
  const std::string base = nick.substr(0, 28);
  for (int i = 2; i < 10000; ++i) {
    std::string candidate = base + std::to_string(i);
    if (!nicks_.count(lower(candidate))) return candidate;
  }
  return base + "_";
}

// ------------------------------------------------------------------ client

chat_client::chat_client(chat_hub& hub, net::connection& conn)
    : hub_(hub), conn_(conn), member_(std::make_shared<chat_member>()) {
  member_->conn = conn.shared_from_this();
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
    hub_.nicks_.erase(lower(m.nick));
    spdlog::info("chat: {} ({}) quit: {}", m.nick, m.peer, close_reason_);
  }
  hub_.members_.erase(&m);
}

void chat_client::handle(std::uint64_t id, std::string_view type, const json& h, const std::string& body) {
  const auto& o = hub_.options();
  auto& m = *member_;
  auto error = [&](errc code, const std::string& msg, json extra = json::object()) {
    json e = proto::make_error(code, msg, id);
    for (auto& [k, v] : extra.items()) e[k] = v;
    conn_.send(e);
  };
  auto ok = [&](json extra = json::object()) {
    json r = {{"type", "chat.ok"}, {"id", id}};
    for (auto& [k, v] : extra.items()) r[k] = v;
    conn_.send(r);
  };
  // error() and ok() return void, so handlers can `return error(...)`.
  std::lock_guard lock(hub_.m_);

  if (type == "chat.hello") {
    if (!m.nick.empty()) return error(errc::bad_request, "already introduced as " + m.nick);
    std::string nick = h.value("nick", std::string());
    if (!valid_nick(nick)) {
      return error(errc::bad_request, "a nickname is 1-32 letters, digits, '-', '_' or '.'");
    }
    if (hub_.nicks_.count(lower(nick))) {
      const std::string alt = hub_.suggest_nick(nick);
      return error(errc::conflict, "nickname '" + nick + "' is taken; try '" + alt + "'", {{"suggestion", alt}});
    }
    m.nick = nick;
    hub_.nicks_[lower(nick)] = &m;
    hub_.members_.insert(&m);
    spdlog::info("chat: {} is {}", m.peer, nick);
    conn_.send({{"type", "chat.welcome"},
                       {"id", id},
                       {"nick", nick},
                       {"default_room", o.default_room},
                       {"max_message", o.max_message},
                       {"history", o.history},
                       {"ts", now_ms()}});
    return;
  }
  if (m.nick.empty()) return error(errc::bad_request, "send chat.hello with a nickname first");

  auto room_arg = [&](std::string& key, std::string& shown) -> bool {
    shown = h.value("room", std::string());
    if (!valid_room(shown)) {
      error(errc::bad_request, "a room name is 1-64 letters, digits, '-', '_' or '.', optionally after '#'");
      return false;
    }
    key = room_key(shown);
    return true;
  };
  // Token bucket for everything that makes other people's screens change.
  auto charge = [&]() -> bool {
    const std::int64_t now = util::monotonic_ns();
    m.tokens = std::min(o.burst, m.tokens + o.rate * static_cast<double>(now - m.refilled_ns) * 1e-9);
    m.refilled_ns = now;
    if (o.rate <= 0 || m.tokens >= 1.0) {
      m.tokens -= 1.0;
      return true;
    }
    const double retry = (1.0 - m.tokens) / o.rate;
    error(errc::rate_limited,
          "slow down: at most " + std::to_string(static_cast<int>(o.rate)) + " messages per second; retry in " +
              std::to_string(static_cast<int>(retry * 1000)) + " ms",
          {{"retry_after", retry}});
    return false;
  };
  auto text_ok = [&]() -> bool {
    if (body.empty()) {
      error(errc::bad_request, "empty message");
      return false;
    }
    if (body.size() > o.max_message) {
      error(errc::too_large,
            "message is " + std::to_string(body.size()) + " bytes; the limit is " + std::to_string(o.max_message),
            {{"limit", o.max_message}});
      return false;
    }
    if (!proto::is_valid_utf8(body)) {
      error(errc::bad_request, "message is not valid UTF-8");
      return false;
    }
    return true;
  };

  std::string key, shown;
  if (type == "chat.join") {
    if (!room_arg(key, shown)) return;
    if (m.rooms.count(key)) return error(errc::bad_request, "already in #" + key);
    if (!hub_.rooms_.count(key) && hub_.rooms_.size() >= o.max_rooms) {
      return error(errc::busy, "the server has its maximum of " + std::to_string(o.max_rooms) + " rooms");
    }
    auto& r = hub_.rooms_[key];  // created on first join
    std::vector<std::string> names;
    for (auto* x : r.members) names.push_back(x->nick);
    r.members.insert(&m);
    r.receivers.reset();
    m.rooms.insert(key);
    conn_.send({{"type", "chat.joined"}, {"id", id}, {"room", "#" + key}, {"topic", r.topic}, {"members", names}});
    for (const auto& past : r.history) hub_.deliver(m, past);  // replay, in order, marked history
    hub_.broadcast(r, encode({{"type", "chat.event"}, {"event", "join"}, {"room", "#" + key}, {"nick", m.nick},
                              {"ts", now_ms()}}));
    return;
  }
  if (type == "chat.part") {
    if (!room_arg(key, shown)) return;
    auto it = hub_.rooms_.find(key);
    if (it == hub_.rooms_.end() || !m.rooms.count(key)) return error(errc::not_found, "you are not in #" + key);
    hub_.broadcast(it->second, encode({{"type", "chat.event"}, {"event", "part"}, {"room", "#" + key},
                                       {"nick", m.nick}, {"reason", h.value("reason", std::string())},
                                       {"ts", now_ms()}}));
    it->second.members.erase(&m);
    it->second.receivers.reset();
    m.rooms.erase(key);
    return ok();
  }
  if (type == "chat.say") {
    if (!room_arg(key, shown) || !text_ok()) return;
    auto it = hub_.rooms_.find(key);
    if (it == hub_.rooms_.end() || !m.rooms.count(key)) return error(errc::not_found, "you are not in #" + key);
    if (!charge()) return;
    json msg = {{"type", "chat.message"}, {"room", "#" + key}, {"from", m.nick}, {"ts", now_ms()},
                {"action", h.value("action", false)}};
    hub_.broadcast(it->second, encode(msg, body));
    if (o.history > 0) {
      msg["history"] = true;
      auto& hist = it->second.history;
      hist.push_back(encode(msg, body));
      while (hist.size() > o.history) hist.pop_front();
    }
    return ok();
  }
  if (type == "chat.msg") {
    const std::string to = h.value("to", std::string());
    auto it = hub_.nicks_.find(lower(to));
    if (it == hub_.nicks_.end()) return error(errc::not_found, "no one is called '" + to + "'");
    if (!text_ok() || !charge()) return;
    auto frame = encode({{"type", "chat.message"}, {"to", it->second->nick}, {"from", m.nick}, {"private", true},
                         {"ts", now_ms()}, {"action", h.value("action", false)}},
                        body);
    hub_.deliver(*it->second, frame);
    if (it->second != &m) hub_.deliver(m, frame);  // the sender sees what was delivered
    return ok();
  }
  if (type == "chat.who") {
    if (!room_arg(key, shown)) return;
    auto it = hub_.rooms_.find(key);
    if (it == hub_.rooms_.end()) return error(errc::not_found, "no room #" + key);
    std::vector<std::string> names;
    for (auto* x : it->second.members) names.push_back(x->nick);
    std::sort(names.begin(), names.end());
    return ok({{"room", "#" + key}, {"members", names}, {"topic", it->second.topic}});
  }
  if (type == "chat.rooms") {
    json list = json::array();
    for (const auto& [name, r] : hub_.rooms_) {
      if (!r.members.empty()) list.push_back({{"room", "#" + name}, {"members", r.members.size()}, {"topic", r.topic}});
    }
    return ok({{"rooms", list}});
  }
  if (type == "chat.topic") {
    if (!room_arg(key, shown)) return;
    auto it = hub_.rooms_.find(key);
    if (it == hub_.rooms_.end() || !m.rooms.count(key)) return error(errc::not_found, "you are not in #" + key);
    auto t = h.find("topic");
    if (t == h.end()) return ok({{"room", "#" + key}, {"topic", it->second.topic}, {"by", it->second.topic_by}});
    if (!t->is_string()) return error(errc::bad_request, "'topic' must be a string");
    if (t->get_ref<const std::string&>().size() > o.max_message) {
      return error(errc::too_large, "a topic is at most " + std::to_string(o.max_message) + " bytes",
                   {{"limit", o.max_message}});
    }
    if (!charge()) return;
    it->second.topic = t->get<std::string>();
    it->second.topic_by = m.nick;
    hub_.broadcast(it->second, encode({{"type", "chat.event"}, {"event", "topic"}, {"room", "#" + key},
                                       {"nick", m.nick}, {"topic", it->second.topic}, {"ts", now_ms()}}));
    return ok();
  }
  if (type == "chat.nick") {
    const std::string nick = h.value("nick", std::string());
    if (!valid_nick(nick)) return error(errc::bad_request, "a nickname is 1-32 letters, digits, '-', '_' or '.'");
    auto existing = hub_.nicks_.find(lower(nick));
    if (existing != hub_.nicks_.end() && existing->second != &m) {
      const std::string alt = hub_.suggest_nick(nick);
      return error(errc::conflict, "nickname '" + nick + "' is taken; try '" + alt + "'", {{"suggestion", alt}});
    }
    if (!charge()) return;
    auto frame = encode({{"type", "chat.event"}, {"event", "nick"}, {"nick", m.nick}, {"new_nick", nick},
                         {"ts", now_ms()}});
    std::set<chat_member*> told{&m};
    for (const auto& name : m.rooms) {
      const auto& members = hub_.rooms_[name].members;
      told.insert(members.begin(), members.end());
    }
    hub_.fan_out(told, frame);
    hub_.nicks_.erase(lower(m.nick));
    m.nick = nick;
    hub_.nicks_[lower(nick)] = &m;
    return ok({{"nick", nick}});
  }
  if (type == "chat.quit") {
    std::string reason = h.value("reason", std::string("quit"));
    if (reason.size() > o.max_message) reason = "quit";
    set_close_reason(reason.empty() ? "quit" : reason, true);
    ok();
    conn_.close_after_flush("chat quit");
    return;
  }
  error(errc::unknown_type, "unknown chat request '" + std::string(type) + "'");
}

}  // namespace cskit::service
