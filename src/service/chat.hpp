#pragma once
// Chat: nicknames unique across the server, rooms with topics and history,
// private messages, join/part/quit notices. One hub is shared by every
// event loop and by every protocol that speaks to it (the cskit protocol,
// service/chat_client; IRC, service/irc_chat): the hub holds the rules
// (names, rooms, rate and size limits) and produces protocol-neutral
// events; each receiver's codec turns an event into its own bytes, once
// per event loop and per kind of receiver. A mutex guards the hub;
// deliveries go, in the hub's order, to a mailbox per event loop that the
// loop drains. A receiver whose send queue passes `max_queue` bytes is
// disconnected: a slow reader never slows anyone else and never grows the
// server without bound.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "proto/errc.hpp"

namespace cskit::net {
class connection;
}

namespace cskit::service {

struct chat_options {
  bool enabled = true;
  std::string default_room = "lobby";
  std::size_t history = 50;               ///< messages replayed on join
  std::size_t history_keep = 10000;       ///< messages kept per room and per pair of accounts (CHATHISTORY)
  std::chrono::hours history_max_age{0};  ///< and for at most this long (0: no age limit)
  std::string history_store = "sqlite";   ///< "sqlite" (lasts) or "memory" (lost at restart)
  std::string history_path;               ///< the SQLite file (empty: <state dir>/chat-history.sqlite3)
  std::size_t max_message = 2000;         ///< bytes of UTF-8 text
  double rate = 5;                        ///< messages per second per client...
  double burst = 10;                      ///< ...with this burst
  std::size_t max_queue = 1 << 20;        ///< bytes queued to one client before it is dropped
  std::size_t max_rooms = 1000;           ///< rooms on the server
  std::chrono::seconds ping_interval{30}; ///< silent clients are pinged after this
  std::chrono::seconds ping_timeout{90};  ///< and dropped after this
  bool operator==(const chat_options&) const = default;
};

/// Nicknames: 1-32 characters of letters, digits and - _ . (ASCII, so that
/// they cannot be confused or carry escape sequences). Rooms: the same, up
/// to 64, optionally starting with #.
bool valid_nick(const std::string& nick);
bool valid_room(const std::string& room);
/// A room's key: without its '#', lower-cased ("#Lobby" -> "lobby").
std::string room_key(std::string room);

/// A nickname's skeleton, in the spirit of Unicode TR39's for the ASCII
/// that nicknames may use: nicknames that look alike have the same one.
/// Case is ignored (as it is for nicknames); i, l and 1 are one letter
/// (so that "aIice" meets "alice"), O and 0 another, and m, w and d stand
/// for the "rn", "vv" and "cl" they can pass for.
std::string nick_skeleton(std::string_view nick);

/// Something that happened in the hub, as every protocol sees it.
/// Immutable once made; shared by every receiver and by the history.
struct chat_event {
  enum class kind : std::uint8_t { message, join, part, quit, nick, topic, away };
  kind what = kind::message;
  bool action = false;      ///< message: /me
  bool notice = false;      ///< message: a notice (IRC NOTICE: never answered automatically)
  bool is_private = false;  ///< message: to `target`, not to a room
  std::string room;         ///< "#key" for message, join, part, topic
  std::string nick;         ///< who did it
  std::string account;      ///< that member's account
  std::string target;       ///< private message: the receiver's nickname
  std::string text;         ///< message text, part/quit reason, topic, new nickname, away text ("" = back)
  std::int64_t ts_ms = 0;   ///< Unix time in milliseconds
  std::uint64_t id = 0;     ///< unique on this server (IRC msgid)
  std::uint64_t sender = 0; ///< the member that caused it (chat_member::id)
};

/// Turns events into one protocol's bytes. `variant` is the receiver's
/// (its negotiated options, codec-defined, < 64); `own`: the receiver
/// caused the event. Null: this receiver gets nothing for it. Called on
/// the receiver's event loop, at most once per event, loop and (variant,
/// own).
class chat_codec {
 public:
  virtual ~chat_codec() = default;
  virtual std::shared_ptr<const std::string> encode(const chat_event& e, unsigned variant, bool own) const = 0;
};

/// Where a member's deliveries go. `variant` is written only on the
/// connection's own thread, which is also the only one that reads it.
struct chat_receiver {
  std::weak_ptr<net::connection> conn;
  const chat_codec* codec = nullptr;
  unsigned variant = 0;
  std::uint64_t member = 0;
  /// Replies queued in the mailbox for it and not handed to the connection
  /// yet (chat_hub::send_in_order): what a client that asks and does not
  /// read has piled up.
  mutable std::atomic<std::size_t> replies_queued{0};
};

class chat_mailbox;
class chat_history;
struct chat_history_query;

/// One connection's place in the hub. Its nickname, account and rooms
/// change only through the hub, on the member's own connection thread (and
/// under the hub's lock), so that thread may read them without the lock.
struct chat_member {
  std::uint64_t id = 0;
  std::shared_ptr<chat_receiver> receiver;
  chat_mailbox* mailbox = nullptr;  ///< its event loop's; owned by the hub
  std::string peer;
  std::string nick;      ///< empty until it takes one (hello)
  std::string skeleton;  ///< nick_skeleton(nick)
  std::string account;   ///< the account it logged in as
  std::string away;      ///< away message; empty: present
  std::set<std::string> rooms;  ///< keys
  std::int64_t signon_ms = 0;
  std::int64_t last_said_ms = 0;
  bool invisible = false;
  double tokens = 0;         ///< messages, topics, nicknames, away
  std::int64_t refilled_ns = 0;
  double moves = 0;          ///< joins and parts (a bucket of their own)
  std::int64_t moves_refilled_ns = 0;
};

/// A refused request: the error code and message every protocol reports,
/// with the details that go with some codes.
struct chat_refusal {
  proto::errc code = proto::errc::ok;
  std::string message;
  std::string suggestion;   ///< conflict: a nickname that is free
  double retry_after = 0;   ///< rate_limited: seconds
  std::size_t limit = 0;    ///< too_large: bytes
  bool ok() const noexcept { return code == proto::errc::ok; }
};

struct chat_room_view {
  std::string room;  ///< "#key"
  std::string topic, topic_by;
  std::int64_t topic_ms = 0;
  std::vector<std::pair<std::string, std::string>> members;  ///< (nickname, account), sorted
  std::vector<std::string> away;                             ///< nicknames of members who are away
  std::vector<std::shared_ptr<const chat_event>> history;    ///< join: the room's last messages, oldest first
};

struct chat_room_summary {
  std::string room;
  std::size_t members = 0;
  std::string topic;
};

struct chat_member_view {
  std::string nick, account, away, peer;
  bool invisible = false;
  std::vector<std::string> rooms;  ///< "#key"
  std::int64_t signon_ms = 0, idle_ms = 0;
};

struct chat_say {
  bool action = false;
  bool notice = false;
};

class chat_hub {
 public:
  /// History in memory, within the options' retention.
  explicit chat_hub(chat_options o);
  /// `history`: where messages are kept.
  chat_hub(chat_options o, std::unique_ptr<chat_history> history);
  ~chat_hub();
  const chat_options& options() const noexcept { return options_; }
  /// The server's accounts: each one's name is reserved as its nickname,
  /// and names that look like it are refused to other accounts.
  void set_accounts(const std::vector<std::string>& names);

  /// A member for a connection that logged in as `account`, without a
  /// nickname yet; `leave` ends it.
  std::shared_ptr<chat_member> enter(std::shared_ptr<chat_receiver> receiver, const boost::asio::any_io_executor& ex,
                                     std::string account, std::string peer);
  /// The member is gone: a quit event (with `reason`) to everyone who
  /// shares a room with it, and its nickname is free again.
  void leave(chat_member& m, const std::string& reason);

  /// The member's first nickname.
  chat_refusal hello(chat_member& m, const std::string& nick);
  /// The joiner's answer, made from the room as it finds it.
  using join_reply = std::function<std::string(const chat_room_view&)>;
  /// Joins (creating the room on first join). `reply`'s bytes go to the
  /// joiner in the hub's order, ahead of anything said in the room after
  /// the join; then a join event to the room, the joiner included.
  chat_refusal join(chat_member& m, const std::string& room, const join_reply& reply);
  /// Bytes to the member in the order of everything else it is sent
  /// through the hub (a reply that must not overtake an event).
  void send_in_order(chat_member& m, std::string bytes);
  /// Shown to WHO only by those who share a room with it (IRC's +i).
  void set_invisible(chat_member& m, bool on);
  chat_refusal part(chat_member& m, const std::string& room, const std::string& reason);
  chat_refusal say(chat_member& m, const std::string& room, const std::string& text, chat_say how);
  /// A private message; `to_nick` gets the receiver's nickname as shown.
  chat_refusal msg(chat_member& m, const std::string& to, const std::string& text, chat_say how,
                   std::string* to_nick = nullptr);
  /// The room's topic and members (no history).
  chat_refusal who(const std::string& room, chat_room_view& out);
  std::vector<chat_room_summary> rooms();
  /// The topic of a room the member is in (`out`), or, with `topic`, sets it.
  chat_refusal topic(chat_member& m, const std::string& room, const std::string* topic, chat_room_view& out);
  chat_refusal nick(chat_member& m, const std::string& nick);
  /// Away with `text`, or back when it is empty; an away event to those
  /// who share a room with the member.
  chat_refusal away(chat_member& m, const std::string& text);
  chat_refusal whois(const std::string& nick, chat_member_view& out);
  /// Stored messages of a room the member is in ("#room") or of its
  /// private conversation with `target` (a nickname, or an account's name).
  chat_refusal history(const chat_member& m, const std::string& target, const chat_history_query& q,
                       std::vector<std::shared_ptr<const chat_event>>& out);
  /// Members with a nickname, and rooms with members.
  std::pair<std::size_t, std::size_t> counts();
  /// A nickname `m` can take, from `nick` (numbered, or its account's name).
  std::string free_nick(const chat_member& m, const std::string& nick);
  /// Why `m` could not take `nick` now ("" if it could).
  std::string nick_problem(const chat_member& m, const std::string& nick);

 private:
  struct room {
    std::string topic;
    std::string topic_by;
    std::int64_t topic_ms = 0;
    std::set<chat_member*> members;
    /// The members' receivers grouped by event loop: built by the first
    /// broadcast after a membership change, then shared (not copied) by
    /// every broadcast until the next change. Reset on join, part and quit.
    mutable std::shared_ptr<const struct receivers_by_loop> receivers;
    std::deque<std::shared_ptr<const chat_event>> history;  ///< the last `history`, for the join replay
    bool loaded = false;  ///< history read from the store
  };

  std::shared_ptr<chat_event> make_event(chat_event::kind what, const chat_member& m, std::string room = {});
  void deliver(chat_member& m, const std::shared_ptr<const chat_event>& e);
  void broadcast(const room& r, const std::shared_ptr<const chat_event>& e);
  /// Queues `e` to each of `members`, with one task per event loop.
  void fan_out(const std::set<chat_member*>& members, const std::shared_ptr<const chat_event>& e);
  /// The member and everyone who shares a room with it.
  std::set<chat_member*> neighbours(const chat_member& m);
  void post_to_loops(const std::shared_ptr<const struct receivers_by_loop>& receivers,
                     const std::shared_ptr<const chat_event>& e);
  /// Why `self` cannot take `nick` ("" when it can): in use by another
  /// member; an account's name (the account's own), or like one (same
  /// skeleton); like a nickname in use by another account.
  std::string nick_refusal(const std::string& nick, const chat_member& self) const;
  /// A nickname `self` can take: `nick` numbered (or its account's name).
  std::string suggest_nick(const std::string& nick, const chat_member& self) const;
  /// The refusal for a nickname `self` cannot take, with a suggestion.
  chat_refusal refuse_nick(const std::string& nick, const chat_member& self) const;
  void name(chat_member& m, const std::string& nick);  // under m_
  void unname(chat_member& m);                         // under m_
  chat_refusal charge(chat_member& m);
  chat_refusal charge_move(chat_member& m);
  /// A room nobody is in and that has no topic is forgotten (its history
  /// stays in the store), so that max_rooms counts rooms in use.
  void forget_if_empty(const std::string& key);
  chat_refusal check_text(const std::string& text) const;
  /// The room `name` if valid and `m` is in it; else the refusal.
  room* my_room(const chat_member& m, const std::string& name, std::string& key, chat_refusal& why);
  /// The mailbox of the event loop `ex` (created on first use; under m_).
  chat_mailbox& mailbox_for(const boost::asio::any_io_executor& ex);

  chat_options options_;
  std::unique_ptr<chat_history> store_;
  std::mutex m_;
  std::uint64_t next_member_ = 1;
  std::uint64_t next_event_;
  std::map<std::string, chat_member*, std::less<>> nicks_;  ///< lower-cased nick -> member
  std::multimap<std::string, chat_member*> by_skeleton_;     ///< nick_skeleton(nick) -> member
  struct account {
    std::string name, key, skeleton;  // as configured, lower-cased, nick_skeleton
  };
  std::vector<account> accounts_;
  std::map<std::string, room, std::less<>> rooms_;
  std::set<chat_member*> members_;  ///< those with a nickname
  std::vector<std::shared_ptr<chat_mailbox>> mailboxes_;  ///< one per event loop
};

}  // namespace cskit::service
