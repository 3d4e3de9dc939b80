// HTTP helpers of the HTTPS front end (proto/http.hpp).
#include "proto/http.hpp"

#include <gtest/gtest.h>

using namespace cskit::proto::http;

TEST(http_target, decodes_once_and_refuses_what_could_escape) {
  std::string why;
  EXPECT_EQ(target_path("/files/a%20b/c.txt?x=1", "/files/", why).value_or("?"), "a b/c.txt");
  EXPECT_EQ(target_path("/files/", "/files/", why).value_or("?"), "");
  EXPECT_EQ(target_path("/files", "/files/", why).value_or("?"), "");
  EXPECT_EQ(target_path("/files/%C3%A9t%C3%A9", "/files/", why).value_or("?"), "\xC3\xA9t\xC3\xA9");
  for (const char* bad : {"/other", "/filesx/a", "/files/a%2fb", "/files/a%2Fb", "/files/a%5cb", "/files/a\\b",
                          "/files/a%00", "/files/a%zz", "/files/a%2", "/files/%252e%252e%252f", "/files/%255c"}) {
    why.clear();
    EXPECT_FALSE(target_path(bad, "/files/", why)) << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
  // ".." is left for the share's own check, which refuses it.
  EXPECT_EQ(target_path("/files/%2e%2e/x", "/files/", why).value_or("?"), "../x");
}

TEST(http_range, single_ranges_as_rfc_9110_reads_them) {
  byte_range r;
  EXPECT_EQ(parse_range("bytes=0-99", 1000, r), range_result::ok);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.length, 100u);
  EXPECT_EQ(parse_range("bytes=900-", 1000, r), range_result::ok);
  EXPECT_EQ(r.length, 100u);
  EXPECT_EQ(parse_range("bytes=990-5000", 1000, r), range_result::ok);
  EXPECT_EQ(r.length, 10u);
  EXPECT_EQ(parse_range("bytes=-10", 1000, r), range_result::ok);
  EXPECT_EQ(r.first, 990u);
  EXPECT_EQ(parse_range("bytes=-5000", 1000, r), range_result::ok);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(parse_range("bytes=1000-", 1000, r), range_result::unsatisfiable);
  EXPECT_EQ(parse_range("bytes=-0", 1000, r), range_result::unsatisfiable);
  for (const char* ignored : {"", "items=0-1", "bytes=5-1", "bytes=a-b", "bytes=0-1,5-6", "bytes=-", "bytes=1"}) {
    EXPECT_EQ(parse_range(ignored, 1000, r), range_result::none) << ignored;
  }
}

TEST(http_date, round_trips_imf_fixdate) {
  EXPECT_EQ(format_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(parse_date("Sun, 06 Nov 1994 08:49:37 GMT").value_or(0), 784111777);
  EXPECT_FALSE(parse_date("Sunday, 06-Nov-94 08:49:37 GMT"));
  EXPECT_FALSE(parse_date("garbage"));
}

TEST(http_auth, basic_and_bearer) {
  auto c = parse_basic("Basic YWxpY2U6czNjcjN0OndpdGg6Y29sb25z");  // alice:s3cr3t:with:colons
  ASSERT_TRUE(c);
  EXPECT_EQ(c->user, "alice");
  EXPECT_EQ(c->secret, "s3cr3t:with:colons");
  EXPECT_EQ(parse_basic("basic YTpi")->secret, "b");  // a:b, scheme in any case
  EXPECT_FALSE(parse_basic("Basic !!!!"));
  EXPECT_FALSE(parse_basic("Basic YWJj"));  // no colon
  EXPECT_FALSE(parse_basic("Bearer abc"));
  EXPECT_EQ(parse_bearer("Bearer tok-123").value_or(""), "tok-123");
  EXPECT_FALSE(parse_bearer("Bearer "));
  EXPECT_FALSE(parse_bearer("Basic YTpi"));
}

TEST(http_media, types_by_extension) {
  EXPECT_EQ(media_type("a/b.TXT"), "text/plain; charset=utf-8");
  EXPECT_EQ(media_type("x.png"), "image/png");
  EXPECT_EQ(media_type("noext"), "application/octet-stream");
  EXPECT_EQ(media_type("dir.d/file"), "application/octet-stream");
  EXPECT_EQ(percent_encode_path("a b/é?"), "a%20b/%C3%A9%3F");
}

TEST(http_pieces, content_range_of_a_put) {
  auto r = parse_content_range("bytes 0-99/1000");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 0u);
  EXPECT_EQ(r->last, 99u);
  EXPECT_EQ(r->total, 1000u);
  EXPECT_EQ(parse_content_range("bytes 999-999/1000")->last, 999u);
  for (const char* bad : {"", "bytes 0-99/99", "bytes 5-4/10", "bytes */10", "bytes 0-9/*", "bytes=0-9/10",
                          "bytes 0-9", "items 0-9/10", "bytes a-9/10", "bytes 0-99999999999999999999/1",
                          "bytes -9/10", "bytes 0-/10"}) {
    EXPECT_FALSE(parse_content_range(bad)) << bad;
  }
}

TEST(http_pieces, content_digest_sha256) {
  // SHA-256("abc"), base64 and hex.
  const std::string hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  const std::string b64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
  EXPECT_EQ(content_digest_sha256("sha-256=:" + b64 + ":").value_or(""), hex);
  EXPECT_EQ(content_digest_sha256("sha-512=:AAAA:, sha-256=:" + b64 + ":").value_or(""), hex);
  EXPECT_FALSE(content_digest_sha256("sha-512=:AAAA:"));
  EXPECT_FALSE(content_digest_sha256("sha-256=:AAAA:"));          // not 32 bytes
  EXPECT_FALSE(content_digest_sha256("sha-256=:!!!!:"));          // not base64
  EXPECT_FALSE(content_digest_sha256("sha-256=" + b64));          // not a byte sequence
  EXPECT_FALSE(content_digest_sha256(""));
}

TEST(http_pieces, base64_both_ways) {
  EXPECT_EQ(base64_encode("abc"), "YWJj");
  EXPECT_EQ(base64_encode("ab"), "YWI=");
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_decode("YWI=").value_or("?"), "ab");
  EXPECT_EQ(base64_decode("YQ==").value_or("?"), "a");
  EXPECT_FALSE(base64_decode("YQ="));    // not a multiple of 4
  EXPECT_FALSE(base64_decode("Y==="));   // too much padding
  EXPECT_FALSE(base64_decode(""));
}
