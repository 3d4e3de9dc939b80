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
#include <set>
#include <thread>

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
  std::string nick;
  std::string current;           ///< room the next plain line goes to
  std::vector<std::string> rooms;  ///< joined, in order (to rejoin)
  bool quitting = false;
};

std::string help_text() {
  return "commands: /join ROOM, /part [ROOM], /msg NICK text, /me action, /who [ROOM], /rooms, "
         "/topic [text], /nick NAME, /quit [reason], /help; anything else is said in the current room";
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

class chat_session {
 public:
  chat_session(const chat_options& o, chat_ui& ui, chat_state& st) : o_(o), ui_(ui), st_(st) {}

  /// Connects, introduces itself and (re)joins. Throws client_error.
  void open() {
    conn_.emplace(connect_client(o_.common, o_.common.host));
    proto::frame w = request({{"type", "chat.hello"}, {"nick", st_.nick}});
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
    if (!o_.common.json) {
      std::string members;
      for (const auto& m : j.header.value("members", std::vector<std::string>{})) members += " " + neutralize(m);
      ui_.note("joined " + name + (j.header.value("topic", std::string()).empty() ? "" : " (topic: " + neutralize(j.header.value("topic", std::string())) + ")") +
               (members.empty() ? "" : "; here:" + members));
    } else {
      ui_.render(j);
    }
  }

  /// Sends a request and waits for its reply, showing what arrives meanwhile.
  proto::frame request(json h, std::string_view body = {}) {
    const auto id = conn_->next_id();
    h["id"] = id;
    conn_->send(h, body);
    last_send_ = std::chrono::steady_clock::now();
    for (;;) {
      proto::frame f = conn_->receive();
      if (f.id() == id) {
        if (f.type() == proto::type::error) throw client::error_from_frame(f);
        return f;
      }
      ui_.render(f);
    }
  }

  /// Sends without waiting; the reply (chat.ok or an error) is handled by pump().
  void send(json h, std::string_view body = {}) {
    h["id"] = conn_->next_id();
    conn_->send(h, body);
    last_send_ = std::chrono::steady_clock::now();
  }

  void pump() {
    while (auto f = conn_->try_receive()) {
      if (f->type() == proto::type::error) {
        const std::string msg = f->header.value("message", std::string("error"));
        ui_.note("error: " + msg);
        continue;
      }
      if (f->type() == "chat.ok") {
        if (f->header.contains("members")) {
          ui_.note(f->header.value("room", std::string()) + ": " + who_list(f->header));
        } else if (f->header.contains("rooms")) {
          for (const auto& r : f->header["rooms"]) {
            ui_.note(fmt::format("{} ({} here) {}", r.value("room", ""), r.value("members", 0),
                                 neutralize(r.value("topic", ""))));
          }
        } else if (f->header.contains("topic")) {
          ui_.note("topic of " + f->header.value("room", std::string()) + ": " +
                   neutralize(f->header.value("topic", std::string())));
        } else if (f->header.contains("nick")) {
          st_.nick = f->header.value("nick", st_.nick);
          ui_.set_me(st_.nick);
        }
        continue;
      }
      ui_.render(*f);
    }
    if (std::chrono::steady_clock::now() - last_send_ > keepalive) {
      conn_->send({{"type", proto::type::ping}});
      last_send_ = std::chrono::steady_clock::now();
    }
  }

  /// One line typed by the user.
  void line(const std::string& text) {
    if (text.empty()) return;
    if (text[0] != '/') {
      if (st_.current.empty()) return ui_.note("join a room first (/join ROOM)");
      return send({{"type", "chat.say"}, {"room", st_.current}}, text);
    }
    const auto sp = text.find(' ');
    const std::string cmd = text.substr(0, sp);
    std::string arg = sp == std::string::npos ? "" : text.substr(sp + 1);
    if (cmd == "/join" && !arg.empty()) {
      const auto id = conn_->next_id();
      conn_->send({{"type", "chat.join"}, {"id", id}, {"room", arg}});
      // The reply is handled synchronously to learn the room's canonical name.
      for (;;) {
        proto::frame f = conn_->receive();
        if (f.id() == id) {
          if (f.type() == proto::type::error) {
            ui_.note("error: " + f.header.value("message", std::string()));
          } else {
            const std::string name = f.header.value("room", arg);
            if (std::find(st_.rooms.begin(), st_.rooms.end(), name) == st_.rooms.end()) st_.rooms.push_back(name);
            st_.current = name;
            ui_.note("joined " + name);
          }
          break;
        }
        ui_.render(f);
      }
    } else if (cmd == "/part") {
      const std::string room = arg.empty() ? st_.current : arg;
      send({{"type", "chat.part"}, {"room", room}});
      st_.rooms.erase(std::remove(st_.rooms.begin(), st_.rooms.end(), room), st_.rooms.end());
      if (st_.current == room) st_.current = st_.rooms.empty() ? "" : st_.rooms.back();
    } else if (cmd == "/msg") {
      const auto s2 = arg.find(' ');
      if (s2 == std::string::npos) return ui_.note("usage: /msg NICK text");
      send({{"type", "chat.msg"}, {"to", arg.substr(0, s2)}}, arg.substr(s2 + 1));
    } else if (cmd == "/me" && !arg.empty()) {
      send({{"type", "chat.say"}, {"room", st_.current}, {"action", true}}, arg);
    } else if (cmd == "/who") {
      send({{"type", "chat.who"}, {"room", arg.empty() ? st_.current : arg}});
    } else if (cmd == "/rooms") {
      send({{"type", "chat.rooms"}});
    } else if (cmd == "/topic") {
      json h = {{"type", "chat.topic"}, {"room", st_.current}};
      if (!arg.empty()) h["topic"] = arg;
      send(h);
    } else if (cmd == "/nick" && !arg.empty()) {
      send({{"type", "chat.nick"}, {"nick", arg}});
    } else if (cmd == "/quit") {
      st_.quitting = true;
      send({{"type", "chat.quit"}, {"reason", arg.empty() ? "quit" : arg}});
    } else if (cmd == "/help") {
      ui_.note(help_text());
    } else {
      ui_.note("unknown command " + cmd + "; " + help_text());
    }
  }

  int fd() const { return conn_->native_handle(); }
  void close() {
    if (conn_) conn_->close();
    conn_.reset();
  }

 private:
  const chat_options& o_;
  chat_ui& ui_;
  chat_state& st_;
  std::optional<client::connection> conn_;
  std::chrono::steady_clock::time_point last_send_ = std::chrono::steady_clock::now();
};

std::string default_nick() {
  const char* u = std::getenv("USER");
  std::string n = u && *u ? u : "guest";
  n.erase(std::remove_if(n.begin(), n.end(), [](char c) {
            return !(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.');
          }),
          n.end());
  return n.empty() ? "guest" : n.substr(0, 32);
}

}  // namespace

int run_chat(const chat_options& o) {
  const bool interactive = ::isatty(STDIN_FILENO) && ::isatty(STDOUT_FILENO) && !o.common.json;
  ::signal(SIGPIPE, SIG_IGN);
  chat_ui ui(o, interactive);
  chat_state st;
  st.nick = o.nick.empty() ? default_nick() : o.nick;
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
        ui.note("connected as " + st.nick + "; " + help_text());
      }
      std::string pending;  // scriptable mode: a partial line
      while (!st.quitting) {
        pollfd fds[2] = {{s.fd(), POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
        ::poll(fds, stdin_open ? 2 : 1, 1000);
        s.pump();
        if (!stdin_open || !(fds[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        if (editor) {
          switch (auto r = editor->feed(); r.kind) {
            case line_editor::result::line: s.line(r.text); break;
            case line_editor::result::eof: s.line("/quit"); break;
            case line_editor::result::interrupt: s.line("/quit interrupted"); break;
            case line_editor::result::none: break;
          }
          continue;
        }
        char buf[4096];
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n <= 0) {
          if (n < 0 && errno == EINTR) continue;
          stdin_open = false;  // end of input: say goodbye once what we sent is answered
          if (!pending.empty()) s.line(pending);
          s.line("/quit");
          break;
        }
        pending.append(buf, static_cast<std::size_t>(n));
        std::size_t nl;
        while ((nl = pending.find('\n')) != std::string::npos) {
          std::string line = pending.substr(0, nl);
          if (!line.empty() && line.back() == '\r') line.pop_back();
          pending.erase(0, nl + 1);
          s.line(line);
          if (st.quitting) break;
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
      s.close();
    } catch (const client::client_error& e) {
      s.close();
      if (st.quitting) break;
      const bool fatal = e.kind() == client::failure::auth || e.kind() == client::failure::permission ||
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
  return exit_code::ok;
}

}  // namespace cskit::app
