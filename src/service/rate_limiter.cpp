#include "service/rate_limiter.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

namespace cskit::service {
namespace {
constexpr std::size_t ways = 4;

double refill(double tokens, const bucket_limit& l, std::int64_t elapsed_ns) {
  return std::min(std::max(l.burst, 1.0), tokens + l.rate * static_cast<double>(elapsed_ns) * 1e-9);
}
}  // namespace

source_rate_limiter::source_rate_limiter(bucket_limit packets, bucket_limit bytes, std::size_t entries)
    : packets_(packets), bytes_(bytes) {
  const std::size_t sets = std::bit_ceil(std::max<std::size_t>(entries / ways, 1));
  table_.resize(sets * ways);
  set_mask_ = sets - 1;
}

source_rate_limiter::entry& source_rate_limiter::find(const std::array<std::uint8_t, 16>& source, bool is_v4,
                                                      std::int64_t now_ns) {
  std::array<std::uint8_t, 16> key = source;
  if (!is_v4) std::fill(key.begin() + 8, key.end(), 0);  // IPv6: the /64
  std::uint64_t hi, lo;
  std::memcpy(&hi, key.data(), 8);
  std::memcpy(&lo, key.data() + 8, 8);
  std::uint64_t h = (hi * 0x9E3779B97F4A7C15ULL) ^ (lo + 0x632BE59BD9B4E019ULL);
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 32;
  entry* set = &table_[(h & set_mask_) * ways];
  entry* victim = set;
  for (std::size_t i = 0; i < ways; ++i) {
    if (set[i].used && set[i].key == key) return set[i];
    if (!set[i].used || set[i].last_ns < victim->last_ns) victim = &set[i];
    if (!set[i].used) break;
  }
  // A new source starts with full buckets.
  *victim = entry{};
  victim->key = key;
  victim->used = true;
  victim->last_ns = now_ns;
  victim->notified_ns = now_ns - (std::int64_t{1} << 62);
  victim->packet_tokens = std::max(packets_.burst, 1.0);
  victim->byte_tokens = std::max(bytes_.burst, 1.0);
  return *victim;
}

source_rate_limiter::verdict source_rate_limiter::charge(const std::array<std::uint8_t, 16>& source, bool is_v4,
                                                         std::size_t size, std::int64_t now_ns) {
  if (!enabled()) return verdict::allow;
  entry& e = find(source, is_v4, now_ns);
  const std::int64_t elapsed = std::max<std::int64_t>(0, now_ns - e.last_ns);
  e.last_ns = now_ns;
  e.packet_tokens = refill(e.packet_tokens, packets_, elapsed);
  e.byte_tokens = refill(e.byte_tokens, bytes_, elapsed);
  const bool packet_ok = packets_.unlimited() || e.packet_tokens >= 1.0;
  const bool bytes_ok = bytes_.unlimited() || e.byte_tokens >= static_cast<double>(size);
  if (!packet_ok || !bytes_ok) return verdict::limit;
  if (!packets_.unlimited()) e.packet_tokens -= 1.0;
  if (!bytes_.unlimited()) e.byte_tokens -= static_cast<double>(size);
  return verdict::allow;
}

bool source_rate_limiter::may_notify(const std::array<std::uint8_t, 16>& source, bool is_v4, std::int64_t now_ns,
                                     std::int64_t interval_ns) {
  entry& e = find(source, is_v4, now_ns);
  if (now_ns - e.notified_ns < interval_ns) return false;
  e.notified_ns = now_ns;
  return true;
}

}  // namespace cskit::service
