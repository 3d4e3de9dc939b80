#pragma once
// Per-source token buckets for datagram services, so that a server cannot
// be used to flood a third party whose address was forged as the source.
//
// A fixed-size, 4-way set-associative table (no allocation after start-up,
// bounded memory whatever the traffic): a new source replaces the least
// recently seen entry of its set. IPv6 sources are keyed by their /64, the
// smallest block one user normally holds. Not thread-safe: one per socket.

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cskit::service {

struct bucket_limit {
  double rate = 0;   ///< tokens per second; 0 means unlimited
  double burst = 0;  ///< bucket size (at least 1 token when limited)
  bool unlimited() const noexcept { return rate <= 0; }
  bool operator==(const bucket_limit&) const = default;
};

class source_rate_limiter {
 public:
  /// `packets` limits datagrams per second; `bytes` limits bytes per second.
  source_rate_limiter(bucket_limit packets, bucket_limit bytes, std::size_t entries = 4096);

  enum class verdict { allow, limit };

  /// Charges one datagram of `size` bytes from `source` (16-byte address,
  /// IPv4-mapped for IPv4) at monotonic time `now_ns`.
  verdict charge(const std::array<std::uint8_t, 16>& source, bool is_v4, std::size_t size, std::int64_t now_ns);

  /// For Kiss-o'-Death: true at most once per `interval_ns` per source, so
  /// that the kiss replies are themselves rate limited.
  bool may_notify(const std::array<std::uint8_t, 16>& source, bool is_v4, std::int64_t now_ns,
                  std::int64_t interval_ns);

  bool enabled() const noexcept { return !packets_.unlimited() || !bytes_.unlimited(); }

 private:
  struct entry {
    std::array<std::uint8_t, 16> key{};
    bool used = false;
    std::int64_t last_ns = 0;
    std::int64_t notified_ns = 0;
    double packet_tokens = 0;
    double byte_tokens = 0;
  };
  entry& find(const std::array<std::uint8_t, 16>& source, bool is_v4, std::int64_t now_ns);

  bucket_limit packets_, bytes_;
  std::vector<entry> table_;
  std::size_t set_mask_;
};

}  // namespace cskit::service
