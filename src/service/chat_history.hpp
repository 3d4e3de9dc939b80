#pragma once
// Chat history: every room's messages and every pair of accounts' private
// messages, kept within a retention (count and age) and queried the ways
// IRCv3 CHATHISTORY asks (and cskit's join replay, which is LATEST).
// Implementations are thread-safe; add() is called under the hub's lock,
// in the hub's order, and must not block on I/O.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "service/chat.hpp"

namespace cskit::service {

struct chat_history_query {
  enum class mode { latest, before, after, around, between };
  /// A point in a conversation: a message id or a time (ms), or "*" (LATEST only).
  struct ref {
    bool any = false;
    bool by_id = false;
    std::uint64_t id = 0;
    std::int64_t ts_ms = 0;
  };
  mode what = mode::latest;
  ref a, b;  ///< b: BETWEEN only
  std::size_t limit = 50;
};

struct chat_retention {
  std::size_t count = 10000;  ///< messages kept per room or pair (0: none)
  std::int64_t max_age_ms = 0;  ///< 0: no age limit
  /// In memory only: all of it within this many bytes, the server's oldest
  /// messages dropped first (count alone could allow max_rooms x count x
  /// max_message).
  std::size_t max_bytes = 256u << 20;
};

class chat_history {
 public:
  virtual ~chat_history() = default;
  /// The conversation a message belongs to: "#room", or "@a b" for the
  /// private messages between accounts a and b (lower-cased, sorted).
  static std::string key_of(const chat_event& e, const std::string& target_account);
  static std::string pair_key(const std::string& account_a, const std::string& account_b);
  virtual void add(const std::string& key, std::shared_ptr<const chat_event> e) = 0;
  /// Messages of `key`, oldest first.
  virtual std::vector<std::shared_ptr<const chat_event>> query(const std::string& key,
                                                               const chat_history_query& q) = 0;
  /// Waits until everything added is stored (a no-op in memory).
  virtual void flush() {}
  /// The highest message id stored (0: none): ids go on from there.
  virtual std::uint64_t last_id() { return 0; }
};

/// History in memory: lost at restart.
std::unique_ptr<chat_history> make_memory_history(chat_retention r);

/// Picks the messages `q` asks for from `all` (oldest first, ids rising).
std::vector<std::shared_ptr<const chat_event>> select_history(
    const std::vector<std::shared_ptr<const chat_event>>& all, const chat_history_query& q);

}  // namespace cskit::service
