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

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "util/xxh3_simd.h"

#if defined(CSKIT_XXH3_X86_DISPATCH)
#include <cpuid.h>
#endif

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

using xxh3_update_fn = void (*)(void* state, const void* data, std::size_t n);

void xxh3_update_baseline(void* state, const void* data, std::size_t n) {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state), data, n);
}

#if defined(CSKIT_XXH3_X86_DISPATCH)
// What the CPU has and the kernel saves across context switches (XCR0),
// asked once, at the first use: not through __builtin_cpu_supports, whose
// detector in libgcc would run at every process start (and CPUID exits to
// the hypervisor), though most commands never hash.
struct x86_vector_units {
  bool avx2 = false;
  bool avx512f = false;
};

const x86_vector_units& vector_units() {
  static const x86_vector_units units = [] {
    x86_vector_units u;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX)) return u;
    unsigned xcr0 = 0, xcr0_high = 0;
    __asm__("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0));
    const bool ymm = (xcr0 & 0x06) == 0x06;  // SSE and AVX state
    const bool zmm = (xcr0 & 0xe6) == 0xe6;  // ... and opmask, ZMM_Hi256, Hi16_ZMM
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return u;
    u.avx2 = ymm && (b & bit_AVX2);
    u.avx512f = zmm && (b & bit_AVX512F);
    return u;
  }();
  return units;
}
#endif

struct xxh3_variant_entry {
  std::string_view name;
  xxh3_update_fn update;
  bool (*usable)();
};

// Narrowest first.
const xxh3_variant_entry xxh3_table[] = {
    {"baseline", xxh3_update_baseline, [] { return true; }},
#if defined(CSKIT_XXH3_X86_DISPATCH)
    {"avx2", cskit_xxh3_update_avx2, [] { return vector_units().avx2; }},
    {"avx512", cskit_xxh3_update_avx512, [] { return vector_units().avx512f; }},
#endif
};

const xxh3_variant_entry* find_variant(std::string_view name) {
  for (const auto& v : xxh3_table) {
    if (v.name == name && v.usable()) return &v;
  }
  return nullptr;
}

// The widest usable variant, chosen at the first hash.
const xxh3_variant_entry& chosen_variant() {
  static const xxh3_variant_entry& v = []() -> const xxh3_variant_entry& {
    const xxh3_variant_entry* best = &xxh3_table[0];
    for (const auto& e : xxh3_table) {
      if (e.usable()) best = &e;
    }
    return *best;
  }();
  return v;
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
  chosen_variant().update(s_->xxh, data, n);
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

std::string_view xxh3_variant() { return chosen_variant().name; }

std::vector<std::string_view> xxh3_usable_variants() {
  std::vector<std::string_view> out;
  for (const auto& v : xxh3_table) {
    if (v.usable()) out.push_back(v.name);
  }
  return out;
}

std::string xxh3_128_hex_with(std::string_view variant, const void* data, std::size_t n, std::size_t piece) {
  const xxh3_variant_entry* v = find_variant(variant);
  if (!v) throw std::invalid_argument("XXH3 variant not usable here: " + std::string(variant));
  XXH3_state_t* st = XXH3_createState();
  if (!st) throw std::bad_alloc();
  XXH3_128bits_reset(st);
  const char* p = static_cast<const char*>(data);
  if (piece == 0) piece = n ? n : 1;
  for (std::size_t off = 0; off < n; off += piece) v->update(st, p + off, std::min(piece, n - off));
  std::string hex = canonical_hex(XXH3_128bits_digest(st));
  XXH3_freeState(st);
  return hex;
}

}  // namespace cskit::util
