#include "net/endpoint.hpp"

#include <gtest/gtest.h>

using cskit::net::format_host_port;
using cskit::net::parse_host_port;

TEST(endpoint, parses_the_host_forms) {
  auto a = parse_host_port("example.org", 7701);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->host, "example.org");
  EXPECT_EQ(a->port, 7701);
  auto b = parse_host_port("127.0.0.1:9000", 7701);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "127.0.0.1");
  EXPECT_EQ(b->port, 9000);
  auto c = parse_host_port("[::1]:8080", 7701);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(c->port, 8080);
  auto d = parse_host_port("[fe80::1%eth0]", 7701);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->host, "fe80::1%eth0");
  EXPECT_EQ(d->port, 7701);
  auto e = parse_host_port("::1", 7701);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->host, "::1");
  auto f = parse_host_port("localhost:0", 7701);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->port, 0);
}

TEST(endpoint, rejects_bad_forms_with_a_reason) {
  std::string why;
  for (const char* bad : {"", ":80", "host:", "host:65536", "host:-1", "host:8x", "[::1", "[::1]x", "[]:80",
                          "[1.2.3.4]:80", "bad host", "a/b:80", "host:123456"}) {
    why.clear();
    EXPECT_FALSE(parse_host_port(bad, 7701, &why)) << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
}

TEST(endpoint, formats_with_brackets_for_ipv6) {
  EXPECT_EQ(format_host_port("::1", 7701), "[::1]:7701");
  EXPECT_EQ(format_host_port("127.0.0.1", 1), "127.0.0.1:1");
}
