#include "server/irc_session.hpp"

#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <ctime>

#include "net/admission.hpp"
#include "proto/auth.hpp"
#include "proto/utf8.hpp"
#include "util/clock.hpp"
#include "version.hpp"

namespace cskit::server {

namespace irc = proto::irc;
using service::irc_cap;

namespace {

std::string start_date() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::vector<std::string> isupport_tokens(const service::chat_options& o, const service::irc_settings& s) {
  // What an IRC client may send in one line of its own, not cskit's
  // max_message: the 512-byte line is the tighter bound.
  const std::string text = std::to_string(std::min(o.max_message, service::max_irc_text));
  return {"AWAYLEN=" + text,
          "CASEMAPPING=ascii",
          "CHANLIMIT=#:" + std::to_string(o.max_rooms),
          "CHANMODES=b,,,n",
          "CHANNELLEN=65",
          "CHANTYPES=#",
          "CHATHISTORY=" + std::to_string(s.history_max),
          "MSGREFTYPES=msgid,timestamp",
          "NETWORK=" + s.network,
          "NICKLEN=32",
          "PREFIX=",
          "TARGMAX=PRIVMSG:4,NOTICE:4,JOIN:,PART:,NAMES:,WHOIS:1",
          "TOPICLEN=" + text,
          "UTF8ONLY"};
}

// SASL PLAIN's base64, decoded; nullopt if malformed.
std::optional<std::string> base64_decode(const std::string& in) {
  if (in.empty() || in.size() % 4 != 0 || in.size() > 1200) return std::nullopt;
  std::string out(in.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return std::nullopt;
  std::size_t len = static_cast<std::size_t>(n);
  for (std::size_t i = in.size(); i > 0 && in[i - 1] == '=' && len > 0; --i) --len;  // EVP counts padding
  out.resize(len);
  return out;
}

}  // namespace

irc_front::irc_front(const server_context& c, service::chat_hub& h, service::irc_settings s)
    : ctx(c),
      hub(h),
      settings(std::move(s)),
      codec(settings),
      created(start_date()),
      isupport(isupport_tokens(h.options(), settings)) {}

std::string irc_front::closing(std::string_view reason) {
  std::string line;
  irc::append(line, {}, {}, "ERROR", {"Closing link: " + irc::one_line(reason)}, true);
  return line;
}

irc_session::~irc_session() = default;

std::size_t irc_session::line_limit() const { return irc::max_client_tags + irc::max_line; }

void irc_session::on_open(net::connection&) {}  // IRC clients speak first

void irc_session::on_frame(net::connection&, proto::frame&&) {}  // line mode: never called

void irc_session::numeric(net::connection& c, std::string_view what, std::initializer_list<std::string_view> params) {
  std::vector<std::string> p{current_nick()};
  for (auto x : params) p.emplace_back(x);
  std::string line;
  irc::append(line, {}, front_.settings.server_name, what, p, true);
  send(c, std::move(line));
}

void irc_session::send(net::connection& c, std::string lines) {
  // Once registered, in the hub's order with everything else it is sent.
  if (chat_) return chat_->send(std::move(lines));
  c.send_raw(lines);
}

std::string irc_session::current_nick() const {
  if (chat_) return chat_->nick();
  return nick_.empty() ? std::string("*") : nick_;
}

void irc_session::on_reload(net::connection& c) {
  // A login still being answered checks the new table when it settles.
  if (!account_) return;
  // Only what IRC uses counts: the account, its token, chat.
  const auto now = front_.ctx.find_user(account_->name);
  std::string why;
  if (now == nullptr || now->token != account_->token) why = account_change(*account_, now.get());
  else if (!now->permissions.has(proto::permission::chat)) why = "the 'chat' permission of '" + now->name + "' was withdrawn";
  if (why.empty()) return;
  spdlog::warn("irc: {} account={}: closed after the configuration was reloaded: {}", c.peer(), account_->name, why);
  close(c, "the server's configuration changed: " + why);
}

void irc_session::close(net::connection& c, std::string_view reason) {
  c.send_raw(irc_front::closing(reason));
  c.close_after_flush(reason);
}

void irc_session::encode_failure(std::string& out, const proto::json& error) {
  out += irc_front::closing(error.value("message", error.value("code", std::string("error"))));
}

void irc_session::send_ping(net::connection& c) {
  std::string line;
  irc::append(line, {}, {}, "PING", {front_.settings.server_name});
  c.send_raw(line);
}

void irc_session::on_shutdown(net::connection& c, std::chrono::milliseconds grace) {
  c.send_raw(irc_front::closing("server shutting down"));
  c.close_after_flush("server shutdown", grace);
}

void irc_session::on_close(net::connection&, std::string_view reason) {
  if (chat_ && !quit_given_) chat_->set_quit_reason(std::string(reason));
  chat_.reset();
}

void irc_session::on_line_too_long(net::connection& c) {
  numeric(c, "417", {"Input line was too long"});  // ERR_INPUTTOOLONG
}

void irc_session::on_line(net::connection& c, std::string_view line) {
  // Replies wait in the hub's mailbox, which the connection's own send
  // queue bound does not see: a client that asks (LIST, NAMES, CHATHISTORY)
  // far faster than it reads is closed here instead.
  if (chat_ && chat_->flooded(max_pending_replies)) {
    spdlog::warn("irc: {} asks faster than it reads (over {} bytes of replies waiting); closing", c.peer(),
                 max_pending_replies);
    c.send_raw(irc_front::closing("too many requests: your replies are not being read"));
    return c.close_after_flush("reply flood");
  }
  irc::message m;
  switch (irc::parse(line, m)) {
    case irc::parse_result::empty: return;  // a blank line is ignored
    case irc::parse_result::too_long: return on_line_too_long(c);
    case irc::parse_result::bad: return numeric(c, "400", {"*", "Malformed message"});  // ERR_UNKNOWNERROR
    case irc::parse_result::ok: break;
  }
  if (!proto::is_valid_utf8(line)) {
    std::string fail;
    irc::append(fail, {}, front_.settings.server_name, "FAIL",
                {service::irc_word(m.command), "INVALID_UTF8",
                 "Message rejected: it is not valid UTF-8 (this server is UTF8ONLY)"},
                true);
    send(c, std::move(fail));
    return;
  }
  handle(c, m);
}

void irc_session::handle(net::connection& c, const irc::message& m) {
  const std::string& cmd = m.command;
  if (cmd == "CAP") return on_cap(c, m);
  if (cmd == "PING") {
    std::string line;
    irc::append(line, {}, front_.settings.server_name, "PONG",
                {front_.settings.server_name, m.params.empty() ? std::string() : m.params[0]}, true);
    send(c, std::move(line));
    return;
  }
  if (cmd == "PONG") return;
  if (cmd == "QUIT") return on_quit(c, m);
  if (chat_) {
    if (cmd == "USER" || cmd == "PASS") return numeric(c, "462", {"You may not reregister"});
    if (cmd == "AUTHENTICATE") return numeric(c, "907", {"You have already authenticated using SASL"});
    if (!chat_->handle(m)) numeric(c, "421", {service::irc_word(cmd), "Unknown command"});
    return;
  }
  if (cmd == "AUTHENTICATE") return on_authenticate(c, m);
  if (cmd == "PASS") return on_pass(c, m);
  if (cmd == "NICK") {
    if (m.params.empty() || m.params[0].empty()) return numeric(c, "431", {"No nickname given"});
    if (!service::valid_nick(m.params[0])) {
      return numeric(c, "432", {service::irc_word(m.params[0]), "Erroneous nickname: 1-32 letters, digits, '-', '_' or '.'"});
    }
    nick_ = m.params[0];
    return try_register(c);
  }
  if (cmd == "USER") {
    if (m.params.size() < 4) return numeric(c, "461", {"USER", "Not enough parameters"});
    got_user_ = true;
    return try_register(c);
  }
  numeric(c, "451", {"You have not registered"});
}

void irc_session::on_quit(net::connection& c, const irc::message& m) {
  const std::string reason = m.params.empty() || m.params[0].empty() ? std::string("Client quit") : m.params[0];
  if (chat_) chat_->set_quit_reason(service::irc_text(reason));
  quit_given_ = true;  // the client's reason, not the connection's
  if (!chat_) return close(c, "quit");
  // Behind every reply queued to it so far (the drain runs first: same loop).
  chat_->send(irc_front::closing("quit"));
  boost::asio::post(c.executor(), [w = c.weak_from_this()] {
    if (auto conn = w.lock()) conn->close_after_flush("quit");
  });
}

// ------------------------------------------------------------------ CAP

void irc_session::on_cap(net::connection& c, const irc::message& m) {
  const std::string sub = m.params.empty() ? std::string() : m.params[0];
  auto reply = [&](std::string_view what, std::string_view text) {
    std::string line;
    irc::append(line, {}, front_.settings.server_name, "CAP", {current_nick(), what, text}, true);
    send(c, std::move(line));
  };
  if (sub == "LS") {
    if (!chat_) cap_negotiating_ = true;
    if (m.params.size() > 1 && std::atoi(m.params[1].c_str()) >= 302) cap_302_ = true;
    std::string list;
    for (const auto& [name, bit] : service::irc_caps()) {
      list += (list.empty() ? "" : " ") + std::string(name);
      if (bit == service::cap_sasl && cap_302_) list += "=PLAIN";
    }
    return reply("LS", list);
  }
  if (sub == "LIST") {
    std::string list;
    for (const auto& [name, bit] : service::irc_caps()) {
      if (caps_ & bit) list += (list.empty() ? "" : " ") + std::string(name);
    }
    return reply("LIST", list);
  }
  if (sub == "REQ") {
    if (!chat_) cap_negotiating_ = true;
    const std::string wanted = m.params.size() > 1 ? m.params[1] : std::string();
    unsigned on = 0, off = 0;
    bool known = true;
    std::size_t at = 0;
    while (at < wanted.size()) {
      auto sp = wanted.find(' ', at);
      std::string name = wanted.substr(at, sp == std::string::npos ? std::string::npos : sp - at);
      at = sp == std::string::npos ? wanted.size() : sp + 1;
      if (name.empty()) continue;
      const bool remove = name[0] == '-';
      if (remove) name.erase(0, 1);
      const auto& caps = service::irc_caps();
      auto it = std::find_if(caps.begin(), caps.end(), [&](const auto& x) { return x.name == name; });
      if (it == caps.end()) known = false;
      else (remove ? off : on) |= it->bit;
    }
    if (!known || wanted.empty()) return reply("NAK", wanted);
    caps_ = (caps_ | on) & ~off;
    if (chat_) chat_->set_caps(caps_);
    return reply("ACK", wanted);
  }
  if (sub == "END") {
    if (chat_) return;
    cap_negotiating_ = false;
    return try_register(c);
  }
  numeric(c, "410", {service::irc_word(sub), "Invalid CAP command"});
}

// ------------------------------------------------------------------ login

void irc_session::on_authenticate(net::connection& c, const irc::message& m) {
  if (!(caps_ & service::cap_sasl)) {
    return numeric(c, "904", {"SASL authentication failed: request the sasl capability first"});
  }
  if (account_ || login_pending_) return numeric(c, "907", {"You have already authenticated using SASL"});
  const std::string arg = m.params.empty() ? std::string() : m.params[0];
  if (!sasl_started_) {
    if (arg == "*") return numeric(c, "906", {"SASL authentication aborted"});
    if (arg != "PLAIN") {
      numeric(c, "908", {"PLAIN", "are available SASL mechanisms"});
      return numeric(c, "904", {"SASL authentication failed: only PLAIN is offered"});
    }
    sasl_started_ = true;
    sasl_buffer_.clear();
    c.send_raw("AUTHENTICATE +\r\n");
    return;
  }
  if (arg == "*") {
    sasl_started_ = false;
    return numeric(c, "906", {"SASL authentication aborted"});
  }
  if (arg.size() > 400) {
    sasl_started_ = false;
    return numeric(c, "905", {"SASL message too long: send it in chunks of 400 bytes"});
  }
  // Chunks of 400 bytes; a shorter one (or "+") ends the message.
  if (arg != "+") sasl_buffer_ += arg;
  if (sasl_buffer_.size() > 1200) {
    sasl_started_ = false;
    return numeric(c, "905", {"SASL message too long"});
  }
  if (arg.size() == 400) return;
  sasl_started_ = false;
  const auto plain = base64_decode(sasl_buffer_);
  sasl_buffer_.clear();
  // authzid NUL authcid NUL password
  const auto first = plain ? plain->find('\0') : std::string::npos;
  const auto second = first == std::string::npos ? std::string::npos : plain->find('\0', first + 1);
  if (second == std::string::npos) return numeric(c, "904", {"SASL authentication failed: malformed PLAIN message"});
  const std::string authzid = plain->substr(0, first);
  const std::string user = plain->substr(first + 1, second - first - 1);
  const std::string token = plain->substr(second + 1);
  if (!authzid.empty() && authzid != user) {
    return numeric(c, "904", {"SASL authentication failed: acting for another account is not allowed"});
  }
  log_in(c, user, token, true);
}

void irc_session::on_pass(net::connection& c, const irc::message& m) {
  if (m.params.empty()) return numeric(c, "461", {"PASS", "Not enough parameters"});
  if (account_ || login_pending_) return numeric(c, "462", {"You may not reregister"});
  pass_ = m.params[0];  // "user:token", or the token with USER naming the account; checked at registration
}

void irc_session::log_in(net::connection& c, const std::string& user, const std::string& token, bool sasl) {
  // The cskit login's throttle (auth_throttle): attempts of one source or
  // one user name are answered one after another, failures slow them.
  const auto now = auth_throttle::clock::now();
  const std::string source = net::source_key::of(c.peer_address()).describe();
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(c.login_deadline() - now);
  const auto when =
      front_.ctx.throttle.admit(source, user, std::max(std::chrono::milliseconds(0), left - std::chrono::seconds(1)), now);
  if (!when) {
    spdlog::warn("irc: login of '{}' from {} refused untried: too many recent failures", user, c.peer());
    if (sasl) return numeric(c, "904", {"SASL authentication failed: too many failed logins, try again later"});
    return close(c, "too many failed logins from your address or for this user: try again later");
  }
  const auto u = front_.ctx.find_user(user);
  const bool ok = token_matches(token, u.get(), user);
  if (ok) front_.ctx.throttle.on_success(source, user, *when);
  else front_.ctx.throttle.on_failure(source, user, *when);
  const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(*when - now);
  login_pending_ = true;
  auto settle = [this, &c, u, ok, sasl, user] {
    login_pending_ = false;
    if (ok) {
      // A reload while the answer was held may have changed the account:
      // it logs in as the account is now, if its token is still the one given.
      auto now = front_.ctx.find_user(user);
      if (now == nullptr || now->token != u->token) {
        const std::string why = "the server's configuration changed during the login: " + account_change(*u, now.get());
        if (sasl) numeric(c, "904", {"SASL authentication failed: " + why});
        return close(c, why);
      }
      return logged_in(c, std::move(now), sasl);
    }
    spdlog::warn("irc: authentication failed from {} for user '{}'", c.peer(), user);
    if (!sasl) return close(c, "authentication failed: unknown user or wrong token");
    numeric(c, "904", {"SASL authentication failed: unknown user or wrong token"});
    if (++sasl_failures_ >= 3) close(c, "too many failed SASL attempts");
  };
  if (wait.count() <= 0) return settle();
  c.run_after(wait, settle);
}

void irc_session::logged_in(net::connection& c, std::shared_ptr<const user_account> account, bool sasl) {
  const user_account& u = *account;
  if (!u.permissions.has(proto::permission::chat)) {
    spdlog::warn("irc: {} logged in as {}, which has no chat permission", c.peer(), u.name);
    if (sasl) numeric(c, "904", {"SASL authentication failed: the account '" + u.name + "' may not chat"});
    return close(c, "the account '" + u.name + "' has no chat permission");
  }
  account_ = std::move(account);
  if (sasl) {
    numeric(c, "900", {(nick_.empty() ? "*" : nick_) + "!" + u.name + "@" + front_.settings.host, u.name,
                       "You are now logged in as " + u.name});
    numeric(c, "903", {"SASL authentication successful"});
  }
  try_register(c);
}

// ------------------------------------------------------------------ registration

void irc_session::try_register(net::connection& c) {
  if (chat_ || nick_.empty() || !got_user_ || cap_negotiating_ || login_pending_) return;
  if (!account_) {
    if (!pass_) {
      return close(c, "log in first: SASL PLAIN, or PASS <user>:<token>, with a cskit account and its token");
    }
    // PASS user:token (the ZNC convention); a bare token names no account.
    const auto colon = pass_->find(':');
    if (colon == std::string::npos) return close(c, "PASS takes <user>:<token>");
    const std::string user = pass_->substr(0, colon), token = pass_->substr(colon + 1);
    pass_.reset();
    return log_in(c, user, token, false);
  }
  auto chat = std::make_unique<service::irc_chat>(front_.hub, front_.codec, front_.settings, c, account_->name, caps_);
  if (auto r = chat->start(nick_); !r.ok()) {
    // The client picks another nickname (NICK) and registration goes on.
    return numeric(c, r.code == proto::errc::conflict ? "433" : "432", {nick_, irc::one_line(r.message)});
  }
  chat_ = std::move(chat);
  welcome(c);
}

void irc_session::welcome(net::connection& c) {
  c.set_authenticated();
  const auto& o = front_.hub.options();
  c.set_keepalive(o.ping_interval, o.ping_timeout);
  const auto& s = front_.settings;
  spdlog::info("irc: {} registered as {} (account {})", c.peer(), nick_, account_->name);
  chat_->reply("001", {"Welcome to the " + s.network + " IRC network, " + nick_});
  chat_->reply("002", {"Your host is " + s.server_name + ", running cskit " + cskit_version});
  chat_->reply("003", {"This server was created " + front_.created});
  chat_->reply("004", {s.server_name, std::string("cskit-") + cskit_version, "i", "bn"});
  // RPL_ISUPPORT: at most 13 tokens a line.
  const auto& tokens = front_.isupport;
  for (std::size_t i = 0; i < tokens.size(); i += 13) {
    std::vector<std::string> p{nick_};
    for (std::size_t k = i; k < std::min(tokens.size(), i + 13); ++k) p.push_back(tokens[k]);
    p.push_back("are supported by this server");
    chat_->reply("005", p);
  }
  chat_->send_lusers();
  chat_->send_motd();
}

}  // namespace cskit::server
