#include "net/admission.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace cskit::net {

source_key source_key::of(const std::string& address) {
  source_key k;
  in_addr v4{};
  in6_addr v6{};
  if (::inet_pton(AF_INET, address.c_str(), &v4) == 1) {
    // As an IPv4-mapped IPv6 address, whole.
    k.bytes[10] = k.bytes[11] = 0xff;
    std::memcpy(k.bytes.data() + 12, &v4, 4);
  } else if (::inet_pton(AF_INET6, address.c_str(), &v6) == 1) {
    std::memcpy(k.bytes.data(), &v6, 16);
    const bool mapped = std::all_of(k.bytes.begin(), k.bytes.begin() + 10, [](std::uint8_t b) { return b == 0; }) &&
                        k.bytes[10] == 0xff && k.bytes[11] == 0xff;
    if (!mapped) std::memset(k.bytes.data() + 8, 0, 8);  // the /64
  }
  return k;
}

std::string source_key::describe() const {
  char buf[INET6_ADDRSTRLEN] = {};
  const bool v4 = std::all_of(bytes.begin(), bytes.begin() + 10, [](std::uint8_t b) { return b == 0; }) &&
                  bytes[10] == 0xff && bytes[11] == 0xff;
  if (v4) {
    ::inet_ntop(AF_INET, bytes.data() + 12, buf, sizeof buf);
    return buf;
  }
  ::inet_ntop(AF_INET6, bytes.data(), buf, sizeof buf);
  return std::string(buf) + "/64";
}

std::size_t admission::hash::operator()(const source_key& k) const noexcept {
  std::uint64_t a, b;
  std::memcpy(&a, k.bytes.data(), 8);
  std::memcpy(&b, k.bytes.data() + 8, 8);
  return static_cast<std::size_t>((a * 0x9E3779B97F4A7C15ull) ^ (b + 0x632BE59BD9B4E019ull + (a << 6)));
}

admission::verdict admission::acquire(const source_key& k) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (total_ >= max_total_) return verdict::total_full;
  std::size_t& n = per_source_[k];
  if (n >= max_per_source_) {
    if (n == 0) per_source_.erase(k);
    return verdict::source_full;
  }
  ++n;
  ++total_;
  return verdict::admitted;
}

void admission::set_limits(std::size_t max_total, std::size_t max_per_source) {
  std::lock_guard<std::mutex> lock(mutex_);
  max_total_ = max_total;
  max_per_source_ = max_per_source;
}

void admission::release(const source_key& k) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = per_source_.find(k);
  if (it == per_source_.end()) return;
  if (--it->second == 0) per_source_.erase(it);
  --total_;
}

std::size_t admission::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return total_;
}

std::size_t admission::pending_from(const source_key& k) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = per_source_.find(k);
  return it == per_source_.end() ? 0 : it->second;
}

}  // namespace cskit::net
