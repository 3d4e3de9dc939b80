#pragma once
// Chat: nicknames unique across the server, rooms with topics and history,
// private messages, join/part/quit notices. One hub is shared by every
// event loop (a mutex guards it); deliveries go, in the hub's order, to a
// mailbox per event loop that the loop drains, encoded once per message. A receiver whose send
// queue passes `max_queue` bytes is disconnected: a slow reader never
// slows anyone else and never grows the server without bound.

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "proto/frame.hpp"

namespace cskit::net {
class connection;
}

namespace cskit::service {

struct chat_options {
  bool enabled = true;
  std::string default_room = "lobby";
  std::size_t history = 50;               ///< messages replayed on join
  std::size_t max_message = 2000;         ///< bytes of UTF-8 text
  double rate = 5;                        ///< messages per second per client...
  double burst = 10;                      ///< ...with this burst
  std::size_t max_queue = 1 << 20;        ///< bytes queued to one client before it is dropped
  std::size_t max_rooms = 1000;           ///< rooms on the server
  std::chrono::seconds ping_interval{30}; ///< silent clients are pinged after this
  std::chrono::seconds ping_timeout{90};  ///< and dropped after this
};

/// Nicknames: 1-32 characters of letters, digits and - _ . (ASCII, so that
/// they cannot be confused or carry escape sequences). Rooms: the same, up
/// to 64, optionally starting with #.
bool valid_nick(const std::string& nick);
bool valid_room(const std::string& room);

/// A nickname's skeleton, in the spirit of Unicode TR39's for the ASCII
/// that nicknames may use: nicknames that look alike have the same one.
/// Case is ignored (as it is for nicknames); i, l and 1 are one letter
/// (so that "aIice" meets "alice"), O and 0 another, and m, w and d stand
/// for the "rn", "vv" and "cl" they can pass for.
std::string nick_skeleton(std::string_view nick);

class chat_hub;
class chat_mailbox;
struct chat_member;

class chat_hub {
 public:
  explicit chat_hub(chat_options o);
  ~chat_hub();
  const chat_options& options() const noexcept { return options_; }
  /// The server's accounts: each one's name is reserved as its nickname,
  /// and names that look like it are refused to other accounts.
  void set_accounts(const std::vector<std::string>& names);

 private:
  friend class chat_client;
  struct room {
    std::string topic;
    std::string topic_by;
    std::set<chat_member*> members;
    /// The members' connections grouped by event loop: built by the first
    /// broadcast after a membership change, then shared (not copied) by
    /// every broadcast until the next change. Reset on join, part and quit.
    mutable std::shared_ptr<const struct receivers_by_loop> receivers;
    std::deque<std::shared_ptr<const std::string>> history;  ///< encoded chat.message frames (history: true)
  };

  void deliver(chat_member& m, const std::shared_ptr<const std::string>& frame);
  void broadcast(const room& r, const std::shared_ptr<const std::string>& frame);
  /// Queues `frame` to each of `members`, with one task per event loop.
  void fan_out(const std::set<chat_member*>& members, const std::shared_ptr<const std::string>& frame);
  void post_to_loops(const std::shared_ptr<const struct receivers_by_loop>& receivers,
                     const std::shared_ptr<const std::string>& frame);
  /// Why `self` cannot take `nick` ("" when it can): in use by another
  /// member; an account's name (the account's own), or like one (same
  /// skeleton); like a nickname in use by another account.
  std::string nick_refusal(const std::string& nick, const chat_member& self) const;
  /// A nickname `self` can take: `nick` numbered (or its account's name).
  std::string suggest_nick(const std::string& nick, const chat_member& self) const;
  void name(chat_member& m, const std::string& nick);  // under m_
  void unname(chat_member& m);                         // under m_
  /// The mailbox of the event loop `ex` (created on first use; under m_).
  chat_mailbox& mailbox_for(const boost::asio::any_io_executor& ex);

  chat_options options_;
  std::mutex m_;
  std::map<std::string, chat_member*, std::less<>> nicks_;  ///< lower-cased nick -> member
  std::multimap<std::string, chat_member*> by_skeleton_;     ///< nick_skeleton(nick) -> member
  struct account {
    std::string name, key, skeleton;  // as configured, lower-cased, nick_skeleton
  };
  std::vector<account> accounts_;
  std::map<std::string, room, std::less<>> rooms_;
  std::set<chat_member*> members_;
  std::vector<std::shared_ptr<chat_mailbox>> mailboxes_;  ///< one per event loop
};

/// One connection's chat state; destroyed when the connection closes,
/// which sends its quit notice.
class chat_client {
 public:
  /// `account`: the account the connection logged in as.
  chat_client(chat_hub& hub, net::connection& conn, std::string account);
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
  void on_quit(const call& c);
  void error(std::uint64_t id, proto::errc code, const std::string& message, proto::json extra = proto::json::object());
  void ok(std::uint64_t id, proto::json extra = proto::json::object());
  bool room_arg(const call& c, std::string& key);
  /// The room named by the request if the member is in it; else answers.
  chat_hub::room* my_room(const call& c, std::string& key);
  bool charge(std::uint64_t id);
  bool text_ok(const call& c);
  bool nick_refused(std::uint64_t id, const std::string& nick);

  chat_hub& hub_;
  net::connection& conn_;
  std::shared_ptr<struct chat_member> member_;
  std::string close_reason_ = "connection closed";
  bool reason_from_client_ = false;
};


}  // namespace cskit::service
