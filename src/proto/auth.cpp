#include "proto/auth.hpp"

// OpenSSL 3 marks the low-level SHA256_* functions deprecated in favour of
// EVP, but EVP's first use in a process loads the configuration file and the
// default provider and fetches the algorithm: about 1 ms, which is most of a
// fresh `cskit exec` round trip's budget. The low-level functions are the
// same implementation without that set-up (12 us for the first digest).
// docs/architecture.md, "Start-up cost", has the measurements.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace cskit::proto {
namespace {

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

void random_bytes(std::uint8_t* out, std::size_t size) {
  // The kernel's CSPRNG (what OpenSSL seeds from), without OpenSSL's DRBG
  // set-up (0.6 ms in a fresh process). Flags 0: block only until the pool
  // is initialised at boot, never return weak bytes.
  while (size > 0) {
    ssize_t n = ::getrandom(out, size, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("getrandom failed: no secure randomness available: ") +
                               std::strerror(errno));
    }
    out += n;
    size -= static_cast<std::size_t>(n);
  }
}

nonce random_nonce() {
  nonce n;
  random_bytes(n.data(), n.size());
  return n;
}

std::string random_hex(std::size_t n) {
  std::vector<std::uint8_t> bytes(n);
  random_bytes(bytes.data(), bytes.size());
  return to_hex(bytes.data(), bytes.size());
}

digest hmac_sha256(std::string_view key, std::string_view message) {
  // RFC 2104 with SHA-256 (block size 64): a key longer than a block is
  // hashed first; the key, zero-padded to a block, is XORed with 0x36
  // (inner) and 0x5c (outer).
  constexpr std::size_t block = 64;
  std::array<std::uint8_t, block> k{};
  SHA256_CTX ctx;
  if (key.size() > block) {
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, key.data(), key.size());
    SHA256_Final(k.data(), &ctx);
  } else {
    std::memcpy(k.data(), key.data(), key.size());
  }
  std::array<std::uint8_t, block> pad;
  digest inner{}, out{};
  for (std::size_t i = 0; i < block; ++i) pad[i] = k[i] ^ 0x36;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, pad.data(), pad.size());
  SHA256_Update(&ctx, message.data(), message.size());
  SHA256_Final(inner.data(), &ctx);
  for (std::size_t i = 0; i < block; ++i) pad[i] = k[i] ^ 0x5c;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, pad.data(), pad.size());
  SHA256_Update(&ctx, inner.data(), inner.size());
  SHA256_Final(out.data(), &ctx);
  OPENSSL_cleanse(k.data(), k.size());
  OPENSSL_cleanse(pad.data(), pad.size());
  OPENSSL_cleanse(&ctx, sizeof ctx);
  return out;
}

std::string to_hex(const std::uint8_t* data, std::size_t size) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s(size * 2, '\0');
  for (std::size_t i = 0; i < size; ++i) {
    s[2 * i] = digits[data[i] >> 4];
    s[2 * i + 1] = digits[data[i] & 0x0F];
  }
  return s;
}

template <std::size_t N>
std::optional<std::array<std::uint8_t, N>> from_hex(std::string_view hex) {
  if (hex.size() != 2 * N) return std::nullopt;
  std::array<std::uint8_t, N> out{};
  for (std::size_t i = 0; i < N; ++i) {
    int hi = hex_value(hex[2 * i]);
    int lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<std::uint8_t>((hi << 4) | lo);
  }
  return out;
}

template std::optional<std::array<std::uint8_t, 32>> from_hex<32>(std::string_view);

std::string_view to_wire(binding_kind k) noexcept { return k == binding_kind::tls_exporter ? "tls-exporter" : "nonces"; }

digest compute_proof(proof_role role, std::string_view token, std::string_view user, binding_kind kind,
                     std::string_view binding) {
  std::string msg = role == proof_role::client ? "cskit/2 client" : "cskit/2 server";
  msg += '\0';
  msg += user;
  msg += '\0';
  msg += to_wire(kind);
  msg += '\0';
  msg += binding;
  return hmac_sha256(token, msg);
}

std::string nonce_binding(const nonce& server_nonce, const nonce& client_nonce) {
  std::string b(reinterpret_cast<const char*>(server_nonce.data()), server_nonce.size());
  b.append(reinterpret_cast<const char*>(client_nonce.data()), client_nonce.size());
  return b;
}

std::string binding_check(std::string_view binding) {
  std::string msg = "cskit/2 binding";
  msg += '\0';
  msg += binding;
  digest d{};
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, msg.data(), msg.size());
  SHA256_Final(d.data(), &ctx);
  return to_hex(d.data(), 16);
}

bool proofs_equal(const digest& a, const digest& b) noexcept {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool is_valid_user_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > max_user_name) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace cskit::proto
