#pragma once
// The web page's logins: a session is a random 256-bit identifier held in
// a cookie (Secure, HttpOnly, SameSite=Strict, __Host- prefixed), with its
// own CSRF token that every state-changing request must carry in a header
// (docs/http.md, "The web page"). Sessions live in memory: a restart logs
// everyone out. Shared by every event loop: a mutex guards the table.

#include <chrono>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "server/accounts.hpp"

namespace cskit::server {

class web_sessions {
 public:
  using clock = std::chrono::steady_clock;
  /// A session lasts this long from its login, however active.
  static constexpr std::chrono::hours lifetime{12};
  /// At most this many at once: beyond, the one closest to its end goes.
  static constexpr std::size_t max_sessions = 10000;
  /// And this many per account (its oldest goes).
  static constexpr std::size_t max_per_account = 64;
  /// The cookie's name; the __Host- prefix makes browsers refuse it unless
  /// it is Secure, for path / and for this host only.
  static constexpr std::string_view cookie_name = "__Host-cskit";

  struct session {
    std::shared_ptr<const user_account> account;  ///< as it was at login
    std::string csrf;                             ///< 64 hex digits
    clock::time_point expires;
  };
  struct opened {
    std::string id;  ///< the cookie's value
    session s;
  };

  /// A new session for `account`.
  opened open(std::shared_ptr<const user_account> account, clock::time_point now = clock::now());
  /// The live session whose cookie value is `id`.
  std::optional<session> find(std::string_view id, clock::time_point now = clock::now());
  /// Logs out.
  void close(std::string_view id);
  std::size_t size();

  /// The cookie's value in a Cookie header ("" when it has none).
  static std::string_view from_cookie_header(std::string_view header);
  /// Set-Cookie for a new session, and the one that ends it in the browser.
  static std::string set_cookie(std::string_view id);
  static std::string clear_cookie();

 private:
  void drop_expired(clock::time_point now);  // under m_
  std::mutex m_;
  std::map<std::string, session, std::less<>> sessions_;
};

}  // namespace cskit::server
