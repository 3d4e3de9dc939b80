#include "service/irc_chat.hpp"

#include <algorithm>
#include <charconv>

#include "net/connection.hpp"
#include "service/chat_history.hpp"
#include "util/clock.hpp"

namespace cskit::service {

namespace irc = proto::irc;
using proto::errc;

const std::vector<irc_cap_name>& irc_caps() {
  static const std::vector<irc_cap_name> caps = {
      {"account-tag", cap_account_tag}, {"away-notify", cap_away_notify},
      {"batch", cap_batch},             {"cap-notify", cap_cap_notify},
      {"draft/chathistory", cap_chathistory}, {"echo-message", cap_echo_message},
      {"message-tags", cap_message_tags}, {"sasl", cap_sasl},
      {"server-time", cap_server_time},
  };
  return caps;
}

// ------------------------------------------------------------------ codec

std::string irc_text(std::string_view text) {
  // Free text in a line of its own kind (a topic, a reason, an away
  // message): one line, within what a 512-byte line leaves for it.
  const auto pieces = irc::split_text(irc::one_line(text), max_irc_text);
  return pieces.empty() ? std::string() : pieces.front();
}

std::string irc_word(std::string_view s) {
  // A middle parameter echoed back: one word, never empty, never ':'-led.
  if (s.empty() || s.front() == ':' || s.find_first_of(" \r\n") != std::string_view::npos) return "*";
  return std::string(s);
}

std::string irc_codec::prefix(std::string_view nick, std::string_view account) const {
  std::string p(nick);
  p += '!';
  p += account.empty() ? std::string_view("~u") : account;
  p += '@';
  p += host_;
  return p;
}

std::string irc_codec::tags(const chat_event& e, unsigned caps, std::string_view batch) const {
  std::string t;
  auto add = [&](std::string_view k, const std::string& v) {
    if (!t.empty()) t += ';';
    t += k;
    t += '=';
    t += irc::escape_tag_value(v);
  };
  if (!batch.empty() && (caps & cap_batch)) add("batch", std::string(batch));
  if (caps & cap_server_time) add("time", irc::iso_time(e.ts_ms));
  if ((caps & cap_account_tag) && !e.account.empty()) add("account", e.account);
  if ((caps & cap_message_tags) && e.what == chat_event::kind::message) add("msgid", std::to_string(e.id));
  return t;
}

void irc_codec::message_lines(std::string& out, const chat_event& e, unsigned caps, std::string_view batch) const {
  const std::string from = prefix(e.nick, e.account);
  const std::string t = tags(e, caps, batch);
  const std::string_view command = e.notice ? "NOTICE" : "PRIVMSG";
  const std::string& target = e.is_private ? e.target : e.room;
  // 512 bytes a line, CR LF included, for everything but the tags.
  const std::size_t overhead = 1 + from.size() + 1 + command.size() + 1 + target.size() + 2 + 2 +
                               (e.action ? 9 : 0);
  const std::size_t room = overhead < irc::max_line - 32 ? irc::max_line - overhead : 32;
  // A long or multi-line text takes several lines; only the first carries
  // the message's id (a msgid names one line), the others the rest of its tags.
  const std::string rest = tags(e, caps & ~cap_message_tags, batch);
  bool first = true;
  for (const auto& piece : irc::split_text(e.text, room)) {
    irc::append(out, first ? t : rest, from, command, {target, e.action ? "\x01" "ACTION " + piece + "\x01" : piece},
                true);
    first = false;
  }
}

std::shared_ptr<const std::string> irc_codec::encode(const chat_event& e, unsigned caps, bool own) const {
  using k = chat_event::kind;
  auto out = std::make_shared<std::string>();
  const std::string from = prefix(e.nick, e.account);
  switch (e.what) {
    case k::message:
      if (own && !(caps & cap_echo_message)) return nullptr;
      message_lines(*out, e, caps);
      break;
    case k::join:
      if (own) return nullptr;  // the joiner's own JOIN goes out with its reply, before NAMES
      irc::append(*out, tags(e, caps), from, "JOIN", {e.room});
      break;
    case k::part: irc::append(*out, tags(e, caps), from, "PART", {e.room, irc_text(e.text)}, true); break;
    case k::quit: irc::append(*out, tags(e, caps), from, "QUIT", {"Quit: " + irc_text(e.text)}, true); break;
    case k::nick: irc::append(*out, tags(e, caps), from, "NICK", {e.text}, true); break;
    case k::topic: irc::append(*out, tags(e, caps), from, "TOPIC", {e.room, irc_text(e.text)}, true); break;
    case k::away:
      if (own || !(caps & cap_away_notify)) return nullptr;
      if (e.text.empty()) {
        irc::append(*out, tags(e, caps), from, "AWAY", {});
      } else {
        irc::append(*out, tags(e, caps), from, "AWAY", {irc_text(e.text)}, true);
      }
      break;
  }
  return out;
}

// ------------------------------------------------------------------ client

irc_chat::irc_chat(chat_hub& hub, const irc_codec& codec, const irc_settings& settings, net::connection& conn,
                   std::string account, unsigned caps)
    : hub_(hub), codec_(codec), settings_(settings), conn_(conn), caps_(caps) {
  receiver_ = std::make_shared<chat_receiver>();
  receiver_->conn = conn.shared_from_this();
  receiver_->codec = &codec;
  receiver_->variant = caps & irc_variant_caps;
  member_ = hub.enter(receiver_, conn.executor(), std::move(account), conn.peer());
}

irc_chat::~irc_chat() { hub_.leave(*member_, quit_reason_); }

chat_refusal irc_chat::start(const std::string& nick) { return hub_.hello(*member_, nick); }

void irc_chat::set_caps(unsigned caps) {
  caps_ = caps;
  receiver_->variant = caps & irc_variant_caps;
}

void irc_chat::numeric(std::string& out, std::string_view what, std::initializer_list<std::string_view> params) const {
  std::vector<std::string> p{std::string(member_->nick.empty() ? "*" : member_->nick)};
  for (auto x : params) p.emplace_back(x);
  irc::append(out, {}, settings_.server_name, what, p, p.size() > 1);
}

void irc_chat::reply(std::string_view what, std::initializer_list<std::string_view> params) {
  std::string line;
  numeric(line, what, params);
  send(std::move(line));
}

void irc_chat::reply(std::string_view what, const std::vector<std::string>& params) {
  std::string line;
  irc::append(line, {}, settings_.server_name, what, params, params.size() > 1);
  send(std::move(line));
}

void irc_chat::send(std::string lines) { hub_.send_in_order(*member_, std::move(lines)); }

bool irc_chat::flooded(std::size_t limit) const {
  return receiver_->replies_queued.load() + conn_.queued_bytes() > limit;
}

void irc_chat::fail(std::string_view command, std::string_view code, std::initializer_list<std::string_view> context,
                    std::string_view text) {
  std::vector<std::string> p{std::string(command), std::string(code)};
  for (auto x : context) p.push_back(irc_word(x));
  p.emplace_back(text);
  std::string line;
  irc::append(line, {}, settings_.server_name, "FAIL", p, true);
  send(std::move(line));
}

void irc_chat::refuse(const chat_refusal& r, std::string_view command, std::string_view target_given) {
  const std::string text = irc::one_line(r.message);
  const std::string target = irc_word(target_given);
  switch (r.code) {
    case errc::rate_limited: return reply("263", {command, text});  // RPL_TRYAGAIN
    case errc::conflict: return reply("433", {target, text});       // ERR_NICKNAMEINUSE
    case errc::too_large: return reply("417", {text});              // ERR_INPUTTOOLONG
    case errc::not_found:
      if (!target.empty() && target[0] == '#') {
        return reply(command == "PRIVMSG" || command == "NOTICE" ? "404" : "442", {target, text});
      }
      return reply("401", {target, text});  // ERR_NOSUCHNICK
    case errc::busy: return reply("405", {target, text});  // ERR_TOOMANYCHANNELS
    default:
      if (command == "NICK") return reply("432", {target, text});  // ERR_ERRONEUSNICKNAME
      if (!target.empty() && target[0] == '#') return reply("479", {target, text});  // ERR_BADCHANNAME
      return fail(command, "INVALID_PARAMS", {}, text);
  }
}

std::string irc_chat::next_batch() { return "h" + std::to_string(++batches_); }

bool irc_chat::handle(const irc::message& m) {
  using handler = void (irc_chat::*)(const irc::message&);
  static constexpr std::pair<std::string_view, handler> handlers[] = {
      {"PRIVMSG", &irc_chat::on_privmsg}, {"NOTICE", &irc_chat::on_privmsg},  {"JOIN", &irc_chat::on_join},
      {"PART", &irc_chat::on_part},       {"TOPIC", &irc_chat::on_topic},     {"NAMES", &irc_chat::on_names},
      {"WHO", &irc_chat::on_who},         {"WHOIS", &irc_chat::on_whois},     {"LIST", &irc_chat::on_list},
      {"NICK", &irc_chat::on_nick},       {"AWAY", &irc_chat::on_away},       {"MODE", &irc_chat::on_mode},
      {"USERHOST", &irc_chat::on_userhost}, {"ISON", &irc_chat::on_ison},
      {"CHATHISTORY", &irc_chat::on_chathistory},
  };
  for (const auto& [name, fn] : handlers) {
    if (m.command == name) {
      (this->*fn)(m);
      return true;
    }
  }
  if (m.command == "TAGMSG") return true;  // client-only tags (typing...): not relayed, not refused
  if (m.command == "MOTD") return send_motd(), true;
  if (m.command == "LUSERS") return send_lusers(), true;
  return false;
}

namespace {
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at <= s.size()) {
    const auto comma = s.find(',', at);
    std::string item = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (!item.empty()) out.push_back(std::move(item));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

// "\x01ACTION text\x01" -> text (action); other text as is.
std::string strip_action(const std::string& text, bool& action) {
  static constexpr std::string_view head = "\x01" "ACTION ";
  action = text.size() >= head.size() && text.compare(0, head.size(), head) == 0;
  if (!action) return text;
  std::string t = text.substr(head.size());
  if (!t.empty() && t.back() == '\x01') t.pop_back();
  return t;
}
}  // namespace

void irc_chat::on_privmsg(const irc::message& m) {
  const bool notice = m.command == "NOTICE";
  // RFC 2812: no error reply is ever sent for a NOTICE.
  if (m.params.empty()) {
    if (!notice) reply("411", {"No recipient given (PRIVMSG)"});
    return;
  }
  if (m.params.size() < 2 || m.params[1].empty()) {
    if (!notice) reply("412", {"No text to send"});
    return;
  }
  bool action = false;
  const std::string text = strip_action(m.params[1], action);
  const auto targets = split_list(m.params[0]);
  if (targets.size() > 4) {  // TARGMAX=PRIVMSG:4,NOTICE:4
    if (!notice) reply("407", {"*", "Too many recipients: at most 4"});
    return;
  }
  for (const auto& target : targets) {
    const chat_say how{action, notice};
    const chat_refusal r = target[0] == '#' ? hub_.say(*member_, target, text, how)
                                            : hub_.msg(*member_, target, text, how);
    if (!r.ok() && !notice) refuse(r, m.command, target);
  }
}

void irc_chat::on_join(const irc::message& m) {
  if (m.params.empty()) return reply("461", {"JOIN", "Not enough parameters"});
  if (m.params[0] == "0") {  // leave every room
    const auto rooms = member_->rooms;
    for (const auto& key : rooms) hub_.part(*member_, "#" + key, "left all rooms");
    return;
  }
  for (const auto& room : split_list(m.params[0])) join_one(room);
}

void irc_chat::join_one(const std::string& room) {
  if (room[0] != '#') return reply("403", {irc_word(room), "No such channel: room names start with '#'"});
  // The JOIN echo, topic, names and the replay, in the hub's order: ahead
  // of the room's traffic (the hub's join event skips its own joiner for
  // IRC, see irc_codec).
  auto answer = [&](const chat_room_view& v) {
    chat_event self;
    self.what = chat_event::kind::join;
    self.nick = member_->nick;
    self.account = member_->account;
    self.ts_ms = util::realtime_ns() / 1'000'000;
    std::string out;
    irc::append(out, codec_.tags(self, caps_), codec_.prefix(self.nick, self.account), "JOIN", {v.room});
    topic_lines(out, v, false);
    names_lines(out, v);
    // Old lines replayed as if new would mislead: only a client that can
    // tell (server-time) gets the replay, and not one that fetches history
    // itself (draft/chathistory).
    if ((caps_ & cap_server_time) && !(caps_ & cap_chathistory)) history_lines(out, v.room, v.history);
    return out;
  };
  if (auto r = hub_.join(*member_, room, answer); !r.ok()) {
    if (r.code == errc::bad_request && member_->rooms.count(room_key(room))) return;  // already in it
    refuse(r, "JOIN", room);
  }
}

void irc_chat::history_lines(std::string& out, const std::string& target,
                             const std::vector<std::shared_ptr<const chat_event>>& events) {
  if (events.empty()) return;
  const bool batched = caps_ & cap_batch;
  const std::string ref = batched ? next_batch() : std::string();
  if (batched) irc::append(out, {}, settings_.server_name, "BATCH", {"+" + ref, "chathistory", target});
  for (const auto& e : events) codec_.message_lines(out, *e, caps_, ref);
  if (batched) irc::append(out, {}, settings_.server_name, "BATCH", {"-" + ref});
}

void irc_chat::topic_lines(std::string& out, const chat_room_view& v, bool none_too) const {
  if (v.topic.empty()) {
    if (none_too) numeric(out, "331", {v.room, "No topic is set"});
    return;
  }
  numeric(out, "332", {v.room, irc_text(v.topic)});
  numeric(out, "333", {v.room, v.topic_by.empty() ? settings_.server_name : v.topic_by, std::to_string(v.topic_ms / 1000)});
}

void irc_chat::names_lines(std::string& out, const chat_room_view& v) const {
  // As many nicknames a line as fit in 512 bytes.
  const std::size_t head = 1 + settings_.server_name.size() + 5 + member_->nick.size() + 3 + v.room.size() + 4;
  std::string names;
  for (const auto& [nick, account] : v.members) {
    if (!names.empty() && head + names.size() + nick.size() + 3 > irc::max_line) {
      numeric(out, "353", {"=", v.room, names});
      names.clear();
    }
    if (!names.empty()) names += ' ';
    names += nick;
  }
  if (!names.empty()) numeric(out, "353", {"=", v.room, names});
  numeric(out, "366", {v.room, "End of /NAMES list"});
}

void irc_chat::on_part(const irc::message& m) {
  if (m.params.empty()) return reply("461", {"PART", "Not enough parameters"});
  const std::string reason = m.params.size() > 1 ? m.params[1] : std::string();
  for (const auto& room : split_list(m.params[0])) {
    if (auto r = hub_.part(*member_, room, reason); !r.ok()) {
      reply(r.code == errc::not_found ? "442" : "403", {irc_word(room), irc::one_line(r.message)});
    }
  }
}

void irc_chat::on_topic(const irc::message& m) {
  if (m.params.empty()) return reply("461", {"TOPIC", "Not enough parameters"});
  chat_room_view v;
  const std::string* topic = m.params.size() > 1 ? &m.params[1] : nullptr;
  if (auto r = hub_.topic(*member_, m.params[0], topic, v); !r.ok()) return refuse(r, "TOPIC", m.params[0]);
  if (!topic) {  // (a new topic comes back as the TOPIC line to the room)
    std::string out;
    topic_lines(out, v, true);
    send(std::move(out));
  }
}

void irc_chat::on_names(const irc::message& m) {
  if (m.params.empty()) return reply("366", {"*", "End of /NAMES list"});
  for (const auto& room : split_list(m.params[0])) {
    chat_room_view v;
    std::string out;
    if (hub_.who(room, v).ok()) names_lines(out, v);
    else numeric(out, "366", {irc_word(room), "End of /NAMES list"});
    send(std::move(out));
  }
}

void irc_chat::on_who(const irc::message& m) {
  const std::string mask = m.params.empty() ? std::string("*") : m.params[0];
  auto line = [&](const std::string& room, const std::string& nick, const std::string& account, bool away) {
    reply("352", {room, account.empty() ? "~u" : account, settings_.host, settings_.server_name, nick,
                  away ? "G" : "H", "0 " + nick});
  };
  chat_room_view v;
  chat_member_view w;
  if (!mask.empty() && mask[0] == '#') {
    // A room's members are listed to its members; to others, like any +i user, not.
    if (hub_.who(mask, v).ok() && member_->rooms.count(room_key(mask))) {
      for (const auto& [nick, account] : v.members) {
        line(v.room, nick, account, std::count(v.away.begin(), v.away.end(), nick) > 0);
      }
    }
  } else if (hub_.whois(mask, w).ok() && visible_to_me(w)) {
    line("*", w.nick, w.account, !w.away.empty());
  }
  reply("315", {irc_word(mask), "End of /WHO list"});
}

bool irc_chat::visible_to_me(const chat_member_view& w) const {
  if (!w.invisible || w.nick == member_->nick) return true;
  return std::any_of(w.rooms.begin(), w.rooms.end(), [&](const std::string& r) { return member_->rooms.count(room_key(r)); });
}

void irc_chat::on_whois(const irc::message& m) {
  if (m.params.empty()) return reply("431", {"No nickname given"});
  const std::string& nick = m.params.back();  // WHOIS [server] nick
  chat_member_view w;
  if (!hub_.whois(nick, w).ok()) {
    reply("401", {nick, "No such nick"});
    return reply("318", {nick, "End of /WHOIS list"});
  }
  reply("311", {w.nick, w.account, settings_.host, "*", w.nick});
  std::string rooms;  // RPL_WHOISCHANNELS, in lines that fit
  for (const auto& r : w.rooms) {
    if (rooms.size() + r.size() > 400) {
      reply("319", {w.nick, rooms});
      rooms.clear();
    }
    rooms += (rooms.empty() ? "" : " ") + r;
  }
  if (!rooms.empty()) reply("319", {w.nick, rooms});
  reply("312", {w.nick, settings_.server_name, "cskit"});
  if (!w.away.empty()) reply("301", {w.nick, irc_text(w.away)});
  reply("330", {w.nick, w.account, "is logged in as"});
  reply("317", {w.nick, std::to_string(w.idle_ms / 1000), std::to_string(w.signon_ms / 1000), "seconds idle, signon time"});
  reply("318", {w.nick, "End of /WHOIS list"});
}

void irc_chat::on_list(const irc::message&) {
  reply("321", {"Channel", "Users  Name"});
  for (const auto& r : hub_.rooms()) reply("322", {r.room, std::to_string(r.members), irc_text(r.topic)});
  reply("323", {"End of /LIST"});
}

void irc_chat::on_nick(const irc::message& m) {
  if (m.params.empty() || m.params[0].empty()) return reply("431", {"No nickname given"});
  if (m.params[0] == member_->nick) return;
  if (auto r = hub_.nick(*member_, m.params[0]); !r.ok()) refuse(r, "NICK", m.params[0]);
}

void irc_chat::on_away(const irc::message& m) {
  const std::string text = m.params.empty() ? std::string() : m.params[0];
  if (auto r = hub_.away(*member_, text); !r.ok()) return refuse(r, "AWAY", {});
  if (text.empty()) reply("305", {"You are no longer marked as being away"});
  else reply("306", {"You have been marked as being away"});
}

void irc_chat::on_mode(const irc::message& m) {
  if (m.params.empty()) return reply("461", {"MODE", "Not enough parameters"});
  const std::string& target = m.params[0];
  if (target[0] == '#') {
    chat_room_view v;
    if (!hub_.who(target, v).ok()) return reply("403", {target, "No such channel"});
    if (m.params.size() == 1) return reply("324", {v.room, "+n"});  // members only: no messages from outside
    const std::string& change = m.params[1];
    if (change == "b" || change == "+b") return reply("368", {v.room, "End of channel ban list"});
    return reply("482", {v.room, "Room modes are not changed on cskit: every member is equal"});
  }
  if (room_key(target) != room_key(member_->nick)) return reply("502", {"Can't change mode for other users"});
  if (m.params.size() == 1) return reply("221", {invisible_ ? "+i" : "+"});
  // Only +i/-i: whether one shows in WHO to those who share no room.
  const std::string& change = m.params[1];
  bool on = true, known = true;
  for (const char c : change) {
    if (c == '+' || c == '-') on = c == '+';
    else if (c == 'i') invisible_ = on;
    else known = false;
  }
  if (!known) return reply("501", {"Unknown MODE flag: only i is known"});
  hub_.set_invisible(*member_, invisible_);
  std::string line;
  irc::append(line, {}, member_->nick, "MODE", {member_->nick, invisible_ ? "+i" : "-i"}, true);
  send(std::move(line));
}

void irc_chat::on_userhost(const irc::message& m) {
  std::string out;
  for (std::size_t i = 0; i < m.params.size() && i < 5; ++i) {
    chat_member_view w;
    if (!hub_.whois(m.params[i], w).ok()) continue;
    out += (out.empty() ? "" : " ") + w.nick + "=" + (w.away.empty() ? "+" : "-") + w.account + "@" + settings_.host;
  }
  reply("302", {out});
}

void irc_chat::on_ison(const irc::message& m) {
  std::string out;
  for (const auto& p : m.params) {
    for (const auto& nick : split_list(p)) {
      // ISON takes nicknames separated by spaces (usually in one trailing parameter).
      std::size_t at = 0;
      while (at < nick.size()) {
        const auto sp = nick.find(' ', at);
        const std::string one = nick.substr(at, sp == std::string::npos ? std::string::npos : sp - at);
        chat_member_view w;
        if (!one.empty() && hub_.whois(one, w).ok()) out += (out.empty() ? "" : " ") + w.nick;
        if (sp == std::string::npos) break;
        at = sp + 1;
      }
    }
  }
  reply("303", {out});
}

void irc_chat::send_lusers() {
  const auto [members, rooms] = hub_.counts();
  reply("251", {"There are " + std::to_string(members) + " users and 0 invisible on 1 server"});
  reply("254", {std::to_string(rooms), "channels formed"});
  reply("255", {"I have " + std::to_string(members) + " clients and 0 servers"});
}

void irc_chat::send_motd() {
  if (settings_.motd.empty()) return reply("422", {"MOTD File is missing"});
  reply("375", {"- " + settings_.server_name + " Message of the day - "});
  for (const auto& l : settings_.motd) reply("372", {"- " + irc::one_line(l)});
  reply("376", {"End of /MOTD command."});
}

// ------------------------------------------------------------------ CHATHISTORY

namespace {
// "*", "timestamp=...", "msgid=..."; false if malformed.
bool parse_ref(const std::string& s, chat_history_query::ref& r) {
  if (s == "*") {
    r.any = true;
    return true;
  }
  if (s.rfind("timestamp=", 0) == 0) {
    auto t = irc::parse_iso_time(std::string_view(s).substr(10));
    if (!t) return false;
    r.ts_ms = *t;
    return true;
  }
  if (s.rfind("msgid=", 0) == 0) {
    const std::string id = s.substr(6);
    const auto [end, ec] = std::from_chars(id.data(), id.data() + id.size(), r.id);
    r.by_id = true;
    return !id.empty() && ec == std::errc() && end == id.data() + id.size();
  }
  return false;
}
}  // namespace

void irc_chat::on_chathistory(const irc::message& m) {
  using mode = chat_history_query::mode;
  static constexpr std::pair<std::string_view, mode> modes[] = {
      {"LATEST", mode::latest}, {"BEFORE", mode::before}, {"AFTER", mode::after},
      {"AROUND", mode::around}, {"BETWEEN", mode::between}};
  if (m.params.size() < 4) return fail("CHATHISTORY", "NEED_MORE_PARAMS", {m.params.empty() ? "*" : m.params[0]}, "Missing parameters");
  std::string sub = m.params[0];
  for (auto& c : sub) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  chat_history_query q;
  auto it = std::find_if(std::begin(modes), std::end(modes), [&](const auto& p) { return p.first == sub; });
  if (it == std::end(modes)) return fail("CHATHISTORY", "INVALID_PARAMS", {sub}, "Unknown subcommand");
  q.what = it->second;
  const std::string& target = m.params[1];
  const bool between = q.what == mode::between;
  if (between && m.params.size() < 5) return fail("CHATHISTORY", "NEED_MORE_PARAMS", {sub}, "Missing parameters");
  const std::string& limit = m.params[between ? 4 : 3];
  if (!parse_ref(m.params[2], q.a) || (q.a.any && q.what != mode::latest) ||
      (between && (!parse_ref(m.params[3], q.b) || q.b.any))) {
    return fail("CHATHISTORY", "INVALID_PARAMS", {sub, m.params[2]}, "Invalid message reference");
  }
  std::size_t n = 0;
  const auto [end, ec] = std::from_chars(limit.data(), limit.data() + limit.size(), n);
  if (limit.empty() || ec != std::errc() || end != limit.data() + limit.size()) {
    return fail("CHATHISTORY", "INVALID_PARAMS", {sub, limit}, "Invalid limit");
  }
  q.limit = std::min(n, settings_.history_max);
  std::vector<std::shared_ptr<const chat_event>> events;
  if (auto r = hub_.history(*member_, target, q, events); !r.ok()) {
    return fail("CHATHISTORY", "INVALID_TARGET", {sub, target}, irc::one_line(r.message));
  }
  // A batch (even an empty one) for a client that has batch.
  std::string out;
  const bool batched = caps_ & cap_batch;
  const std::string ref = batched ? next_batch() : std::string();
  if (batched) irc::append(out, {}, settings_.server_name, "BATCH", {"+" + ref, "chathistory", target});
  for (const auto& e : events) codec_.message_lines(out, *e, caps_, ref);
  if (batched) irc::append(out, {}, settings_.server_name, "BATCH", {"-" + ref});
  send(std::move(out));
}

}  // namespace cskit::service
