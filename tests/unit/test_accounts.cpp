// Accounts: the users file (parse, format, round trip), how a config
// becomes accounts, what a reload closes, --perm changes, and what needs a
// restart.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "server/accounts.hpp"
#include "server/reload.hpp"
#include "server/user_admin.hpp"
#include "temp_dir.hpp"

using namespace cskit::server;
using cskit::proto::permission;
using cskit::proto::permission_set;
using cskit::test::temp_dir;

namespace {

permission_set perms(std::initializer_list<permission> ps) {
  permission_set s;
  for (auto p : ps) s.add(p);
  return s;
}

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const config_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(users_file, round_trips_and_escapes) {
  std::vector<user_account> users{{"bob", "tok\"en\\with-0123456789\n", perms({permission::chat}), ""},
                                  {"admin", "", perms({permission::exec, permission::files_read}), ""}};
  const std::string text = format_users_file(users);
  const auto back = parse_users_file(text, "users.toml");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].name, "bob");
  EXPECT_EQ(back[0].token, users[0].token);
  EXPECT_EQ(back[0].permissions, users[0].permissions);
  EXPECT_EQ(back[0].origin, "users.toml:5");
  EXPECT_EQ(back[1].token, "");  // admin without a token: the generated one
  EXPECT_EQ(back[1].permissions, users[1].permissions);
}

TEST(users_file, holds_users_only_and_each_once) {
  EXPECT_NE(error_of([] { parse_users_file("[server]\nlisten = \"x\"\n", "u.toml"); }).find("[[users]] entries only"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              parse_users_file("[[users]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\n[[users]]\nname = \"a\"\n"
                               "token = \"0123456789abcdef\"\n",
                               "u.toml");
            }).find("defined twice"),
            std::string::npos);
  // Only admin may go without a token.
  EXPECT_NE(error_of([] { parse_users_file("[[users]]\nname = \"bob\"\n", "u.toml"); }).find("no 'token'"),
            std::string::npos);
}

TEST(accounts, default_admin_config_users_and_the_users_file) {
  temp_dir d;
  server_config c;
  c.state_dir = d.path / "state";
  c.users_file = d.path / "users.toml";
  // Nothing declared: the default admin with a generated token.
  auto a = load_accounts(c);
  ASSERT_EQ(a.table->all().size(), 1u);
  auto admin = a.table->find("admin");
  ASSERT_TRUE(admin);
  EXPECT_EQ(admin->token.size(), 64u);
  EXPECT_TRUE(a.admin_uses_generated_token);
  // The users file adds to it; an admin entry there changes the admin's
  // permissions and keeps its token.
  {
    std::ofstream(c.users_file) << format_users_file(
        {{"bob", "bob-token-0123456789", perms({permission::chat}), ""},
         {"admin", "", perms({permission::exec}), ""}});
  }
  ::chmod(c.users_file.c_str(), 0640);
  a = load_accounts(c);
  ASSERT_EQ(a.table->all().size(), 2u);
  EXPECT_EQ(a.table->find("admin")->token, admin->token);
  EXPECT_EQ(a.table->find("admin")->permissions, perms({permission::exec}));
  EXPECT_EQ(a.table->find("bob")->token, "bob-token-0123456789");
  // Users in the config replace the default admin.
  c.users.push_back({"carol", "carol-token-0123456789", perms({permission::chat}), "cskit.toml:3"});
  a = load_accounts(c);
  EXPECT_EQ(a.table->all().size(), 3u);  // carol, bob, and the admin the file declares
  {
    std::ofstream(c.users_file) << format_users_file({{"bob", "bob-token-0123456789", perms({permission::chat}), ""}});
  }
  a = load_accounts(c);
  EXPECT_EQ(a.table->all().size(), 2u);
  EXPECT_FALSE(a.table->find("admin"));  // no default admin beside the config's users
  EXPECT_FALSE(a.admin_uses_generated_token);
  // A name in both places is an error naming both.
  c.users.push_back({"bob", "other-token-0123456789", {}, "cskit.toml:9"});
  EXPECT_NE(error_of([&] { load_accounts(c); }).find("is declared in cskit.toml:9 already"), std::string::npos);
  // A users file others may read is refused.
  c.users.clear();
  ::chmod(c.users_file.c_str(), 0644);
  EXPECT_NE(error_of([&] { load_accounts(c); }).find("every user may read it"), std::string::npos);
}

TEST(accounts, what_a_reload_closes) {
  const user_account before{"bob", "token-0123456789abcd", perms({permission::chat, permission::files_read}), ""};
  EXPECT_EQ(account_change(before, &before), "");
  user_account more = before;
  more.permissions.add(permission::exec);
  EXPECT_EQ(account_change(before, &more), "");  // given more: goes on
  EXPECT_NE(account_change(before, nullptr).find("was removed"), std::string::npos);
  user_account rotated = before;
  rotated.token = "another-token-0123456789";
  EXPECT_NE(account_change(before, &rotated).find("token of 'bob' was replaced"), std::string::npos);
  user_account fewer = before;
  fewer.permissions.remove(permission::files_read);
  EXPECT_NE(account_change(before, &fewer).find("'files-read' permission of 'bob' was withdrawn"), std::string::npos);
}

TEST(accounts, permission_changes) {
  const auto base = perms({permission::files_read, permission::chat});
  EXPECT_EQ(parse_permission_change("exec", base), perms({permission::exec}));
  EXPECT_EQ(parse_permission_change("+exec", base), perms({permission::files_read, permission::chat, permission::exec}));
  EXPECT_EQ(parse_permission_change("-chat,+files-write", base),
            perms({permission::files_read, permission::files_write}));
  EXPECT_EQ(parse_permission_change("-chat,-files-read", base), permission_set{});
  EXPECT_THROW(parse_permission_change("", base), config_error);
  EXPECT_THROW(parse_permission_change("exec,+chat", base), config_error);
  EXPECT_THROW(parse_permission_change("+root", base), config_error);
  EXPECT_THROW(parse_permission_change("exec,", base), config_error);
}

TEST(reload, names_what_needs_a_restart) {
  server_config a;
  server_config b = a;
  b.max_connections = 5;
  b.idle_timeout = std::chrono::seconds(9);
  b.files.max_file_size = 1;
  b.exec.max_concurrent = 2;
  b.log_level = "debug";
  EXPECT_TRUE(changes_needing_restart(a, b).empty());
  b.listen = "0.0.0.0:1";
  b.tls.plaintext = true;
  b.exec.enabled = true;
  b.files.quota = 10;
  EXPECT_EQ(changes_needing_restart(a, b),
            (std::vector<std::string>{"listen", "[tls]", "[files] quota (turned on or off)",
                                      "[exec] (apart from max_concurrent and max_concurrent_per_user)"}));
}

TEST(user_admin, writes_atomically_with_the_config_group) {
  temp_dir d;
  const auto config_file = d.path / "cskit.toml";
  { std::ofstream(config_file) << "# mine\n"; }
  // The group the server runs as, when packaged (root can give any).
  const gid_t group = ::geteuid() == 0 ? 4242 : ::getegid();
  ASSERT_EQ(::chown(config_file.c_str(), static_cast<uid_t>(-1), group), 0);
  server_config c;
  c.state_dir = d.path / "state";
  c.users_file = d.path / "users.toml";
  user_admin admin(c, config_file);
  const std::string token = admin.add("bob", perms({permission::chat}));
  EXPECT_EQ(token.size(), 64u);
  struct stat st {};
  ASSERT_EQ(::stat(c.users_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(st.st_gid, group);
  // No temporary file is left beside it.
  std::size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(d.path)) files += e.is_regular_file();
  EXPECT_EQ(files, 2u);
  EXPECT_EQ(load_users_file(c.users_file).at(0).token, token);
  // A later change keeps the file's mode.
  ::chmod(c.users_file.c_str(), 0600);
  admin.set_permissions("bob", "+files-read");
  ASSERT_EQ(::stat(c.users_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(load_users_file(c.users_file).at(0).permissions, perms({permission::chat, permission::files_read}));
}

TEST(user_admin, refuses_a_symlinked_users_file) {
  temp_dir d;
  server_config c;
  c.state_dir = d.path / "state";
  c.users_file = d.path / "users.toml";
  { std::ofstream(d.path / "real.toml") << ""; }
  ::chmod((d.path / "real.toml").c_str(), 0600);
  std::filesystem::create_symlink(d.path / "real.toml", c.users_file);
  user_admin admin(c, {});
  EXPECT_NE(error_of([&] { admin.add("bob", perms({permission::chat})); }).find("symbolic link"), std::string::npos);
  EXPECT_TRUE(std::filesystem::is_symlink(c.users_file));
}

TEST(users_file, others_may_neither_read_nor_change_it) {
  temp_dir d;
  const auto path = d.path / "users.toml";
  { std::ofstream(path) << format_users_file({{"bob", "bob-token-0123456789", perms({permission::chat}), ""}}); }
  ::chmod(path.c_str(), 0602);
  EXPECT_NE(error_of([&] { load_users_file(path); }).find("every user may change it"), std::string::npos);
  ::chmod(path.c_str(), 0640);
  EXPECT_EQ(load_users_file(path).size(), 1u);
}
