#pragma once
// The cskit protocol's side of chat (docs/protocol.md, "Chat"): chat.*
// requests in, chat.message and chat.event frames out. The rules are the
// hub's (service/chat.hpp); this only translates.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "proto/frame.hpp"
#include "service/chat.hpp"

namespace cskit::service {

/// Encodes hub events as cskit frames (every variant alike).
const chat_codec& cskit_chat_codec();

/// How a chat client's messages go on the wire: cskit frames (a header and
/// the text as the body), or WebSocket text messages of JSON (the same
/// header, the text as its "text" member: the web page's chat,
/// docs/http.md). The requests and answers are the same either way.
class chat_wire {
 public:
  virtual ~chat_wire() = default;
  /// Appends one message.
  virtual void encode(std::string& out, const proto::json& header, std::string_view body = {}) const = 0;
  /// Queues one message to `c`.
  virtual void send(net::connection& c, const proto::json& header) const = 0;
  /// The hub's events in this form.
  virtual const chat_codec& codec() const = 0;
};
const chat_wire& cskit_chat_wire();
const chat_wire& websocket_chat_wire();

/// One connection's chat state; destroyed when the connection closes,
/// which sends its quit notice.
class chat_client {
 public:
  /// `account`: the account the connection logged in as.
  chat_client(chat_hub& hub, net::connection& conn, std::string account, const chat_wire& wire = cskit_chat_wire());
  ~chat_client();
  chat_client(const chat_client&) = delete;
  chat_client& operator=(const chat_client&) = delete;

  /// Handles one chat.* request (the session checked the `chat` permission).
  void handle(std::uint64_t id, std::string_view type, const proto::json& header, const std::string& body);
  /// Why the client left, for the quit notice. A reason the client gave
  /// itself (chat.quit) wins over the connection's.
  void set_close_reason(std::string reason, bool from_client = false) {
    if (from_client || !reason_from_client_) close_reason_ = std::move(reason);
    reason_from_client_ |= from_client;
  }

 private:
  struct call {
    std::uint64_t id;
    const proto::json& h;
    const std::string& body;
  };
  void on_hello(const call& c);
  void on_join(const call& c);
  void on_part(const call& c);
  void on_say(const call& c);
  void on_msg(const call& c);
  void on_who(const call& c);
  void on_rooms(const call& c);
  void on_topic(const call& c);
  void on_nick(const call& c);
  void on_away(const call& c);
  void on_whois(const call& c);
  void on_quit(const call& c);
  /// Answers the request: `chat.ok` with `extra`, or the refusal's error.
  void answer(std::uint64_t id, const chat_refusal& r, proto::json extra = proto::json::object());

  chat_hub& hub_;
  net::connection& conn_;
  const chat_wire& wire_;
  std::shared_ptr<chat_member> member_;
  std::string close_reason_ = "connection closed";
  bool reason_from_client_ = false;
};

}  // namespace cskit::service
