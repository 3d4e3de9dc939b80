#include "server/config.hpp"
#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

using namespace cskit::server;
using cskit::proto::permission;

namespace {
std::string config_error_of(const std::string& text) {
  try {
    parse_config(text, "test.toml");
  } catch (const config_error& e) {
    return e.what();
  }
  return "";
}

using cskit::test::temp_dir;

}  // namespace

TEST(config, parses_a_full_file) {
  auto c = parse_config(R"(
[server]
listen = "0.0.0.0:9000"
root = "/srv/share"
name = "box"
threads = 4
max_connections = 500
idle_timeout = 60
handshake_timeout = 5
frame_timeout = 7
grace = 3
log_level = "debug"

[[users]]
name = "alice"
token = "0123456789abcdef0123"
permissions = ["files-read", "files-write", "exec"]

[[users]]
name = "bob"
token = "bob-token-is-long-enough"
permissions = []
)",
                        "t.toml");
  EXPECT_EQ(c.listen, "0.0.0.0:9000");
  EXPECT_EQ(c.root, "/srv/share");
  EXPECT_EQ(c.name, "box");
  EXPECT_EQ(c.threads, 4u);
  EXPECT_EQ(c.max_connections, 500u);
  EXPECT_EQ(c.idle_timeout.count(), 60);
  EXPECT_EQ(c.handshake_timeout.count(), 5);
  EXPECT_EQ(c.frame_timeout.count(), 7);
  EXPECT_EQ(c.grace.count(), 3);
  EXPECT_EQ(c.log_level, "debug");
  ASSERT_EQ(c.users.size(), 2u);
  EXPECT_EQ(c.users[0].name, "alice");
  EXPECT_TRUE(c.users[0].permissions.has(permission::exec));
  EXPECT_FALSE(c.users[0].permissions.has(permission::chat));
  EXPECT_FALSE(c.users[1].permissions.has(permission::files_read));
}

TEST(config, empty_file_gives_defaults) {
  auto c = parse_config("", "t.toml");
  EXPECT_EQ(c.listen, "127.0.0.1:7701");
  EXPECT_TRUE(c.users.empty());
  EXPECT_EQ(c.idle_timeout.count(), 300);
}

TEST(config, errors_name_the_line_and_problem) {
  EXPECT_NE(config_error_of("[server]\nlisten = 5\n").find("test.toml:2"), std::string::npos);
  EXPECT_NE(config_error_of("[server]\nthreads = -1\n").find("threads"), std::string::npos);
  EXPECT_NE(config_error_of("[server]\nlisen = \"x\"\n").find("unknown key 'lisen'"), std::string::npos);
  EXPECT_NE(config_error_of("[[users]]\nname = \"a\"\ntoken = \"short\"\n").find("at least 16"), std::string::npos);
  EXPECT_NE(config_error_of("[[users]]\nname = \"a b\"\ntoken = \"0123456789abcdef\"\n").find("user name"),
            std::string::npos);
  EXPECT_NE(config_error_of("[[users]]\nname = \"a\"\n").find("no 'token'"), std::string::npos);
  EXPECT_NE(config_error_of("[[users]]\ntoken = \"0123456789abcdef\"\n").find("no 'name'"), std::string::npos);
  EXPECT_NE(config_error_of("[[users]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\npermissions = [\"root\"]\n")
                .find("unknown permission"),
            std::string::npos);
  EXPECT_NE(config_error_of("[[users]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\n"
                            "[[users]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\n")
                .find("defined twice"),
            std::string::npos);
  EXPECT_NE(config_error_of("this is not toml").find("test.toml:1"), std::string::npos);
  EXPECT_NE(config_error_of("[other]\n").find("unknown top-level key"), std::string::npos);
}

TEST(config, default_admin_never_has_exec) {
  auto p = default_admin_permissions();
  EXPECT_FALSE(p.has(permission::exec));
  EXPECT_TRUE(p.has(permission::files_read));
  EXPECT_TRUE(p.has(permission::files_write));
  EXPECT_TRUE(p.has(permission::chat));
}

TEST(config, admin_token_generated_once_with_mode_0600) {
  temp_dir d;
  bool generated = false;
  std::string t1 = load_or_create_admin_token(d.path / "state", "", generated);
  EXPECT_TRUE(generated);
  EXPECT_EQ(t1.size(), 64u);
  struct stat st {};
  ASSERT_EQ(::stat((d.path / "state/admin.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string t2 = load_or_create_admin_token(d.path / "state", "", generated);
  EXPECT_FALSE(generated);
  EXPECT_EQ(t1, t2);
}

TEST(config, admin_token_from_environment_wins_and_is_checked) {
  temp_dir d;
  bool generated = true;
  EXPECT_EQ(load_or_create_admin_token(d.path, "env-token-0123456789", generated), "env-token-0123456789");
  EXPECT_FALSE(generated);
  EXPECT_FALSE(std::filesystem::exists(d.path / "admin.token"));
  EXPECT_THROW(load_or_create_admin_token(d.path, "short", generated), config_error);
}

TEST(config, refuses_a_token_file_others_can_read) {
  temp_dir d;
  {
    std::ofstream(d.path / "admin.token") << "0123456789abcdef0123456789abcdef\n";
  }
  ::chmod((d.path / "admin.token").c_str(), 0644);
  bool generated;
  try {
    load_or_create_admin_token(d.path, "", generated);
    FAIL() << "expected config_error";
  } catch (const config_error& e) {
    EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos);
  }
}
