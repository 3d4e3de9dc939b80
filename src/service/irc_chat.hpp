#pragma once
// IRC's side of chat (docs/irc.md): a registered IRC client's commands
// in, numerics and chat lines out. The rules are the hub's
// (service/chat.hpp), shared with the cskit protocol; registration, login
// and capability negotiation are the server's (server/irc_session).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proto/irc.hpp"
#include "service/chat.hpp"

namespace cskit::service {

/// IRCv3 capabilities a client can enable (CAP REQ); the bits that change
/// what a chat line looks like are also its receiver's codec variant.
enum irc_cap : unsigned {
  cap_message_tags = 1u << 0,
  cap_server_time = 1u << 1,
  cap_account_tag = 1u << 2,
  cap_echo_message = 1u << 3,
  cap_away_notify = 1u << 4,
  cap_batch = 1u << 5,
  cap_chathistory = 1u << 6,  // draft/chathistory
  cap_sasl = 1u << 7,
  cap_cap_notify = 1u << 8,
};
inline constexpr unsigned irc_variant_caps =
    cap_message_tags | cap_server_time | cap_account_tag | cap_echo_message | cap_away_notify | cap_batch;

/// Bytes of free text (a topic, a reason) one IRC line carries; longer
/// ones are cut at a character boundary.
inline constexpr std::size_t max_irc_text = 390;
/// `text` as one line of at most max_irc_text bytes.
std::string irc_text(std::string_view text);
/// A client's string echoed as a middle parameter: itself when it is one
/// word, else "*".
std::string irc_word(std::string_view s);

/// The capabilities a server offers, in CAP LS order, and their bits.
struct irc_cap_name {
  std::string_view name;
  irc_cap bit;
};
const std::vector<irc_cap_name>& irc_caps();

struct irc_settings {
  std::string server_name = "cskit";  ///< the source of numerics
  std::string network = "cskit";
  std::string host = "cskit";         ///< the host part of every client's prefix (nick!account@host)
  std::vector<std::string> motd;      ///< empty: ERR_NOMOTD
  std::size_t history_max = 1000;     ///< the most messages one CHATHISTORY request returns
};

/// Encodes hub events as IRC lines for a receiver's capabilities.
class irc_codec final : public chat_codec {
 public:
  explicit irc_codec(const irc_settings& s) : host_(s.host) {}
  std::shared_ptr<const std::string> encode(const chat_event& e, unsigned caps, bool own) const override;
  std::string prefix(std::string_view nick, std::string_view account) const;
  /// The tags `caps` asks for on `e` (escaped, without '@'), plus batch.
  std::string tags(const chat_event& e, unsigned caps, std::string_view batch = {}) const;
  /// A message event's lines (a long or multi-line text takes several).
  void message_lines(std::string& out, const chat_event& e, unsigned caps, std::string_view batch = {}) const;

 private:
  std::string host_;
};

/// One registered IRC client in the hub; destroyed when its connection
/// closes, which sends its quit.
class irc_chat {
 public:
  irc_chat(chat_hub& hub, const irc_codec& codec, const irc_settings& settings, net::connection& conn,
           std::string account, unsigned caps);
  ~irc_chat();
  irc_chat(const irc_chat&) = delete;
  irc_chat& operator=(const irc_chat&) = delete;

  /// Takes the first nickname; refused: why (ERR_NICKNAMEINUSE and the like).
  chat_refusal start(const std::string& nick);
  const std::string& nick() const { return member_->nick; }
  /// A command after registration; false when it is not one of chat's.
  bool handle(const proto::irc::message& m);
  void set_caps(unsigned caps);
  unsigned caps() const { return caps_; }
  void set_quit_reason(std::string reason) { quit_reason_ = std::move(reason); }
  /// Numeric or command `what` from the server to this client.
  void reply(std::string_view what, std::initializer_list<std::string_view> params);
  void reply(std::string_view what, const std::vector<std::string>& params);
  /// Lines to this client in the hub's order (after every event queued to it so far).
  void send(std::string lines);
  /// More than `limit` bytes of replies wait for this client (queued, or
  /// still in the mailbox): it asks faster than it reads.
  bool flooded(std::size_t limit) const;
  void send_lusers();
  void send_motd();

 private:
  using params = std::vector<std::string>;
  void on_privmsg(const proto::irc::message& m);
  void on_join(const proto::irc::message& m);
  void on_part(const proto::irc::message& m);
  void on_topic(const proto::irc::message& m);
  void on_names(const proto::irc::message& m);
  void on_who(const proto::irc::message& m);
  void on_whois(const proto::irc::message& m);
  void on_list(const proto::irc::message& m);
  void on_nick(const proto::irc::message& m);
  void on_away(const proto::irc::message& m);
  void on_mode(const proto::irc::message& m);
  void on_userhost(const proto::irc::message& m);
  void on_ison(const proto::irc::message& m);
  void on_chathistory(const proto::irc::message& m);
  void join_one(const std::string& room);
  /// Appends numeric `what` to this client.
  void numeric(std::string& out, std::string_view what, std::initializer_list<std::string_view> params) const;
  void names_lines(std::string& out, const chat_room_view& v) const;
  void topic_lines(std::string& out, const chat_room_view& v, bool none_too) const;
  /// History of `target` (in a chathistory batch when the client has batch).
  void history_lines(std::string& out, const std::string& target,
                     const std::vector<std::shared_ptr<const chat_event>>& events);
  bool visible_to_me(const chat_member_view& w) const;
  /// The refusal of a chat request as the numeric IRC clients expect.
  void refuse(const chat_refusal& r, std::string_view command, std::string_view target);
  void fail(std::string_view command, std::string_view code, std::initializer_list<std::string_view> context,
            std::string_view text);
  std::string next_batch();

  chat_hub& hub_;
  const irc_codec& codec_;
  const irc_settings& settings_;
  net::connection& conn_;
  std::shared_ptr<chat_receiver> receiver_;
  std::shared_ptr<chat_member> member_;
  unsigned caps_ = 0;
  bool invisible_ = false;
  std::uint64_t batches_ = 0;
  std::string quit_reason_ = "connection closed";
};

}  // namespace cskit::service
