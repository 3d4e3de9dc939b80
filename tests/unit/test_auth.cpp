#include "proto/auth.hpp"

#include <gtest/gtest.h>

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

TEST(auth, proof_matches_rfc4231_style_reference) {
  // Reference computed independently with Python:
  //   hmac.new(b"secret-token-123", b"cskit/1 client\0admin\0" + bytes(range(32)) + bytes(range(32,64)),
  //            hashlib.sha256).hexdigest()
  nonce s = fixed(0), c = fixed(32);
  EXPECT_EQ(to_hex(compute_proof(proof_role::client, "secret-token-123", "admin", s, c)),
            "b4b3f4213784d7bd425e821fc7725cfb0c255d28ef451016e2fa790b9803559b");
}

TEST(auth, proofs_differ_by_role_user_token_and_nonces) {
  nonce s = fixed(0), c = fixed(32);
  auto base = compute_proof(proof_role::client, "tok-0123456789abcdef", "alice", s, c);
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::server, "tok-0123456789abcdef", "alice", s, c)));
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdeF", "alice", s, c)));
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdef", "alicf", s, c)));
  EXPECT_FALSE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdef", "alice", c, s)));
  EXPECT_TRUE(proofs_equal(base, compute_proof(proof_role::client, "tok-0123456789abcdef", "alice", s, c)));
}

TEST(auth, random_nonces_differ) {
  EXPECT_NE(random_nonce(), random_nonce());
  EXPECT_EQ(random_hex(32).size(), 64u);
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
