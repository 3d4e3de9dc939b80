#include "proto/auth.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace cskit::proto;

namespace {
nonce fixed(std::uint8_t start) {
  nonce n;
  for (std::size_t i = 0; i < n.size(); ++i) n[i] = static_cast<std::uint8_t>(start + i);
  return n;
}
}  // namespace

TEST(auth, hex_round_trip) {
  nonce n = fixed(0xF0);
  std::string hex = to_hex(n);
  EXPECT_EQ(hex.size(), 64u);
  EXPECT_EQ(hex.substr(0, 4), "f0f1");
  auto back = from_hex<32>(hex);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, n);
  std::string upper = hex;
  for (auto& c : upper) c = static_cast<char>(std::toupper(c));
  EXPECT_EQ(from_hex<32>(upper), n);
}

TEST(auth, hex_rejects_bad_input) {
  EXPECT_FALSE(from_hex<32>(""));
  EXPECT_FALSE(from_hex<32>(std::string(63, 'a')));
  EXPECT_FALSE(from_hex<32>(std::string(66, 'a')));
  EXPECT_FALSE(from_hex<32>(std::string(63, 'a') + "g"));
}

TEST(auth, proof_matches_reference_vectors) {
  // References computed independently with Python (docs/protocol.md has them too):
  //   hmac.new(b"secret-token-123", b"cskit/2 client\0admin\0nonces\0" + bytes(range(32)) + bytes(range(32,64)),
  //            hashlib.sha256).hexdigest()
  nonce s = fixed(0), c = fixed(32);
  EXPECT_EQ(to_hex(compute_proof(proof_role::client, "secret-token-123", "admin", binding_kind::nonces,
                                 nonce_binding(s, c))),
            "e324be6a12fd667300c3c5727bee6198245c317844d42ddbc3f3efe0337de346");
  //   hmac.new(b"secret-token-123", b"cskit/2 server\0admin\0tls-exporter\0" + bytes(range(100,132)), ...)
  std::string exporter;
  for (int i = 100; i < 132; ++i) exporter += static_cast<char>(i);
  EXPECT_EQ(to_hex(compute_proof(proof_role::server, "secret-token-123", "admin", binding_kind::tls_exporter, exporter)),
            "e700101aaf7b2bc5aa40844ef28e8edec9964bd5303d2c4b9f84a02e3e022012");
  //   hashlib.sha256(b"cskit/2 binding\0" + bytes(range(100,132))).hexdigest()[:32]
  EXPECT_EQ(binding_check(exporter), "09e54f7c11de0fc2ce48e8f4ef65b4bf");
}

TEST(auth, hmac_sha256_rfc4231_vectors) {
  // RFC 4231 test cases 1, 2, 3, 6 and 7 (6 and 7: keys longer than a
  // block), plus a key of exactly one block.
  EXPECT_EQ(to_hex(hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(to_hex(hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(to_hex(hmac_sha256(std::string(20, '\xaa'), std::string(50, '\xdd'))),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  EXPECT_EQ(to_hex(hmac_sha256(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(to_hex(hmac_sha256(std::string(131, '\xaa'),
                               "This is a test using a larger than block-size key and a larger than block-size "
                               "data. The key needs to be hashed before being used by the HMAC algorithm.")),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
  EXPECT_EQ(to_hex(hmac_sha256(std::string(64, 'k'), "exactly one block of key")),
            "baa93ea4ccc7062ed6870c5e7937dbd35ad7791df4e29df9addeb429ff491acf");
}

TEST(auth, proofs_differ_by_role_user_token_and_binding) {
  nonce s = fixed(0), c = fixed(32);
  const auto b = nonce_binding(s, c);
  const auto kind = binding_kind::nonces;
  auto base = compute_proof(proof_role::client, "tok-0123456789abcdef", "alice", kind, b);
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::server, "tok-0123456789abcdef", "alice", kind, b)));
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdeF", "alice", kind, b)));
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdef", "alicf", kind, b)));
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdef", "alice", kind,
                                                nonce_binding(c, s))));
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdef", "alice",
                                                binding_kind::tls_exporter, b)));
  EXPECT_TRUE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdef", "alice", kind, b)));
}

TEST(auth, random_nonces_differ) {
  EXPECT_NE(random_nonce(), random_nonce());
  EXPECT_EQ(random_hex(32).size(), 64u);
  // More than getrandom's 256-byte single-call guarantee: filled completely.
  std::vector<std::uint8_t> big(4096, 0);
  random_bytes(big.data(), big.size());
  std::size_t zeros = 0;
  for (auto b : big) zeros += b == 0;
  EXPECT_LT(zeros, 64u);  // expected about 16
}

TEST(auth, user_names) {
  EXPECT_TRUE(is_valid_user_name("admin"));
  EXPECT_TRUE(is_valid_user_name("a.b_c-D9"));
  EXPECT_FALSE(is_valid_user_name(""));
  EXPECT_FALSE(is_valid_user_name("has space"));
  EXPECT_FALSE(is_valid_user_name(std::string_view("nul\0x", 5)));
  EXPECT_FALSE(is_valid_user_name(std::string(65, 'a')));
  EXPECT_TRUE(is_valid_user_name(std::string(64, 'a')));
  EXPECT_FALSE(is_valid_user_name("用户"));
}
