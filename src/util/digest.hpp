#pragma once
// Content digests for file transfers: XXH3-128 always (fast, end-to-end
// integrity against corruption), SHA-256 optionally (cryptographic, for
// `--verify sha256`). Pure computation, no I/O.

#include <cstddef>
#include <memory>
#include <string>

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

}  // namespace cskit::util
