// The web page's chat: GET /api/chat upgrades the HTTPS connection to a
// WebSocket (RFC 6455) whose text messages are the cskit protocol's chat
// requests and pushes as JSON (docs/http.md, "Chat over a WebSocket"),
// served by the same hub, rules and limits as the cskit and IRC clients.

#include <boost/beast/http/verb.hpp>
#include <spdlog/spdlog.h>

#include "proto/errc.hpp"
#include "proto/messages.hpp"
#include "proto/websocket.hpp"
#include "server/http_request.hpp"
#include "server/http_session.hpp"
#include "server/web_sessions.hpp"
#include "service/chat.hpp"
#include "service/chat_client.hpp"

namespace cskit::server {

namespace ws = proto::ws;
using proto::json;

namespace {

// Answers waiting for a client that does not read them: beyond, it is closed.
constexpr std::size_t max_pending = 4u << 20;

bool has_token(std::string_view list, std::string_view token) {
  // A comma-separated header list, compared without case ("keep-alive, Upgrade").
  while (!list.empty()) {
    const auto comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (item.size() == token.size() &&
        std::equal(item.begin(), item.end(), token.begin(), [](char a, char b) { return std::tolower(a) == std::tolower(b); })) {
      return true;
    }
  }
  return false;
}

}  // namespace

void http_session::start_websocket(net::connection& c) {
  if (!front_.hub) return respond_api_error(c, 404, "chat is not enabled on this server");
  if (shutting_down_) return respond_api_error(c, 503, "the server is shutting down");
  if (!has_token(req_->upgrade, "websocket") || !has_token(req_->connection, "upgrade")) {
    return respond_api_error(c, 400, "/api/chat is a WebSocket: send Upgrade: websocket");
  }
  if (req_->ws_version != "13") {
    return respond_api_error(c, 426, "WebSocket version 13 only", "Sec-WebSocket-Version: 13\r\n");
  }
  if (!ws::valid_key(req_->ws_key)) return respond_api_error(c, 400, "a malformed Sec-WebSocket-Key");
  // A browser names the page that opens the socket: only ours may (a
  // cookie alone would let any site's page in). Clients that are not
  // browsers send no Origin, and log in with credentials instead.
  const bool ours = req_->origin == "https://" + req_->host;
  if ((req_->by_cookie && !ours) || (!req_->origin.empty() && !ours)) {
    spdlog::warn("https: {}: WebSocket from origin '{}' refused", c.peer(), req_->origin);
    return respond_api_error(c, 403, "WebSockets from another site are refused");
  }
  if (!account_->permissions.has(proto::permission::chat)) {
    return respond_api_error(c, 403, "user '" + account_->name + "' lacks the 'chat' permission");
  }
  const auto& o = front_.hub->options();
  c.send_raw("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
             ws::accept_key(req_->ws_key) + "\r\n\r\n");
  spdlog::info("https: {} user={}: chat over a WebSocket", c.peer(), account_->name);
  // A message carries at most max_message bytes of text, JSON-escaped.
  ws_ = std::make_unique<websocket>(o.max_message * 6 + 4096);
  ws_->chat = std::make_unique<service::chat_client>(*front_.hub, c, account_->name, service::websocket_chat_wire());
  if (req_->by_cookie) ws_->session_id = req_->session_id;
  responding_ = false;
  busy_ = false;
  req_.reset();
  parser_.reset();
  const std::string rest(unread());  // frames sent right behind the request
  in_.clear();
  at_ = 0;
  if (!rest.empty()) on_ws_bytes(c, rest);
  else c.report_progress(progress::idle, false);
}

void http_session::on_ws_bytes(net::connection& c, std::string_view bytes) {
  if (ws_->close_sent) return;  // only the client's close is awaited now
  const bool was_mid = ws_->decoder.mid_frame();
  bool completed = false;
  auto fail = ws_->decoder.feed(bytes, [&](ws::message&& m) {
    completed = true;
    switch (m.op) {
      case ws::opcode::text: on_ws_text(c, m.payload); break;
      case ws::opcode::binary: ws_close(c, ws::unsupported_data, "this chat speaks JSON in text messages"); break;
      case ws::opcode::ping: {
        std::string out;
        ws::encode(out, ws::opcode::pong, m.payload);
        c.send_raw(out);
        break;
      }
      case ws::opcode::pong: break;  // (any byte counts as life)
      case ws::opcode::close: on_ws_close_frame(c, m.payload); break;
      case ws::opcode::continuation: break;  // (never handed out: fragments come joined)
    }
    return !ws_->close_sent && !c.closing();
  });
  if (fail) return ws_close(c, fail->code, fail->reason);
  if (!c.closing() && c.queued_bytes() > max_pending) {
    return ws_close(c, ws::policy_violation, "too many answers are waiting: read them");
  }
  // A frame begun must be whole within the frame deadline, counted from
  // its first byte (as for a request's header).
  using pr = net::frame_handler::progress;
  const bool mid = ws_->decoder.mid_frame();
  c.report_progress(mid ? pr::header : pr::idle, mid && (!was_mid || completed));
}

void http_session::on_ws_close_frame(net::connection& c, const std::string& payload) {
  std::uint16_t code = ws::normal;
  if (payload.size() >= 2) {
    code = static_cast<std::uint16_t>(static_cast<unsigned char>(payload[0]) << 8 | static_cast<unsigned char>(payload[1]));
    if (!ws::valid_close_code(code)) return ws_close(c, ws::protocol_error, "an invalid close code");
    if (payload.size() > 2) ws_->chat->set_close_reason(payload.substr(2), true);
  }
  ws_close(c, code, "bye");  // the client's code, echoed (RFC 6455 5.5.1)
}

bool http_session::ws_session_ended(net::connection& c) {
  if (ws_->session_id.empty() || front_.sessions.find(ws_->session_id)) return false;
  ws_close(c, ws::policy_violation, "the session has ended: log in again");
  return true;
}

void http_session::on_ws_text(net::connection& c, const std::string& text) {
  if (ws_session_ended(c)) return;  // logged out, or expired
  const json h = json::parse(text, nullptr, false);
  std::optional<std::uint64_t> id;
  auto reply_error = [&](const std::string& message) {
    std::string out;
    ws::encode(out, ws::opcode::text,
               proto::make_error(proto::errc::bad_request, message, id).dump(-1, ' ', false, json::error_handler_t::replace));
    c.send_raw(out);
  };
  if (!h.is_object()) return reply_error("each message is a JSON object");
  auto type = h.find("type");
  if (type == h.end() || !type->is_string() || !type->get_ref<const std::string&>().starts_with("chat.")) {
    return reply_error("'type' must be a chat request (chat.hello, chat.join, chat.say, ...)");
  }
  if (auto it = h.find("id"); it != h.end()) {
    if (!it->is_number_unsigned()) return reply_error("'id' must be a non-negative integer");
    id = it->get<std::uint64_t>();
  }
  auto t = h.find("text");
  if (t != h.end() && !t->is_string()) return reply_error("'text' must be a string");
  const std::string body = t == h.end() ? std::string() : t->get<std::string>();
  const std::string& what = type->get_ref<const std::string&>();
  try {
    ws_->chat->handle(id.value_or(0), what, h, body);
  } catch (const json::exception& e) {  // a member of the wrong type: as the cskit protocol answers it
    return reply_error(std::string("malformed request: ") + e.what());
  }
  if (what == "chat.quit") ws_close(c, ws::normal, "quit");
}

void http_session::ws_close(net::connection& c, std::uint16_t code, std::string_view reason) {
  if (ws_->close_sent || c.closing()) return;
  ws_->close_sent = true;
  std::string out;
  ws::encode_close(out, code, reason);
  c.send_raw(out);
  if (code != ws::normal) ws_->chat->set_close_reason(std::string(reason));
  c.close_after_flush("WebSocket closed (" + std::to_string(code) + " " + std::string(reason) + ")");
}

void http_session::send_ping(net::connection& c) {
  if (!ws_ || ws_->close_sent || ws_session_ended(c)) return;
  std::string out;
  ws::encode(out, ws::opcode::ping, "cskit");
  c.send_raw(out);
}

}  // namespace cskit::server
