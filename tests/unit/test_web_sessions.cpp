// The web page's sessions (server/web_sessions.hpp).
#include "server/web_sessions.hpp"

#include <gtest/gtest.h>

#include <vector>

using cskit::server::user_account;
using cskit::server::web_sessions;

namespace {
std::shared_ptr<const user_account> account(const std::string& name) {
  auto a = std::make_shared<user_account>();
  a->name = name;
  a->token.assign(16, 't');  // (assign: GCC 12 warns falsely about operator= of a short literal here)
  return a;
}
}  // namespace

TEST(web_sessions, open_find_close_and_expire) {
  web_sessions s;
  const auto t0 = web_sessions::clock::now();
  auto o = s.open(account("ann"), t0);
  EXPECT_EQ(o.id.size(), 64u);
  EXPECT_EQ(o.s.csrf.size(), 64u);
  EXPECT_NE(o.id, o.s.csrf);
  auto found = s.find(o.id, t0 + std::chrono::hours(1));
  ASSERT_TRUE(found);
  EXPECT_EQ(found->account->name, "ann");
  EXPECT_EQ(found->csrf, o.s.csrf);
  EXPECT_FALSE(s.find(o.id, t0 + web_sessions::lifetime));  // expired: and gone
  EXPECT_EQ(s.size(), 0u);
  auto o2 = s.open(account("bob"), t0);
  EXPECT_NE(o2.id, o.id);
  s.close(o2.id);
  EXPECT_FALSE(s.find(o2.id, t0));
  EXPECT_FALSE(s.find("short", t0));
  EXPECT_FALSE(s.find(std::string(64, '0'), t0));
}

TEST(web_sessions, bounded_per_account_and_in_all) {
  web_sessions s;
  const auto t0 = web_sessions::clock::now();
  const auto first = s.open(account("a"), t0);
  const auto b = account("b");
  std::vector<web_sessions::opened> bs;
  for (std::size_t i = 0; i < web_sessions::max_per_account + 5; ++i) {
    bs.push_back(s.open(b, t0 + std::chrono::milliseconds(i + 1)));
  }
  // b keeps its newest max_per_account; a's session is untouched.
  EXPECT_EQ(s.size(), 1 + web_sessions::max_per_account);
  EXPECT_FALSE(s.find(bs.front().id, t0));
  EXPECT_TRUE(s.find(bs.back().id, t0));
  EXPECT_TRUE(s.find(first.id, t0));
  // Across many accounts, at most max_sessions: the oldest goes.
  for (std::size_t i = s.size(); i < web_sessions::max_sessions; ++i) {
    std::string name = std::to_string(i);
    name.insert(name.begin(), 'u');
    s.open(account(name), t0 + std::chrono::seconds(1));
  }
  EXPECT_EQ(s.size(), web_sessions::max_sessions);
  s.open(account("c"), t0 + std::chrono::seconds(2));
  EXPECT_EQ(s.size(), web_sessions::max_sessions);
  EXPECT_FALSE(s.find(first.id, t0 + std::chrono::seconds(3)));
}

TEST(web_sessions, cookie_header_and_set_cookie) {
  const std::string id(64, 'a');
  std::string alone = "__Host-cskit=";
  alone += id;
  std::string among = "x=1; ";
  among += alone;
  among += "; y=2";
  EXPECT_EQ(web_sessions::from_cookie_header(alone), id);
  EXPECT_EQ(web_sessions::from_cookie_header(among), id);
  EXPECT_EQ(web_sessions::from_cookie_header("x__Host-cskit=1"), "");
  EXPECT_EQ(web_sessions::from_cookie_header("__Host-cskitx=1"), "");
  EXPECT_EQ(web_sessions::from_cookie_header(""), "");
  const std::string set = web_sessions::set_cookie(id);
  EXPECT_TRUE(set.starts_with("Set-Cookie: __Host-cskit=")) << set;
  EXPECT_NE(set.find(id), std::string::npos);
  EXPECT_TRUE(set.ends_with("; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=43200\r\n")) << set;
  EXPECT_NE(web_sessions::clear_cookie().find("Max-Age=0"), std::string::npos);
}
