#include "net/tls.hpp"
#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

using namespace cskit::net::tls;

namespace {

using cskit::test::temp_dir;

void write_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

// A server identity written to files, as the server loads it.
struct identity_files {
  temp_dir dir;
  std::filesystem::path cert = dir.path / "server.crt";
  std::filesystem::path key = dir.path / "server.key";
  explicit identity_files(const std::string& name = "test-server") {
    auto pem = make_self_signed(name);
    write_file(cert, pem.cert);
    write_file(key, pem.key);
  }
};

// Moves every byte each side has to send to the other, in pieces of
// `chunk` bytes, until neither has anything left. Returns what the
// channels decrypted, per side.
struct pair_pump {
  channel& client;
  channel& server;
  std::size_t chunk = 1 << 20;
  std::string client_got, server_got;
  bool client_failed = false, server_failed = false;

  void drain(channel& ch, std::string& got, bool& failed) {
    char buf[4096];
    for (;;) {
      channel::result r;
      if (!ch.handshake_done()) {
        r = ch.handshake();
        if (r == channel::result::failed) failed = true;
        if (r != channel::result::ok) return;
      }
      std::size_t n = ch.read(buf, sizeof buf, r);
      if (r == channel::result::ok) {
        got.append(buf, n);
        continue;
      }
      if (r == channel::result::failed) failed = true;
      return;
    }
  }

  void move(channel& from, channel& to, std::string& got, bool& failed) {
    std::string bytes(from.output());
    from.consumed(bytes.size());
    for (std::size_t at = 0; at < bytes.size(); at += chunk) {
      to.feed(std::string_view(bytes).substr(at, chunk));
      drain(to, got, failed);
      ASSERT_FALSE(to.input_pending());
    }
  }

  void run() {
    drain(client, client_got, client_failed);  // ClientHello
    for (int round = 0; round < 16; ++round) {
      if (client.output().empty() && server.output().empty()) return;
      move(client, server, server_got, server_failed);
      move(server, client, client_got, client_failed);
    }
    FAIL() << "the channels never went quiet";
  }
};

}  // namespace

TEST(tls, fingerprint_format) {
  identity_files id;
  auto fp = fingerprint_of_pem_file(id.cert);
  ASSERT_TRUE(fp);
  EXPECT_TRUE(is_fingerprint(*fp)) << *fp;
  EXPECT_EQ(fp->size(), 7u + 43u);
  EXPECT_FALSE(is_fingerprint("SHA256:short"));
  EXPECT_FALSE(is_fingerprint("MD5:" + fp->substr(7)));
  EXPECT_FALSE(is_fingerprint(fp->substr(0, fp->size() - 1) + "="));
  EXPECT_FALSE(fingerprint_of_pem_file(id.dir.path / "missing.pem"));
  EXPECT_FALSE(fingerprint_of_pem_file(id.key));  // a key is not a certificate
  // Each identity is new.
  identity_files other;
  EXPECT_NE(*fingerprint_of_pem_file(other.cert), *fp);
}

TEST(tls, handshake_data_and_binding) {
  identity_files id;
  auto sctx = context::for_server({id.cert, id.key});
  auto cctx = context::for_client({});
  EXPECT_EQ(sctx->fingerprint(), *fingerprint_of_pem_file(id.cert));
  EXPECT_EQ(sctx->expires(), "never");
  channel server(sctx), client(cctx, "127.0.0.1");
  pair_pump pump{client, server};
  pump.run();
  ASSERT_FALSE(pump.client_failed) << client.error_text();
  ASSERT_FALSE(pump.server_failed) << server.error_text();
  ASSERT_TRUE(client.handshake_done());
  ASSERT_TRUE(server.handshake_done());
  EXPECT_EQ(client.peer_fingerprint(), sctx->fingerprint());
  EXPECT_EQ(client.alpn(), "cskit");
  EXPECT_EQ(client.exporter(), server.exporter());
  EXPECT_NE(client.description().find("TLSv1.3"), std::string::npos) << client.description();
  EXPECT_NE(client.description().find("X25519"), std::string::npos) << client.description();

  // Data both ways, in one record and in many, fed one byte at a time.
  std::string big(300 * 1024, '\0');
  std::mt19937 rng(7);
  for (auto& c : big) c = static_cast<char>(rng());
  ASSERT_TRUE(client.write("hello server"));
  ASSERT_TRUE(server.write(big));
  pump.chunk = 1;
  pump.run();
  pump.chunk = 1 << 20;
  EXPECT_EQ(pump.server_got, "hello server");
  EXPECT_EQ(pump.client_got, big);

  // A second connection exports a different binding.
  channel server2(sctx), client2(cctx, "127.0.0.1");
  pair_pump pump2{client2, server2};
  pump2.run();
  EXPECT_NE(client2.exporter(), client.exporter());

  // close_notify reads as `closed`.
  client.close_notify();
  const std::string alert(client.output());
  client.consumed(alert.size());
  server.feed(alert);
  char buf[16];
  channel::result r;
  EXPECT_EQ(server.read(buf, sizeof buf, r), 0u);
  EXPECT_EQ(r, channel::result::closed) << server.error_text();
}

TEST(tls, output_buffer_is_released) {
  identity_files id;
  auto sctx = context::for_server({id.cert, id.key});
  auto cctx = context::for_client({});
  channel server(sctx), client(cctx);
  pair_pump pump{client, server};
  pump.run();
  ASSERT_TRUE(client.write(std::string(100000, 'x')));
  EXPECT_GT(client.output().size(), 100000u);
  client.consumed(1000);
  client.release_buffers();  // not empty: kept
  EXPECT_GT(client.output().size(), 99000u);
  client.consumed(client.output().size());
  client.release_buffers();
  EXPECT_TRUE(client.output().empty());
}

TEST(tls, garbage_fails_the_handshake) {
  identity_files id;
  channel server(context::for_server({id.cert, id.key}));
  std::string junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  server.feed(junk);
  EXPECT_EQ(server.handshake(), channel::result::failed);
  EXPECT_FALSE(server.error_text().empty());
}

TEST(tls, truncated_record_waits_for_more) {
  identity_files id;
  auto sctx = context::for_server({id.cert, id.key});
  channel server(sctx), client(context::for_client({}));
  ASSERT_EQ(client.handshake(), channel::result::want_input);
  std::string hello(client.output());
  server.feed(std::string_view(hello).substr(0, hello.size() / 2));
  EXPECT_EQ(server.handshake(), channel::result::want_input);
  server.feed(std::string_view(hello).substr(hello.size() / 2));
  EXPECT_EQ(server.handshake(), channel::result::want_input);  // its flight is out; waits for Finished
  EXPECT_FALSE(server.output().empty());
}

TEST(tls, verify_chain_against_a_ca) {
  // Pinned self-signed: no CA vouches for it, so the chain does not verify.
  identity_files id;
  auto sctx = context::for_server({id.cert, id.key});
  channel server(sctx), client(context::for_client({}), "localhost");
  pair_pump pump{client, server};
  pump.run();
  ASSERT_TRUE(client.handshake_done());
  EXPECT_FALSE(client.verify_chain(id.dir.path / "missing.pem").empty());
  // A self-signed certificate the user trusts explicitly is its own anchor
  // (it names localhost); another one is not.
  EXPECT_EQ(client.verify_chain(id.cert), "");
  identity_files other;
  EXPECT_NE(client.verify_chain(other.cert), "");
}

TEST(tls, server_refuses_bad_identities) {
  identity_files a, b;
  // mismatched key
  try {
    context::for_server({a.cert, b.key});
    FAIL() << "mismatched key accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
  }
  // missing file
  try {
    context::for_server({a.dir.path / "nope.crt", a.key});
    FAIL() << "missing certificate accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
  // not a certificate
  try {
    context::for_server({a.key, a.key});
    FAIL() << "key as certificate accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("no PEM certificate"), std::string::npos) << e.what();
  }
}

TEST(tls, describe_non_tls) {
  EXPECT_EQ(describe_non_tls(std::string("\x16\x03\x03\x00\x10", 5)), "");
  EXPECT_NE(describe_non_tls(std::string("\0\0\0\x20{\"type\":\"hello\"}", 20)).find("without TLS"), std::string::npos);
  EXPECT_NE(describe_non_tls("SSH-2.0-OpenSSH_9.2\r\n").find("does not speak TLS"), std::string::npos);
}
