// `cskit chat`: a terminal chat client. On a terminal, incoming messages
// appear above the line being typed (app/line_editor); otherwise every input
// line is sent and every event printed as one line (--json: JSON lines), so
// bots and tests can drive it. Reconnects with backoff and rejoins its rooms.
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <map>
#include <set>
#include <thread>

#include "app/cli_options.hpp"
#include "app/command_table.hpp"
#include "app/commands.hpp"
#include "app/line_editor.hpp"
#include "proto/messages.hpp"

namespace cskit::app {

using proto::json;

namespace {

constexpr auto keepalive = std::chrono::seconds(20);

std::string clock_text(std::int64_t ms) {
  time_t t = static_cast<time_t>(ms / 1000);
  tm local{};
  ::localtime_r(&t, &local);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &local);
  return buf;
}

}  // namespace

namespace {

class chat_ui {
 public:
  chat_ui(const chat_options& o, bool interactive)
      : o_(o), interactive_(interactive), colour_(interactive && ::isatty(STDOUT_FILENO) && colour_term()) {}

  /// Prints one event line: above the input line on a terminal.
  void show(const std::string& line) {
    if (editor_) {
      editor_->print_above(line);
    } else {
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    }
  }
  void attach(line_editor* e) { editor_ = e; }

  std::string nick(const std::string& n) const {
    if (!colour_) return n;
    static const int colours[] = {31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96};
    std::size_t h = 0;
    for (char c : n) h = h * 131 + static_cast<unsigned char>(c);
    return fmt::format("\x1b[{}m{}\x1b[0m", colours[h % std::size(colours)], n);
  }

  /// Renders a server frame; returns false for frames that are not shown.
  void render(const proto::frame& f) {
    if (o_.common.json) {
      json j = f.header;
      j.erase("body");
      if (!f.body.empty()) j["text"] = f.body;
      show(j.dump());
      return;
    }
    const auto& h = f.header;
    const std::string type(f.type());
    const std::string ts = "[" + clock_text(h.value("ts", std::int64_t{0})) + "]";
    const std::string text = neutralize(f.body);
    const std::string from = neutralize(h.value("from", std::string()));
    if (type == "chat.message") {
      const bool history = h.value("history", false);
      std::string line;
      if (h.value("private", false)) {
        const std::string to = neutralize(h.value("to", std::string()));
        line = from == me_ ? fmt::format("{} -> *{}* {}", ts, nick(to), text)
                           : fmt::format("{} *{}* {}", ts, nick(from), text);
      } else if (h.value("action", false)) {
        line = fmt::format("{} {} * {} {}", ts, h.value("room", std::string()), nick(from), text);
      } else {
        line = fmt::format("{} {} <{}> {}", ts, h.value("room", std::string()), nick(from), text);
      }
      show(history ? line + " (history)" : line);
    } else if (type == "chat.event") {
      const std::string ev = h.value("event", std::string());
      const std::string who = nick(neutralize(h.value("nick", std::string())));
      const std::string room = h.value("room", std::string());
      if (ev == "join") show(fmt::format("{} -- {} joined {}", ts, who, room));
      else if (ev == "part") show(fmt::format("{} -- {} left {}", ts, who, room));
      else if (ev == "quit") show(fmt::format("{} -- {} quit ({})", ts, who, neutralize(h.value("reason", std::string()))));
      else if (ev == "nick") show(fmt::format("{} -- {} is now {}", ts, who, nick(neutralize(h.value("new_nick", std::string())))));
      else if (ev == "topic") show(fmt::format("{} -- {} set the topic of {}: {}", ts, who, room, neutralize(h.value("topic", std::string()))));
    }
  }

  /// Where a typed line goes, shown in the prompt: "[#lobby] > ".
  void status(const std::string& where) {
    if (editor_) editor_->set_prompt(where.empty() ? "> " : "[" + neutralize(where) + "] > ");
  }

  void note(const std::string& text) { show(o_.common.json ? json{{"type", "note"}, {"text", text}}.dump() : "-- " + text); }
  void set_me(const std::string& n) { me_ = n; }

 private:
  static bool colour_term() {
    const char* t = std::getenv("TERM");
    return t && *t && std::string_view(t) != "dumb" && !std::getenv("NO_COLOR");
  }
  const chat_options& o_;
  bool interactive_;
  bool colour_;
  line_editor* editor_ = nullptr;
  std::string me_;
};

struct chat_state {
  std::string nick;                ///< empty: the account's name, learnt at login
  bool nick_given = false;         ///< --nick: no automatic fallback when it is taken
  std::string current;             ///< room the next plain line goes to
  std::string query;               ///< /query NICK: plain lines go to NICK instead
  std::vector<std::string> rooms;  ///< joined, in order (to rejoin)
  bool quitting = false;
  bool paced = false;              ///< not a terminal: each line waits for its answer (rate limit)
  int refused = 0;                 ///< lines the server refused (the exit status says so)
  int awaiting_echo = 0;           ///< own messages accepted and not seen back yet
  std::string previous_nick;       ///< echoes of lines sent before a /nick carry it
  std::string piped;               ///< piped input read and not handled yet (kept across reconnects)
  bool input_done = false;         ///< piped input has ended
  bool interrupt_armed = false;    ///< Ctrl-C with a typed line: the next one quits
};

std::string help_text() {
  return "commands: /join (/j) ROOM, /part [ROOM], /msg NICK|#ROOM text, /query (/q) [NICK], /me action, "
         "/names (/who) [ROOM], /list (/rooms), /whois NICK, /away [message], /topic [text], /nick NAME, "
         "/quit [reason], /help; anything else goes to the current room (or /query)";
}

// A chat.who answer as "alice (account alice), bobby (account bob)": each
// nickname with the account it belongs to.
std::string who_list(const proto::json& h) {
  std::string list;
  const auto accounts = h.value("accounts", proto::json::object());
  for (const auto& m : h.value("members", std::vector<std::string>{})) {
    if (!list.empty()) list += ", ";
    list += neutralize(m);
    if (auto a = accounts.find(m); a != accounts.end() && a->is_string()) {
      list += " (account " + neutralize(a->get<std::string>()) + ")";
    }
  }
  return list;
}

// A nickname from an account's name: the characters nicknames may have,
// at most 32 (an account's name may have 64).
std::string nick_from(std::string name) {
  name.erase(std::remove_if(name.begin(), name.end(), [](char c) {
               return !(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.');
             }),
             name.end());
  name.resize(std::min<std::size_t>(name.size(), 32));
  return name.empty() ? "guest" : name;
}

std::string whois_text(const proto::json& h) {
  std::string rooms;
  for (const auto& r : h.value("rooms", std::vector<std::string>{})) rooms += " " + neutralize(r);
  std::string text = neutralize(h.value("nick", std::string())) + " is account " +
                     neutralize(h.value("account", std::string())) + ", idle " +
                     std::to_string(h.value("idle_ms", std::int64_t{0}) / 1000) + " s";
  if (!rooms.empty()) text += ", in" + rooms;
  const std::string away = h.value("away", std::string());
  if (!away.empty()) text += "; away: " + neutralize(away);
  return text;
}

class chat_session {
 public:
  chat_session(const chat_options& o, chat_ui& ui, chat_state& st) : o_(o), ui_(ui), st_(st) {}

  /// Connects, introduces itself and (re)joins. Throws client_error.
  void open() {
    conn_.emplace(connect_client(o_.common, o_.common.host));
    st_.awaiting_echo = 0;  // a new connection: nothing of ours is on its way back
    if (st_.nick.empty()) st_.nick = nick_from(conn_->greeting().user);  // the login's name is reserved for it
    proto::frame w = hello();
    st_.nick = w.header.value("nick", st_.nick);
    ui_.set_me(st_.nick);
    if (st_.rooms.empty()) st_.rooms.push_back(o_.room.empty() ? w.header.value("default_room", "lobby") : o_.room);
    auto rooms = st_.rooms;
    st_.rooms.clear();
    for (const auto& r : rooms) join(r);
  }

  void join(const std::string& room) {
    proto::frame j = request({{"type", "chat.join"}, {"room", room}});
    const std::string name = j.header.value("room", room);
    if (std::find(st_.rooms.begin(), st_.rooms.end(), name) == st_.rooms.end()) st_.rooms.push_back(name);
    st_.current = name;
    st_.query.clear();
    if (!o_.common.json) {
      std::string members;
      for (const auto& m : j.header.value("members", std::vector<std::string>{})) members += " " + neutralize(m);
      const std::string topic = neutralize(j.header.value("topic", std::string()));
      ui_.note("joined " + name + (topic.empty() ? "" : " (topic: " + topic + ")") +
               (members.empty() ? "" : "; here:" + members));
    } else {
      ui_.render(j);
    }
    show_status();
  }

  /// Sends a request and waits for its reply, showing what arrives meanwhile.
  proto::frame request(json h, std::string_view body = {}) {
    proto::frame f = exchange(std::move(h), body);
    if (f.type() == proto::type::error) throw client::error_from_frame(f);
    return f;
  }

  /// Sends without waiting; the reply (chat.ok or an error) is handled by
  /// pump() as `kind` says.
  void send(json h, std::string_view body = {}, std::string kind = {}) {
    const auto id = conn_->next_id();
    h["id"] = id;
    conn_->send(h, body);
    last_send_ = std::chrono::steady_clock::now();
    if (!kind.empty()) pending_[id] = std::move(kind);
  }

  void pump() {
    while (auto f = conn_->try_receive()) answer(*f);
    if (std::chrono::steady_clock::now() - last_send_ > keepalive) {
      conn_->send({{"type", proto::type::ping}});
      last_send_ = std::chrono::steady_clock::now();
    }
  }

  /// One line typed by the user.
  void line(const std::string& text) {
    st_.interrupt_armed = false;
    if (text.empty()) return;
    if (text[0] != '/') return say_here(text);
    const auto sp = text.find(' ');
    const std::string cmd = text.substr(0, sp);
    const std::string arg = sp == std::string::npos ? "" : text.substr(sp + 1);
    using handler = void (chat_session::*)(const std::string&);
    static const std::pair<std::string_view, handler> commands[] = {
        {"/join", &chat_session::cmd_join},   {"/j", &chat_session::cmd_join},
        {"/part", &chat_session::cmd_part},   {"/msg", &chat_session::cmd_msg},
        {"/query", &chat_session::cmd_query}, {"/q", &chat_session::cmd_query},
        {"/me", &chat_session::cmd_me},       {"/who", &chat_session::cmd_names},
        {"/names", &chat_session::cmd_names}, {"/rooms", &chat_session::cmd_list},
        {"/list", &chat_session::cmd_list},   {"/whois", &chat_session::cmd_whois},
        {"/away", &chat_session::cmd_away},   {"/topic", &chat_session::cmd_topic},
        {"/nick", &chat_session::cmd_nick},   {"/quit", &chat_session::cmd_quit},
        {"/help", &chat_session::cmd_help},
    };
    for (const auto& [name, fn] : commands) {
      if (cmd == name) return (this->*fn)(arg);
    }
    ui_.note("unknown command " + cmd + "; " + help_text());
  }

  /// Waits (at most `limit`) until the server has sent back every message
  /// of ours it accepted, so that a piped session shows all its own lines.
  void wait_for_echoes(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (st_.awaiting_echo > 0 && std::chrono::steady_clock::now() < until) {
      pollfd p{fd(), POLLIN, 0};
      ::poll(&p, 1, 50);
      pump();
    }
  }

  int fd() const { return conn_->native_handle(); }
  void close() {
    if (conn_) conn_->close();
    conn_.reset();
  }

 private:
  // chat.hello; a default nickname that is taken (another session of the
  // same account has it) falls back to the server's suggestion.
  proto::frame hello() {
    for (int attempt = 0;; ++attempt) {
      proto::frame w = exchange({{"type", "chat.hello"}, {"nick", st_.nick}});
      if (w.type() != proto::type::error) return w;
      const std::string suggestion = w.header.value("suggestion", std::string());
      if (st_.nick_given || suggestion.empty() || attempt >= 3 ||
          w.header.value("code", std::string()) != proto::to_wire(proto::errc::conflict)) {
        throw client::error_from_frame(w);
      }
      ui_.note("nickname " + neutralize(st_.nick) + " is taken; you are " + neutralize(suggestion));
      st_.nick = suggestion;
    }
  }

  /// Sends a request and returns its reply (an error frame too), showing
  /// what arrives meanwhile.
  proto::frame exchange(json h, std::string_view body = {}) {
    const auto id = conn_->next_id();
    h["id"] = id;
    conn_->send(h, body);
    last_send_ = std::chrono::steady_clock::now();
    for (;;) {
      proto::frame f = conn_->receive();
      if (f.id() == id) return f;
      answer(f);
    }
  }

  // Something the server sent that is not the reply being waited for.
  void answer(const proto::frame& f) {
    std::string kind;
    if (auto it = f.id() ? pending_.find(*f.id()) : pending_.end(); it != pending_.end()) {
      kind = std::move(it->second);
      pending_.erase(it);
    }
    if (f.type() == proto::type::error) {
      if (kind == "say") ++st_.refused;
      return ui_.note("error: " + f.header.value("message", std::string("error")));
    }
    if (f.type() != "chat.ok") {
      const std::string from = f.header.value("from", std::string());
      if (f.type() == "chat.message" && (from == st_.nick || from == st_.previous_nick) &&
          !f.header.value("history", false) && st_.awaiting_echo > 0) {
        --st_.awaiting_echo;
      }
      return ui_.render(f);
    }
    show_reply(kind, f.header);
  }

  void show_reply(const std::string& kind, const json& h) {
    if (kind == "say") ++st_.awaiting_echo;
    else if (kind == "names") ui_.note(h.value("room", std::string()) + ": " + who_list(h));
    else if (kind == "whois") ui_.note(whois_text(h));
    else if (kind == "topic") {
      ui_.note("topic of " + h.value("room", std::string()) + ": " + neutralize(h.value("topic", std::string())));
    } else if (kind == "list") {
      for (const auto& r : h.value("rooms", json::array())) {
        ui_.note(fmt::format("{} ({} here) {}", r.value("room", ""), r.value("members", 0),
                             neutralize(r.value("topic", ""))));
      }
    } else if (kind == "away") {
      ui_.note(h.value("away", false) ? "you are marked as away" : "you are back");
    } else if (kind == "nick") {
      st_.previous_nick = st_.nick;
      st_.nick = h.value("nick", st_.nick);
      ui_.set_me(st_.nick);
    }
  }

  void show_status() { ui_.status(st_.query.empty() ? st_.current : "-> " + st_.query); }

  void say_here(const std::string& text) {
    if (!st_.query.empty()) return say({{"type", "chat.msg"}, {"to", st_.query}}, text);
    if (st_.current.empty()) return ui_.note("join a room first (/join ROOM)");
    say({{"type", "chat.say"}, {"room", st_.current}}, text);
  }

  // A message: on a terminal sent at once; piped, each waits for its
  // answer, and one the rate limit refuses is sent again when the server
  // says it may be, so that piped input is paced, never dropped.
  void say(json h, const std::string& text) {
    if (!st_.paced) return send(std::move(h), text, "say");
    for (;;) {
      proto::frame r = exchange(h, text);
      if (r.type() != proto::type::error) return show_reply("say", r.header);
      if (r.header.value("code", std::string()) != proto::to_wire(proto::errc::rate_limited)) {
        ++st_.refused;
        return ui_.note("error: " + r.header.value("message", std::string("error")));
      }
      const double retry = std::clamp(r.header.value("retry_after", 0.2), 0.01, 10.0);
      wait(std::chrono::milliseconds(static_cast<int>(retry * 1000) + 1));
    }
  }

  // Sleeps, still reading what the server sends.
  void wait(std::chrono::milliseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    for (auto now = std::chrono::steady_clock::now(); now < until; now = std::chrono::steady_clock::now()) {
      pollfd p{fd(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count()) + 1);
      pump();
    }
  }

  void cmd_join(const std::string& arg) {
    if (arg.empty()) return ui_.note("usage: /join ROOM");
    proto::frame f = exchange({{"type", "chat.join"}, {"room", arg}}, {});
    if (f.type() == proto::type::error) return ui_.note("error: " + f.header.value("message", std::string()));
    const std::string name = f.header.value("room", arg);
    if (std::find(st_.rooms.begin(), st_.rooms.end(), name) == st_.rooms.end()) st_.rooms.push_back(name);
    st_.current = name;
    st_.query.clear();
    ui_.note("joined " + name);
    show_status();
  }

  void cmd_part(const std::string& arg) {
    const std::string room = arg.empty() ? st_.current : arg;
    send({{"type", "chat.part"}, {"room", room}});
    st_.rooms.erase(std::remove(st_.rooms.begin(), st_.rooms.end(), room), st_.rooms.end());
    if (st_.current == room) st_.current = st_.rooms.empty() ? "" : st_.rooms.back();
    show_status();
  }

  void cmd_msg(const std::string& arg) {
    const auto sp = arg.find(' ');
    if (sp == std::string::npos) return ui_.note("usage: /msg NICK text, or /msg #ROOM text");
    const std::string to = arg.substr(0, sp), text = arg.substr(sp + 1);
    if (to[0] == '#') return say({{"type", "chat.say"}, {"room", to}}, text);
    say({{"type", "chat.msg"}, {"to", to}}, text);
  }

  void cmd_query(const std::string& arg) {
    const auto sp = arg.find(' ');
    st_.query = arg.substr(0, sp);
    show_status();
    if (st_.query.empty()) return ui_.note("lines go to " + (st_.current.empty() ? "no room" : st_.current));
    ui_.note("lines go to " + neutralize(st_.query) + " (/query alone goes back to " + st_.current + ")");
    if (sp != std::string::npos) say({{"type", "chat.msg"}, {"to", st_.query}}, arg.substr(sp + 1));
  }

  void cmd_me(const std::string& arg) {
    if (arg.empty()) return ui_.note("usage: /me action");
    if (!st_.query.empty()) return say({{"type", "chat.msg"}, {"to", st_.query}, {"action", true}}, arg);
    say({{"type", "chat.say"}, {"room", st_.current}, {"action", true}}, arg);
  }

  void cmd_names(const std::string& arg) { send({{"type", "chat.who"}, {"room", arg.empty() ? st_.current : arg}}, {}, "names"); }
  void cmd_list(const std::string&) { send({{"type", "chat.rooms"}}, {}, "list"); }

  void cmd_whois(const std::string& arg) {
    if (arg.empty()) return ui_.note("usage: /whois NICK");
    send({{"type", "chat.whois"}, {"nick", arg}}, {}, "whois");
  }

  void cmd_away(const std::string& arg) { send({{"type", "chat.away"}, {"message", arg}}, {}, "away"); }

  void cmd_topic(const std::string& arg) {
    json h = {{"type", "chat.topic"}, {"room", st_.current}};
    if (!arg.empty()) h["topic"] = arg;
    send(h, {}, arg.empty() ? "topic" : "");
  }

  void cmd_nick(const std::string& arg) {
    if (arg.empty()) return ui_.note("usage: /nick NAME");
    send({{"type", "chat.nick"}, {"nick", arg}}, {}, "nick");
  }

  void cmd_quit(const std::string& arg) {
    st_.quitting = true;
    send({{"type", "chat.quit"}, {"reason", arg.empty() ? "quit" : arg}});
  }

  void cmd_help(const std::string&) { ui_.note(help_text()); }

  const chat_options& o_;
  chat_ui& ui_;
  chat_state& st_;
  std::optional<client::connection> conn_;
  std::map<std::uint64_t, std::string> pending_;  ///< requests sent without waiting: what their reply is
  std::chrono::steady_clock::time_point last_send_ = std::chrono::steady_clock::now();
};

// Hands each whole line of the piped input to the session. A line leaves
// the buffer only once handled: one cut short by a lost connection is sent
// again after the reconnect.
void handle_piped(chat_session& s, chat_state& st) {
  std::size_t nl;
  while (!st.quitting && (nl = st.piped.find('\n')) != std::string::npos) {
    std::string line = st.piped.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    s.line(line);
    st.piped.erase(0, nl + 1);
  }
  if (st.input_done && !st.quitting && !st.piped.empty()) {  // a last line without its newline
    s.line(st.piped);
    st.piped.clear();
  }
}

// Reads what stdin has (not a terminal); false at the end of the input.
bool read_piped(chat_session& s, chat_state& st) {
  char buf[4096];
  const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
  if (n < 0 && errno == EINTR) return true;
  if (n <= 0) st.input_done = true;
  else st.piped.append(buf, static_cast<std::size_t>(n));
  handle_piped(s, st);
  return !st.input_done;
}

// The end of piped input: our own lines back, then goodbye.
void finish_piped(chat_session& s, chat_state& st) {
  handle_piped(s, st);
  s.wait_for_echoes(std::chrono::seconds(5));
  if (!st.quitting) s.line("/quit");
}

// A key press on the terminal.
void read_keys(chat_session& s, chat_state& st, chat_ui& ui, line_editor& editor) {
  switch (auto r = editor.feed(); r.kind) {
    case line_editor::result::line: s.line(r.text); break;
    case line_editor::result::eof: s.line("/quit"); break;
    case line_editor::result::interrupt:
      // Ctrl-C with a typed line keeps the line; a second one (or one on
      // an empty line) quits.
      if (!r.text.empty() && !st.interrupt_armed) {
        st.interrupt_armed = true;
        ui.note("Ctrl-C again quits; your line is kept (Enter sends it)");
      } else {
        s.line("/quit interrupted");
      }
      break;
    case line_editor::result::none: break;
  }
}

// One connection's life: events and input until quit or the connection is
// lost (client_error).
void converse(chat_session& s, chat_state& st, chat_ui& ui, line_editor* editor, bool& stdin_open) {
  if (!editor && st.input_done) finish_piped(s, st);  // reconnected after the input ended
  while (!st.quitting) {
    pollfd fds[2] = {{s.fd(), POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
    ::poll(fds, stdin_open ? 2 : 1, 1000);
    s.pump();
    if (!stdin_open || !(fds[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    if (editor) {
      read_keys(s, st, ui, *editor);
    } else if (!read_piped(s, st)) {
      stdin_open = false;
      finish_piped(s, st);
    }
  }
  // Wait (briefly) for the server to confirm the quit and close.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  try {
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{s.fd(), POLLIN, 0};
      ::poll(&p, 1, 100);
      s.pump();
    }
  } catch (const client::client_error&) {
    // the server closed the connection: done
  }
}

}  // namespace

int run_chat(const chat_options& o) {
  const bool interactive = ::isatty(STDIN_FILENO) && ::isatty(STDOUT_FILENO) && !o.common.json;
  ::signal(SIGPIPE, SIG_IGN);
  chat_ui ui(o, interactive);
  chat_state st;
  st.nick = o.nick;
  st.nick_given = !o.nick.empty();
  st.paced = !interactive;
  std::optional<line_editor> editor;
  bool stdin_open = true;
  std::chrono::milliseconds backoff{500};
  bool ever_connected = false;

  while (!st.quitting) {
    chat_session s(o, ui, st);
    try {
      s.open();
      ever_connected = true;
      backoff = std::chrono::milliseconds(500);
      if (interactive && !editor) {
        editor.emplace("> ");
        ui.attach(&*editor);
        ui.status(st.current);
        ui.note("connected as " + st.nick + "; " + help_text());
      }
      converse(s, st, ui, editor ? &*editor : nullptr, stdin_open);
      s.close();
    } catch (const client::client_error& e) {
      s.close();
      if (st.quitting) break;
      const bool fatal = e.kind() == client::failure::auth || e.kind() == client::failure::permission ||
                         e.kind() == client::failure::local ||
                         (e.code() && (*e.code() == proto::errc::conflict || *e.code() == proto::errc::bad_request));
      if (fatal || !ever_connected) {
        if (editor) editor.reset();
        std::fprintf(stderr, "cskit chat: %s\n", e.what());
        return exit_code_for(e.kind());
      }
      ui.note(fmt::format("connection lost ({}); reconnecting in {:.1f} s", e.what(), backoff.count() / 1000.0));
      std::this_thread::sleep_for(backoff);
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(30));
    }
  }
  if (st.refused > 0) {
    if (editor) editor.reset();
    std::fprintf(stderr, "cskit chat: the server refused %d line%s\n", st.refused, st.refused == 1 ? "" : "s");
    return exit_code::remote;
  }
  return exit_code::ok;
}

// ------------------------------------------------------------ the command line

namespace {

command_runner build_chat(CLI::App& cmd, const command_args&) {
  auto o = std::make_shared<chat_options>();
  add_client_options(cmd, o->common);
  cmd.add_option("--nick,-N", o->nick,
                 "Nickname (default: your account's name, or the server's suggestion if another session has it)");
  cmd.add_option("--room", o->room, "Room to join first (default: the server's default room)");
  cmd.footer(R"(On a terminal: type to talk, /help for commands; messages appear above your line, the prompt
  shows where a line goes, Ctrl-C keeps a typed line (a second one quits).
  Otherwise (a pipe): each input line is sent, paced to the server's rate limit, each event printed as
  one line (--json: JSON lines); exit status 7 if the server refused a line.
  Commands: /join (/j) ROOM, /part [ROOM], /msg NICK|#ROOM text, /query (/q) [NICK], /me action,
  /names (/who) [ROOM], /list (/rooms), /whois NICK, /away [message], /topic [text], /nick NAME,
  /quit [reason], /help. IRC clients can join the same rooms: see `cskit serve --irc-listen`.)");
  return [o] { return run_chat(*o); };
}

const command_registration chat_registration{{
    .name = "chat",
    .summary = "Chat in rooms, with the same people as IRC clients on the server",
    .usage = "[--nick NAME] [--room ROOM] HOST[:PORT]",
    .order = 70,
    .build = build_chat,
}};

}  // namespace

}  // namespace cskit::app
