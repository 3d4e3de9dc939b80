#include "util/digest.hpp"

// SHA-256 through OpenSSL's low-level functions, as in proto/auth.cpp: the
// same implementation as EVP's, without EVP's provider machinery, which a
// static link would otherwise pull in whole (its tables were four fifths
// of the relocated data every process start pays for; docs/architecture.md,
// "Start-up cost").
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
// Inlined (no libxxhash.so to load at start-up; the library is one header).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdint>
#include <stdexcept>

namespace cskit::util {

namespace {
std::string to_hex(const unsigned char* p, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (std::size_t i = 0; i < n; ++i) {
    s[2 * i] = digits[p[i] >> 4];
    s[2 * i + 1] = digits[p[i] & 15];
  }
  return s;
}

std::string canonical_hex(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  return to_hex(c.digest, sizeof c.digest);
}
}  // namespace

struct content_digest::state {
  XXH3_state_t* xxh = nullptr;
  std::unique_ptr<SHA256_CTX> sha;
  ~state() {
    if (xxh) XXH3_freeState(xxh);
  }
};

content_digest::content_digest(bool with_sha256) : s_(std::make_unique<state>()) {
  s_->xxh = XXH3_createState();
  if (!s_->xxh) throw std::bad_alloc();
  if (with_sha256) s_->sha = std::make_unique<SHA256_CTX>();
  reset();
}

content_digest::~content_digest() = default;
content_digest::content_digest(content_digest&&) noexcept = default;
content_digest& content_digest::operator=(content_digest&&) noexcept = default;

void content_digest::reset() noexcept {
  XXH3_128bits_reset(s_->xxh);
  if (s_->sha) SHA256_Init(s_->sha.get());
  bytes_ = 0;
}

bool content_digest::has_sha256() const noexcept { return s_->sha != nullptr; }

void content_digest::update(const void* data, std::size_t n) noexcept {
  if (n == 0) return;
  XXH3_128bits_update(s_->xxh, data, n);
  if (s_->sha) SHA256_Update(s_->sha.get(), data, n);
  bytes_ += n;
}

std::string content_digest::xxh3_hex() const { return canonical_hex(XXH3_128bits_digest(s_->xxh)); }

std::string content_digest::sha256_hex() const {
  if (!s_->sha) return {};
  SHA256_CTX copy = *s_->sha;  // a plain struct: finishing a copy leaves the running digest as it is
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256_Final(out, &copy);
  return to_hex(out, sizeof out);
}

std::string xxh3_128_hex(const void* data, std::size_t n) { return canonical_hex(XXH3_128bits(data, n)); }

}  // namespace cskit::util
