#pragma once
// Content digests for file transfers: XXH3-128 always (fast, end-to-end
// integrity against corruption), SHA-256 optionally (cryptographic, for
// `--verify sha256`). Pure computation, no I/O.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace cskit::util {

class content_digest {
 public:
  explicit content_digest(bool with_sha256 = false);
  ~content_digest();
  content_digest(content_digest&&) noexcept;
  content_digest& operator=(content_digest&&) noexcept;
  content_digest(const content_digest&) = delete;
  content_digest& operator=(const content_digest&) = delete;

  void update(const void* data, std::size_t n) noexcept;
  /// Starts over (keeps the choice of algorithms).
  void reset() noexcept;
  bool has_sha256() const noexcept;
  /// Bytes hashed since construction or reset().
  std::uint64_t bytes() const noexcept { return bytes_; }

  /// XXH3-128 of everything so far, as 32 lowercase hex digits in the
  /// canonical (big-endian) byte order. Does not end the computation.
  std::string xxh3_hex() const;
  /// SHA-256 of everything so far, 64 hex digits; empty when not enabled.
  std::string sha256_hex() const;

 private:
  struct state;
  std::unique_ptr<state> s_;
  std::uint64_t bytes_ = 0;
};

/// One-shot XXH3-128, hex (for tests and small buffers).
std::string xxh3_128_hex(const void* data, std::size_t n);

/// XXH3 is computed with the widest vector unit this CPU offers:
/// "baseline" (SSE2 on x86-64), "avx2" or "avx512". The name of the one
/// content_digest uses (chosen once).
std::string_view xxh3_variant();
/// Every variant usable on this CPU, narrowest first.
std::vector<std::string_view> xxh3_usable_variants();
/// XXH3-128 of `data` fed to the named variant in pieces of `piece` bytes
/// (0: at once), hex; throws std::invalid_argument for a variant this CPU
/// cannot run. For tests: every variant must give the same digest.
std::string xxh3_128_hex_with(std::string_view variant, const void* data, std::size_t n, std::size_t piece = 0);

}  // namespace cskit::util
