#include "server/web_sessions.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <stdexcept>

namespace cskit::server {

namespace {
// 256 bits from OpenSSL's CSPRNG (seeded by the kernel), as hex.
std::string random_id() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("no random bytes for a web session");
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (unsigned char b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}
}  // namespace

web_sessions::opened web_sessions::open(std::shared_ptr<const user_account> account, clock::time_point now) {
  opened o{random_id(), {std::move(account), random_id(), now + lifetime}};
  std::lock_guard lock(m_);
  // One pass: the expired go; an account at its limit loses its oldest
  // session, so that one account cannot push everyone else's out.
  drop_expired(now);
  auto mine_oldest = sessions_.end();
  std::size_t mine = 0;
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
    if (it->second.account->name != o.s.account->name) continue;
    ++mine;
    if (mine_oldest == sessions_.end() || it->second.expires < mine_oldest->second.expires) mine_oldest = it;
  }
  if (mine >= max_per_account) sessions_.erase(mine_oldest);
  if (sessions_.size() >= max_sessions) {
    auto oldest = std::min_element(sessions_.begin(), sessions_.end(),
                                   [](const auto& a, const auto& b) { return a.second.expires < b.second.expires; });
    sessions_.erase(oldest);
  }
  sessions_.emplace(o.id, o.s);
  return o;
}

std::optional<web_sessions::session> web_sessions::find(std::string_view id, clock::time_point now) {
  if (id.size() != 64) return std::nullopt;
  std::lock_guard lock(m_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return std::nullopt;
  if (it->second.expires <= now) {
    sessions_.erase(it);
    return std::nullopt;
  }
  return it->second;
}

void web_sessions::close(std::string_view id) {
  std::lock_guard lock(m_);
  if (auto it = sessions_.find(id); it != sessions_.end()) sessions_.erase(it);
}

std::size_t web_sessions::size() {
  std::lock_guard lock(m_);
  return sessions_.size();
}

void web_sessions::drop_expired(clock::time_point now) {
  std::erase_if(sessions_, [now](const auto& kv) { return kv.second.expires <= now; });
}

std::string_view web_sessions::from_cookie_header(std::string_view header) {
  // "a=1; __Host-cskit=...; b=2": pairs separated by ';' and blanks.
  while (!header.empty()) {
    const auto end = header.find(';');
    std::string_view pair = header.substr(0, end);
    header = end == std::string_view::npos ? std::string_view() : header.substr(end + 1);
    while (!pair.empty() && (pair.front() == ' ' || pair.front() == '\t')) pair.remove_prefix(1);
    if (pair.size() > cookie_name.size() && pair.starts_with(cookie_name) && pair[cookie_name.size()] == '=') {
      return pair.substr(cookie_name.size() + 1);
    }
  }
  return {};
}

std::string web_sessions::set_cookie(std::string_view id) {
  return "Set-Cookie: " + std::string(cookie_name) + "=" + std::string(id) +
         "; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=" +
         std::to_string(std::chrono::duration_cast<std::chrono::seconds>(lifetime).count()) + "\r\n";
}

std::string web_sessions::clear_cookie() {
  return "Set-Cookie: " + std::string(cookie_name) + "=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0\r\n";
}

}  // namespace cskit::server
