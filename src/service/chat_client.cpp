#include "service/chat_client.hpp"

#include <boost/asio/post.hpp>

#include "net/connection.hpp"
#include "proto/messages.hpp"
#include "proto/websocket.hpp"
#include "util/clock.hpp"

namespace cskit::service {

using proto::errc;
using proto::json;

namespace {

constexpr std::size_t max_joined_names = 1000;  // 33 bytes each at most: well within a 64 KiB header

std::shared_ptr<const std::string> encode(const json& header, std::string_view body = {}) {
  auto s = std::make_shared<std::string>();
  proto::encode_frame(*s, header, body);
  return s;
}

json message_header(const chat_event& e) {
  json h = {{"type", "chat.message"}};
  if (e.is_private) {
    h["to"] = e.target;
  } else {
    h["room"] = e.room;
  }
  h["from"] = e.nick;
  if (e.is_private) h["private"] = true;
  h["ts"] = e.ts_ms;
  h["action"] = e.action;
  if (e.notice) h["notice"] = true;
  return h;
}

json event_header(const chat_event& e) {
  using k = chat_event::kind;
  json h = {{"type", "chat.event"}};
  switch (e.what) {
    case k::join:
      h.update({{"event", "join"}, {"room", e.room}, {"nick", e.nick}, {"account", e.account}});
      break;
    case k::part: h.update({{"event", "part"}, {"room", e.room}, {"nick", e.nick}, {"reason", e.text}}); break;
    case k::quit: h.update({{"event", "quit"}, {"nick", e.nick}, {"reason", e.text}}); break;
    case k::nick: h.update({{"event", "nick"}, {"nick", e.nick}, {"new_nick", e.text}}); break;
    case k::topic: h.update({{"event", "topic"}, {"room", e.room}, {"nick", e.nick}, {"topic", e.text}}); break;
    case k::away: h.update({{"event", "away"}, {"nick", e.nick}, {"message", e.text}}); break;
    case k::message: break;  // not an event
  }
  h["ts"] = e.ts_ms;
  return h;
}

class cskit_codec final : public chat_codec {
 public:
  std::shared_ptr<const std::string> encode(const chat_event& e, unsigned, bool) const override {
    if (e.what == chat_event::kind::message) return service::encode(message_header(e), e.text);
    return service::encode(event_header(e));
  }
};

class cskit_wire final : public chat_wire {
 public:
  void encode(std::string& out, const json& header, std::string_view body) const override {
    if (proto::encode_frame(out, header, body) != errc::ok) {
      // (a header within the hub's bounds always fits: this is only a guard)
      proto::encode_frame(out, proto::make_error(errc::internal_error, "cannot describe the answer",
                                                 header.value("id", std::uint64_t{0})));
    }
  }
  void send(net::connection& c, const json& header) const override { c.send(header); }
  const chat_codec& codec() const override { return cskit_chat_codec(); }
};

// A WebSocket text message: the header as JSON, the text as its "text".
std::string websocket_text(const json& header, std::string_view body) {
  std::string out;
  if (body.empty() && !header.contains("text")) {
    proto::ws::encode(out, proto::ws::opcode::text, header.dump(-1, ' ', false, json::error_handler_t::replace));
    return out;
  }
  json h = header;
  h["text"] = body;
  proto::ws::encode(out, proto::ws::opcode::text, h.dump(-1, ' ', false, json::error_handler_t::replace));
  return out;
}

class websocket_codec final : public chat_codec {
 public:
  std::shared_ptr<const std::string> encode(const chat_event& e, unsigned, bool) const override {
    if (e.what == chat_event::kind::message) return std::make_shared<const std::string>(websocket_text(message_header(e), e.text));
    return std::make_shared<const std::string>(websocket_text(event_header(e), {}));
  }
};

class websocket_wire final : public chat_wire {
 public:
  void encode(std::string& out, const json& header, std::string_view body) const override {
    out += websocket_text(header, body);
  }
  void send(net::connection& c, const json& header) const override { c.send_raw(websocket_text(header, {})); }
  const chat_codec& codec() const override {
    static const websocket_codec codec;
    return codec;
  }
};

}  // namespace

const chat_codec& cskit_chat_codec() {
  static const cskit_codec codec;
  return codec;
}

const chat_wire& cskit_chat_wire() {
  static const cskit_wire wire;
  return wire;
}

const chat_wire& websocket_chat_wire() {
  static const websocket_wire wire;
  return wire;
}

chat_client::chat_client(chat_hub& hub, net::connection& conn, std::string account, const chat_wire& wire)
    : hub_(hub), conn_(conn), wire_(wire) {
  auto receiver = std::make_shared<chat_receiver>();
  receiver->conn = conn.shared_from_this();
  receiver->codec = &wire.codec();
  member_ = hub.enter(std::move(receiver), conn.executor(), std::move(account), conn.peer());
  // Dead and half-open connections: a client silent for ping_interval is
  // pinged, one silent for ping_timeout is dropped (the connection's own
  // deadline timer does both).
  conn.set_keepalive(hub.options().ping_interval, hub.options().ping_timeout);
}

chat_client::~chat_client() { hub_.leave(*member_, close_reason_); }

void chat_client::handle(std::uint64_t id, std::string_view type, const json& h, const std::string& body) {
  const call c{id, h, body};
  if (type == "chat.hello") return on_hello(c);
  if (member_->nick.empty()) return answer(id, {errc::bad_request, "send chat.hello with a nickname first"});
  using handler = void (chat_client::*)(const call&);
  static constexpr std::pair<std::string_view, handler> handlers[] = {
      {"chat.join", &chat_client::on_join},   {"chat.part", &chat_client::on_part},
      {"chat.say", &chat_client::on_say},     {"chat.msg", &chat_client::on_msg},
      {"chat.who", &chat_client::on_who},     {"chat.rooms", &chat_client::on_rooms},
      {"chat.topic", &chat_client::on_topic}, {"chat.nick", &chat_client::on_nick},
      {"chat.away", &chat_client::on_away},   {"chat.whois", &chat_client::on_whois},
      {"chat.quit", &chat_client::on_quit},
  };
  for (const auto& [name, fn] : handlers) {
    if (type == name) return (this->*fn)(c);
  }
  answer(id, {errc::unknown_type, "unknown chat request '" + std::string(type) + "'"});
}

void chat_client::answer(std::uint64_t id, const chat_refusal& r, json extra) {
  if (r.ok()) {
    json reply = {{"type", "chat.ok"}, {"id", id}};
    reply.update(extra);
    wire_.send(conn_, reply);
    return;
  }
  json e = proto::make_error(r.code, r.message, id);
  if (!r.suggestion.empty()) e["suggestion"] = r.suggestion;
  if (r.code == errc::rate_limited) e["retry_after"] = r.retry_after;
  if (r.limit) e["limit"] = r.limit;
  wire_.send(conn_, e);
}

namespace {
std::string text_field(const json& h, const char* key) { return h.value(key, std::string()); }
}  // namespace

void chat_client::on_hello(const call& c) {
  if (auto r = hub_.hello(*member_, text_field(c.h, "nick")); !r.ok()) return answer(c.id, r);
  const auto& o = hub_.options();
  wire_.send(conn_, {{"type", "chat.welcome"},
              {"id", c.id},
              {"nick", member_->nick},
              {"account", member_->account},
              {"default_room", o.default_room},
              {"max_message", o.max_message},
              {"history", o.history},
              {"ts", util::realtime_ns() / 1'000'000}});
}

void chat_client::on_join(const call& c) {
  const std::string& me = member_->nick;
  // chat.joined, then the replay, in the hub's order: ahead of the join
  // event and of anything said in the room after the join.
  auto reply = [&](const chat_room_view& v) {
    // The member list within a header's bounds: at most 1000 names (ask
    // chat.who for all of them), with the count of the rest.
    json names = json::array();
    std::size_t more = 0;
    for (const auto& [nick, account] : v.members) {
      if (nick == me) continue;
      if (names.size() < max_joined_names) names.push_back(nick);
      else ++more;
    }
    json joined = {{"type", "chat.joined"}, {"id", c.id}, {"room", v.room}, {"topic", v.topic}, {"members", names}};
    if (more) joined["more_members"] = more;
    std::string out;
    wire_.encode(out, joined);  // (a topic cannot make it too large: it is at most max_message bytes)
    for (const auto& past : v.history) {
      json h = message_header(*past);
      h["history"] = true;
      wire_.encode(out, h, past->text);
    }
    return out;
  };
  if (auto r = hub_.join(*member_, text_field(c.h, "room"), reply); !r.ok()) answer(c.id, r);
}

void chat_client::on_part(const call& c) {
  answer(c.id, hub_.part(*member_, text_field(c.h, "room"), text_field(c.h, "reason")));
}

void chat_client::on_say(const call& c) {
  answer(c.id, hub_.say(*member_, text_field(c.h, "room"), c.body, {c.h.value("action", false), false}));
}

void chat_client::on_msg(const call& c) {
  answer(c.id, hub_.msg(*member_, text_field(c.h, "to"), c.body, {c.h.value("action", false), false}));
}

void chat_client::on_who(const call& c) {
  chat_room_view v;
  if (auto r = hub_.who(text_field(c.h, "room"), v); !r.ok()) return answer(c.id, r);
  json names = json::array(), accounts = json::object();
  for (const auto& [nick, account] : v.members) {
    names.push_back(nick);
    accounts[nick] = account;
  }
  answer(c.id, {}, {{"room", v.room}, {"members", names}, {"accounts", accounts}, {"topic", v.topic},
                    {"away", v.away}});
}

void chat_client::on_rooms(const call& c) {
  json list = json::array();
  for (const auto& r : hub_.rooms()) list.push_back({{"room", r.room}, {"members", r.members}, {"topic", r.topic}});
  answer(c.id, {}, {{"rooms", list}});
}

void chat_client::on_topic(const call& c) {
  auto t = c.h.find("topic");
  if (t != c.h.end() && !t->is_string()) return answer(c.id, {errc::bad_request, "'topic' must be a string"});
  const std::string* topic = t == c.h.end() ? nullptr : &t->get_ref<const std::string&>();
  chat_room_view v;
  if (auto r = hub_.topic(*member_, text_field(c.h, "room"), topic, v); !r.ok()) return answer(c.id, r);
  if (topic) return answer(c.id, {});
  answer(c.id, {}, {{"room", v.room}, {"topic", v.topic}, {"by", v.topic_by}});
}

void chat_client::on_nick(const call& c) {
  if (auto r = hub_.nick(*member_, text_field(c.h, "nick")); !r.ok()) return answer(c.id, r);
  answer(c.id, {}, {{"nick", member_->nick}});
}

void chat_client::on_away(const call& c) {
  const chat_refusal r = hub_.away(*member_, text_field(c.h, "message"));
  answer(c.id, r, {{"away", !member_->away.empty()}});
}

void chat_client::on_whois(const call& c) {
  chat_member_view v;
  if (auto r = hub_.whois(text_field(c.h, "nick"), v); !r.ok()) return answer(c.id, r);
  answer(c.id, {}, {{"nick", v.nick}, {"account", v.account}, {"away", v.away}, {"rooms", v.rooms},
                    {"signon", v.signon_ms}, {"idle_ms", v.idle_ms}});
}

void chat_client::on_quit(const call& c) {
  std::string reason = c.h.value("reason", std::string("quit"));
  if (reason.size() > hub_.options().max_message) reason = "quit";
  set_close_reason(reason.empty() ? "quit" : reason, true);
  answer(c.id, {});
  // Closed behind what the hub has queued to this client so far (its own
  // last messages coming back), which this loop delivers first.
  boost::asio::post(conn_.executor(), [w = conn_.weak_from_this()] {
    if (auto c = w.lock()) c->close_after_flush("chat quit");
  });
}

}  // namespace cskit::service
