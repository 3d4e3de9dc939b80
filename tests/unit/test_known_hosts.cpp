#include "client/known_hosts.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "net/tls.hpp"
#include "server/config.hpp"
#include "server/identity.hpp"
#include "temp_dir.hpp"

using namespace cskit;

namespace {

using cskit::test::temp_dir;

const std::string fp_a = "SHA256:PSKUr70hzc53QzycktrCx+akl5NWaOSjGlwPzWdQz3k";
const std::string fp_b = "SHA256:dq5NiokqtEIkaKmNzTjrzpu9CCfCKBR7f7pAVoxVdys";

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

unsigned mode_of(const std::filesystem::path& p) {
  struct stat st {};
  ::stat(p.c_str(), &st);
  return st.st_mode & 07777;
}

}  // namespace

TEST(known_hosts, keys) {
  EXPECT_EQ(client::known_host_key("Files.Example.ORG", 7701), "files.example.org:7701");
  EXPECT_EQ(client::known_host_key("127.0.0.1", 17), "127.0.0.1:17");
  EXPECT_EQ(client::known_host_key("::1", 7701), "[::1]:7701");
  EXPECT_EQ(client::known_host_key("FE80::1", 1), "[fe80::1]:1");
}

TEST(known_hosts, lookup) {
  temp_dir d;
  const auto file = d.path / "known_hosts";
  using st = client::known_host_result::status;
  EXPECT_EQ(client::lookup_known_host(file, "h:1", fp_a).state, st::unknown);  // no file yet
  std::ofstream(file) << "# comment\n"
                         "\n"
                         "   \t\n"
                         "garbage line\n"
                         "h:1 SHA256:tooshort\n"
                         "H:1 " << fp_b << "\n"
                         "other:1\t" << fp_a << "   a comment here\n"
                         "  h:1 " << fp_a << "\n";
  auto r = client::lookup_known_host(file, "h:1", fp_a);
  EXPECT_EQ(r.state, st::match);  // any entry of the host may hold it; case-insensitive host
  EXPECT_EQ(r.line, 8u);
  EXPECT_EQ(r.bad_lines, (std::vector<std::size_t>{4, 5}));
  r = client::lookup_known_host(file, "h:1", "SHA256:" + std::string(43, 'x'));
  EXPECT_EQ(r.state, st::mismatch);
  EXPECT_EQ(r.line, 6u);  // the first entry
  EXPECT_EQ(r.stored, fp_b);
  EXPECT_EQ(client::lookup_known_host(file, "other:1", fp_a).state, st::match);
  EXPECT_EQ(client::lookup_known_host(file, "h:2", fp_a).state, st::unknown);  // the port matters
}

TEST(known_hosts, add_creates_private_files_and_appends_on_a_new_line) {
  temp_dir d;
  const auto file = d.path / "cfg" / "cskit" / "known_hosts";
  client::add_known_host(file, "a:1", fp_a);
  EXPECT_EQ(read_all(file), "a:1 " + fp_a + "\n");
  EXPECT_EQ(mode_of(file), 0600u);
  EXPECT_EQ(mode_of(file.parent_path()), 0700u);
  {
    std::ofstream out(file, std::ios::app);
    out << "b:1 " << fp_b;  // no newline at the end
  }
  client::add_known_host(file, "c:1", fp_a);
  EXPECT_EQ(read_all(file), "a:1 " + fp_a + "\nb:1 " + fp_b + "\nc:1 " + fp_a + "\n");
  EXPECT_EQ(client::lookup_known_host(file, "b:1", fp_b).state, client::known_host_result::status::match);
}

TEST(server_identity, generated_once_private_and_reused) {
  temp_dir d;
  const auto state = d.path / "state";
  auto first = server::ensure_default_identity(state, "box.example");
  EXPECT_TRUE(first.generated);
  EXPECT_EQ(mode_of(first.key), 0600u);
  EXPECT_EQ(mode_of(first.cert), 0600u);
  EXPECT_EQ(mode_of(state), 0700u);
  const auto fp = net::tls::fingerprint_of_pem_file(first.cert);
  ASSERT_TRUE(fp);
  auto again = server::ensure_default_identity(state, "box.example");
  EXPECT_FALSE(again.generated);
  EXPECT_EQ(net::tls::fingerprint_of_pem_file(again.cert), fp);
  // The server loads it.
  auto ctx = net::tls::context::for_server({again.cert, again.key});
  EXPECT_EQ(ctx->fingerprint(), *fp);
  EXPECT_EQ(ctx->expires(), "never");
}

TEST(server_identity, lost_certificate_is_made_again_for_the_same_key) {
  temp_dir d;
  auto files = server::ensure_default_identity(d.path, "box");
  const auto fp = net::tls::fingerprint_of_pem_file(files.cert);
  std::filesystem::remove(files.cert);
  auto again = server::ensure_default_identity(d.path, "box");
  EXPECT_TRUE(again.generated);
  EXPECT_EQ(net::tls::fingerprint_of_pem_file(again.cert), fp);  // pinned clients still match
}

TEST(server_identity, lost_key_or_loose_permissions_stop_the_server) {
  temp_dir d;
  auto files = server::ensure_default_identity(d.path, "box");
  ::chmod(files.key.c_str(), 0644);
  EXPECT_THROW(server::ensure_default_identity(d.path, "box"), server::config_error);
  std::filesystem::remove(files.key);
  try {
    server::ensure_default_identity(d.path, "box");
    FAIL() << "a certificate without its key was accepted";
  } catch (const server::config_error& e) {
    EXPECT_NE(std::string(e.what()).find("is missing"), std::string::npos) << e.what();
  }
}

TEST(server_identity, a_name_that_is_no_dns_name) {
  temp_dir d;
  auto files = server::ensure_default_identity(d.path, "my box (lab)");
  EXPECT_TRUE(net::tls::fingerprint_of_pem_file(files.cert));
}

TEST(config, tls_table) {
  auto c = server::parse_config("[tls]\ncert = \"/a.pem\"\nkey = \"/k.pem\"\nkernel_tls = \"off\"\n", "t.toml");
  EXPECT_EQ(c.tls.cert, "/a.pem");
  EXPECT_EQ(c.tls.key, "/k.pem");
  EXPECT_EQ(c.tls.kernel_tls, "off");
  EXPECT_FALSE(c.tls.plaintext);
  EXPECT_TRUE(server::parse_config("[tls]\nplaintext = true\n", "t.toml").tls.plaintext);
  EXPECT_THROW(server::parse_config("[tls]\ncert = \"/a.pem\"\n", "t.toml"), server::config_error);
  EXPECT_THROW(server::parse_config("[tls]\nkernel_tls = \"maybe\"\n", "t.toml"), server::config_error);
  EXPECT_THROW(server::parse_config("[tls]\nciphers = \"ALL\"\n", "t.toml"), server::config_error);
}
