#pragma once
// Mutual authentication proofs (docs/protocol.md, "Handshake").
//
// Neither side ever sends the token. Each proves knowledge of it with
//   client_proof = HMAC-SHA256(token, "cskit/2 client" 0x00 user 0x00 kind 0x00 binding)
//   server_proof = HMAC-SHA256(token, "cskit/2 server" 0x00 user 0x00 kind 0x00 binding)
// bound to the channel they travel on: over TLS, `kind` is "tls-exporter"
// and `binding` the connection's RFC 9266 exporter value (32 bytes), so a
// relay that terminates TLS on both sides cannot pass a proof through;
// over cleartext (an explicit opt-in), `kind` is "nonces" and `binding`
// the server's then the client's fresh 32-byte nonce. Distinct labels stop
// a proof from one direction being replayed in the other.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/limits.hpp"

namespace cskit::proto {

using nonce = std::array<std::uint8_t, nonce_size>;
using digest = std::array<std::uint8_t, 32>;

/// `size` bytes from the kernel's CSPRNG (getrandom); throws if it fails.
void random_bytes(std::uint8_t* out, std::size_t size);

/// A fresh nonce from the kernel's CSPRNG; throws if it fails.
nonce random_nonce();

/// `n` random bytes as lowercase hex (for generated tokens).
std::string random_hex(std::size_t n);

std::string to_hex(const std::uint8_t* data, std::size_t size);
template <std::size_t N>
std::string to_hex(const std::array<std::uint8_t, N>& a) {
  return to_hex(a.data(), a.size());
}

/// Decodes exactly N bytes of hex (either case); nullopt on any other input.
template <std::size_t N>
std::optional<std::array<std::uint8_t, N>> from_hex(std::string_view hex);

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
digest hmac_sha256(std::string_view key, std::string_view message);

enum class proof_role { client, server };

/// What a proof is bound to.
enum class binding_kind { tls_exporter, nonces };
std::string_view to_wire(binding_kind k) noexcept;

digest compute_proof(proof_role role, std::string_view token, std::string_view user, binding_kind kind,
                     std::string_view binding);

/// The cleartext binding: server nonce, then client nonce.
std::string nonce_binding(const nonce& server_nonce, const nonce& client_nonce);

/// What the client sends as `auth.binding` over TLS, so that a server can
/// tell a relay from a wrong token in its log: the first 16 bytes of
/// SHA-256("cskit/2 binding" 0x00 exporter), as hex. It reveals nothing
/// about the exporter value, which both ends of a relay know anyway.
std::string binding_check(std::string_view binding);

/// Constant-time comparison (CRYPTO_memcmp).
bool proofs_equal(const digest& a, const digest& b) noexcept;

/// User names: 1..max_user_name characters from [A-Za-z0-9._-].
bool is_valid_user_name(std::string_view name) noexcept;

}  // namespace cskit::proto
